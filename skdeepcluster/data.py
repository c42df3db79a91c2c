"""Input validation and conversion: feature matrices and image arrays, batched to torch.

Accepted inputs:

* features: ``(n_samples, n_features)``;
* images: ``(n, H, W)`` (grey), ``(n, H, W, C)`` or ``(n, C, H, W)`` with ``C`` in {1, 3}.
  ``uint8`` images are read as [0, 255], float images as [0, 1].

Images are never copied to float as a whole: a batch is converted when it is used, so a
memory-mapped array stays on disk.
"""

import warnings

import numpy as np
import torch
from sklearn.utils import check_array

__all__ = [
    "is_image_array", "check_images", "iterate_batches", "batch_to_tensor", "infer_image_layout",
    "rows_to_device",
]


def infer_image_layout(shape):
    """Return ``"NCHW"`` or ``"NHWC"`` for a 4-d image array shape, or raise.

    The channel axis is the one of size 1 or 3; when both axis 1 and axis 3 qualify, the array
    is read as channels-first.
    """
    if shape[1] in (1, 3):
        return "NCHW"
    if shape[3] in (1, 3):
        return "NHWC"
    raise ValueError(
        f"Cannot read a 4-d array of shape {shape} as images: expected 1 or 3 channels on axis 1 "
        "(n, C, H, W) or on axis 3 (n, H, W, C)."
    )


def is_image_array(X):
    """True when X has 3 or 4 dimensions (images), False otherwise (features or bad input)."""
    ndim = getattr(X, "ndim", None)
    if ndim is None:
        try:
            ndim = np.asarray(X).ndim
        except ValueError:  # ragged nested lists: let the 2-d validation report it
            return False
    return ndim in (3, 4)


def check_images(X, *, name="X"):
    """Validate an image array and return a ``(n, C, H, W)`` view in the user's dtype.

    Raises a ``ValueError``/``TypeError`` naming the problem for empty input, a wrong channel
    count, NaN/inf and non-numeric values. Nothing is copied for a valid numeric array.
    """
    X = check_array(X, dtype=None, allow_nd=True, ensure_2d=False, input_name=name)
    if X.dtype.kind not in "uif":
        raise TypeError(f"{name} images must be of a numeric dtype, got {X.dtype}.")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError(f"Input {name} contains NaN or infinity.")
    if X.ndim == 3:
        X = X[:, None, :, :]
    elif infer_image_layout(X.shape) == "NHWC":
        X = X.transpose(0, 3, 1, 2)
    if X.dtype.kind == "f" and (X.min() < -1e-3 or X.max() > 1 + 1e-3):
        warnings.warn(
            f"Float images in {name} are expected in [0, 1]; got values in "
            f"[{X.min():.3g}, {X.max():.3g}]. Scale them, or pass uint8 in [0, 255].",
            UserWarning,
            stacklevel=3,
        )
    return X


def iterate_batches(n_samples, batch_size, *, shuffle=False, generator=None, drop_last=False):
    """Yield index tensors covering ``range(n_samples)`` in batches."""
    order = (
        torch.randperm(n_samples, generator=generator) if shuffle else torch.arange(n_samples)
    )
    full = drop_last and n_samples >= batch_size
    stop = n_samples - n_samples % batch_size if full else n_samples
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def batch_to_tensor(X, indices, device):
    """Rows ``indices`` of X as a float32 tensor on ``device`` (uint8 images scaled to [0, 1])."""
    if isinstance(indices, torch.Tensor):
        indices = indices.numpy()
    rows = np.asarray(X[indices])
    tensor = torch.from_numpy(np.ascontiguousarray(rows)).to(device)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float()


def rows_to_device(X, device, batch_size=65536):
    """All rows of X as one float32 tensor on ``device``, uploaded ``batch_size`` rows at a time
    (host memory O(batch_size) beyond X, so a memory-mapped X is never converted whole)."""
    out = torch.empty((X.shape[0], *X.shape[1:]), dtype=torch.float32, device=device)
    for start in range(0, X.shape[0], batch_size):
        out[start : start + batch_size] = batch_to_tensor(
            X, torch.arange(start, min(start + batch_size, X.shape[0])), device
        )
    return out
