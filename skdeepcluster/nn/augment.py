"""Batched image augmentations with an independent random draw per sample.

``torchvision.transforms.v2`` applied to a batch tensor draws ONE set of random parameters for
the whole batch; per-sample draws would need a Python loop over samples. Here every operation
draws its parameters per sample from a ``torch.Generator`` and applies them to the whole batch at
once: geometric operations as per-sample affine matrices through one ``grid_sample``, colour
operations as per-sample factors. ``equalize`` and ``rgb_to_grayscale`` come from
``torchvision.transforms.v2.functional``, which is batched per image.

Inputs are float tensors ``(B, C, H, W)`` in [0, 1] with C in {1, 3}; outputs have the same
shape and range. Colour operations that need three channels (saturation, hue) leave grey images
unchanged.
"""

import math

import torch
from torch.nn import functional as F

__all__ = [
    "random_resized_crop",
    "random_affine",
    "color_jitter",
    "random_grayscale",
    "gaussian_noise",
    "cutout",
    "rand_augment",
    "rotate_quarters",
    "weak_augment",
    "strong_augment",
    "RAND_AUGMENT_OPS",
]


def _uniform(low, high, n, generator, device):
    return low + (high - low) * torch.rand(n, generator=generator).to(device)


def _bernoulli(p, n, generator, device):
    return (torch.rand(n, generator=generator) < p).to(device)


def _warp(x, theta, padding_mode="zeros"):
    """Apply per-sample affine matrices ``theta`` (B, 2, 3) in normalised coordinates."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def _affine_matrices(n, device, angle=None, shear_x=None, shear_y=None, tx=None, ty=None):
    zeros = torch.zeros(n, device=device)
    angle = zeros if angle is None else angle
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shear = torch.eye(2, device=device).repeat(n, 1, 1)
    shear[:, 0, 1] = zeros if shear_x is None else shear_x
    shear[:, 1, 0] = zeros if shear_y is None else shear_y
    translation = torch.stack([zeros if tx is None else tx, zeros if ty is None else ty], 1)
    return torch.cat([rotation @ shear, translation.unsqueeze(2)], dim=2)


def random_resized_crop(x, generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5):
    """RandomResizedCrop (+ horizontal flip with probability ``flip_p``), resized to the input
    size; crop area fraction in ``scale``, aspect ratio in ``ratio`` (log-uniform)."""
    n, device = x.shape[0], x.device
    area = _uniform(scale[0], scale[1], n, generator, device)
    log_ratio = _uniform(math.log(ratio[0]), math.log(ratio[1]), n, generator, device)
    width = torch.sqrt(area * log_ratio.exp()).clamp(max=1.0)
    height = torch.sqrt(area / log_ratio.exp()).clamp(max=1.0)
    center_x = (1 - width) * _uniform(-1, 1, n, generator, device)
    center_y = (1 - height) * _uniform(-1, 1, n, generator, device)
    flip = torch.where(_bernoulli(flip_p, n, generator, device), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, center_x
    theta[:, 1, 1], theta[:, 1, 2] = height, center_y
    return _warp(x, theta, padding_mode="border")


def random_affine(x, generator, degrees=0.0, translate=0.0, shear=0.0):
    """Per-sample rotation in ±``degrees``, translation in ±``translate`` (fraction of the
    size) and shear in ±``shear``."""
    n, device = x.shape[0], x.device
    angle = _uniform(-degrees, degrees, n, generator, device) * math.pi / 180
    tx, ty = (2 * translate * _uniform(-1, 1, n, generator, device) for _ in range(2))
    sx, sy = (_uniform(-shear, shear, n, generator, device) for _ in range(2))
    return _warp(x, _affine_matrices(n, device, angle, sx, sy, tx, ty))


def small_image_affine(x, generator):
    """A geometric augmentation for tiny images (not from a paper): a random rotation in ±15°
    and a translation of up to ±10 % of the side, no crop (on 8 px digits a crop removes a large
    part of the digit)."""
    return random_affine(x, generator, degrees=15.0, translate=0.1)


def apply_user_augmentation(function, batch, generator):
    """``function(batch, generator)``, checked to return a tensor of the batch's shape."""
    out = function(batch, generator)
    if not isinstance(out, torch.Tensor) or out.shape != batch.shape:
        raise ValueError(
            "augmentation must return a tensor of the shape of its input batch "
            f"{tuple(batch.shape)}, got {getattr(out, 'shape', type(out))}."
        )
    return out


def _grey(x):
    from torchvision.transforms.v2 import functional as TF  # here: import stays fast

    return TF.rgb_to_grayscale(x) if x.shape[1] == 3 else x


def _blend(x, other, factor):
    return (other + factor.view(-1, 1, 1, 1) * (x - other)).clamp(0, 1)


def _brightness(x, factor):
    return _blend(x, torch.zeros_like(x), factor)


def _contrast(x, factor):
    return _blend(x, _grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor)


def _saturation(x, factor):
    return _blend(x, _grey(x).expand_as(x), factor) if x.shape[1] == 3 else x


def _hue(x, shift):
    """Rotate the chroma plane of YIQ by ``shift`` turns (per sample); grey images unchanged."""
    if x.shape[1] != 3:
        return x
    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device
    )
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    angle = 2 * math.pi * shift
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)


def _sharpness(x, factor):
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device)
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
    return _blend(x, blurred, factor)


def color_jitter(x, generator, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8):
    """ColorJitter applied to each sample with probability ``p`` (fixed order: brightness,
    contrast, saturation, hue); factors drawn per sample as torchvision does."""
    n, device = x.shape[0], x.device
    apply = _bernoulli(p, n, generator, device).view(-1, 1, 1, 1)
    out = _brightness(x, _uniform(1 - brightness, 1 + brightness, n, generator, device))
    out = _contrast(out, _uniform(1 - contrast, 1 + contrast, n, generator, device))
    out = _saturation(out, _uniform(1 - saturation, 1 + saturation, n, generator, device))
    out = _hue(out, _uniform(-hue, hue, n, generator, device))
    return torch.where(apply, out, x)


def random_grayscale(x, generator, p=0.2):
    """Replace each colour sample by its grey version with probability ``p``."""
    if x.shape[1] != 3:
        return x
    apply = _bernoulli(p, x.shape[0], generator, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, _grey(x).expand_as(x), x)


def gaussian_noise(x, generator, std=0.05):
    """Add N(0, std²) noise and clamp to [0, 1]."""
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    return (x + std * noise).clamp(0, 1)


def cutout(x, generator, size=0.5, random_size=True, fill=0.0):
    """Cutout (DeVries & Taylor) as SCAN's authors apply it: one square per image, centred
    uniformly (clipped at the border), set to ``fill``.

    ``random_size=True`` (authors' code): each image draws its side uniformly among the
    integers 1 … ``size`` × image side (1-16 px of 32); False: every side is exactly
    ``size`` × image side. At least one pixel either way. ``fill`` is a float or one value per
    channel, in the input's range: SCAN passes the data's per-channel mean, the value the
    authors' Cutout writes (it zeroes images normalised by the data's mean and std).
    """
    n, channels, height, width = x.shape
    value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    if value.shape[1] not in (1, channels):
        raise ValueError(f"fill needs 1 or {channels} values, got {value.shape[1]}.")
    max_h, max_w = max(1, round(size * height)), max(1, round(size * width))
    if random_size:  # one draw per image: square images get square holes
        draw = torch.rand(n, generator=generator)
        side_h = (1 + (draw * max_h).floor()).clamp(max=max_h).long()
        side_w = (1 + (draw * max_w).floor()).clamp(max=max_w).long()
    else:
        side_h, side_w = torch.full((n,), max_h), torch.full((n,), max_w)
    side_h, side_w = side_h.to(x.device).view(-1, 1, 1), side_w.to(x.device).view(-1, 1, 1)
    cy = torch.randint(height, (n,), generator=generator).to(x.device).view(-1, 1, 1)
    cx = torch.randint(width, (n,), generator=generator).to(x.device).view(-1, 1, 1)
    rows = torch.arange(height, device=x.device).view(1, -1, 1) - (cy - side_h // 2)
    cols = torch.arange(width, device=x.device).view(1, 1, -1) - (cx - side_w // 2)
    # rows and columns [centre - side // 2, centre - side // 2 + side): exactly ``side`` wide
    inside = (rows >= 0) & (rows < side_h) & (cols >= 0) & (cols < side_w)
    return torch.where(inside.unsqueeze(1), value, x)


#: The RandAugment operation list of SCAN's strong augmentation.
RAND_AUGMENT_OPS = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "posterize",
)
_GEOMETRIC = {"rotate", "shear_x", "shear_y", "translate_x", "translate_y"}


def _autocontrast(x):
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1.0 / (high - low).clamp(min=1e-6), torch.ones_like(high))
    return ((x - low) * scale).clamp(0, 1)


def _equalize(x):
    from torchvision.transforms.v2 import functional as TF  # here: import stays fast

    return TF.equalize((x * 255).round().to(torch.uint8)).float() / 255


def _colour_op(name, x, generator, enhance_range=(0.05, 0.95)):
    n, device = x.shape[0], x.device
    # PIL's enhance factor: 1 keeps the image, 0 gives the degenerate one (Table S2's [0.05, 0.95])
    factor = _uniform(*enhance_range, n, generator, device)
    if name == "autocontrast":
        return _autocontrast(x)
    if name == "equalize":
        return _equalize(x)
    if name == "solarize":
        threshold = _uniform(0.0, 1.0, n, generator, device).view(-1, 1, 1, 1)
        return torch.where(x >= threshold, 1.0 - x, x)
    if name == "color":
        return _saturation(x, factor)
    if name == "contrast":
        return _contrast(x, factor)
    if name == "brightness":
        return _brightness(x, factor)
    if name == "sharpness":
        return _sharpness(x, factor)
    if name == "posterize":
        bits = torch.randint(4, 9, (n,), generator=generator).to(device).view(-1, 1, 1, 1)
        step = 2.0 ** (8 - bits)
        return torch.floor(x * 255 / step) * step / 255
    return x  # identity


def rand_augment(x, generator, n_ops=4, enhance_range=(0.05, 0.95)):
    """``n_ops`` rounds; in each, every sample draws one operation of ``RAND_AUGMENT_OPS``
    and a random magnitude, as SCAN's Table S2 and its authors' code: rotate ±30°, shear ±0.1,
    translate ±0.1, posterize 4-8 bits, Color / Contrast / Brightness / Sharpness factors in
    ``enhance_range``. A factor is PIL's enhance factor, a blend of the image (1) with its
    degenerate version (0: grey, flat grey, black, blurred); the authors' [0.05, 0.95] only
    weakens the image, the original RandAugment's [0.1, 1.9] also strengthens it. Each
    operation runs once per round on the samples that drew it."""
    n, device = x.shape[0], x.device
    for _ in range(n_ops):
        choice = torch.randint(len(RAND_AUGMENT_OPS), (n,), generator=generator).to(device)
        out = x.clone()
        chosen = {name: choice == k for k, name in enumerate(RAND_AUGMENT_OPS)}
        # geometric operations: one per-sample affine warp, identity for the other samples
        angle = torch.where(chosen["rotate"], _uniform(-30, 30, n, generator, device), 0.0)
        values = {
            name: torch.where(chosen[name], _uniform(-0.1, 0.1, n, generator, device), 0.0)
            for name in ("shear_x", "shear_y", "translate_x", "translate_y")
        }
        geometric = torch.zeros(n, dtype=torch.bool, device=device)
        for name in _GEOMETRIC:
            geometric |= chosen[name]
        if geometric.any():
            theta = _affine_matrices(
                n,
                device,
                angle * math.pi / 180,
                values["shear_x"],
                values["shear_y"],
                2 * values["translate_x"],
                2 * values["translate_y"],
            )
            out[geometric] = _warp(x[geometric], theta[geometric])
        for name in RAND_AUGMENT_OPS:
            if name in _GEOMETRIC or name == "identity" or not chosen[name].any():
                continue
            out[chosen[name]] = _colour_op(name, x[chosen[name]], generator, enhance_range)
        x = out
    return x


def rotate_quarters(x):
    """Every image at 0°, 90°, 180° and 270° (RotNet): ``(4B, C, H, W)`` and labels 0-3."""
    rotated = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return rotated, labels


def weak_augment(x, generator, flip=True, scale=(0.5, 1.0)):
    """Random resized crop and (optional) horizontal flip: the usual training augmentation."""
    return random_resized_crop(x, generator, scale=scale, flip_p=0.5 if flip else 0.0)


def _random_flip(x, generator, p=0.5):
    """Mirror each sample horizontally with probability ``p`` (exact, no resampling)."""
    flip = _bernoulli(p, x.shape[0], generator, x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def strong_augment(x, generator, flip=True, n_ops=4, cutout_size=0.5, crop_scale=None,
                   cutout_random_size=True, cutout_fill=0.0, enhance_range=(0.05, 0.95)):
    """SCAN's strong augmentation (authors' code): horizontal flip, ``n_ops`` RandAugment
    operations, Cutout (side drawn in 1 … ``cutout_size`` × side px, set to ``cutout_fill``).

    ``crop_scale`` (area range), when given, replaces the flip by a random resized crop with
    flip before RandAugment; the authors do not crop (their ``RandomCrop`` of the full image
    size is the identity).
    """
    if crop_scale is not None:
        x = random_resized_crop(x, generator, scale=crop_scale, flip_p=0.5 if flip else 0.0)
    elif flip:
        x = _random_flip(x, generator)
    x = rand_augment(x, generator, n_ops, enhance_range)
    return cutout(x, generator, cutout_size, random_size=cutout_random_size, fill=cutout_fill)
