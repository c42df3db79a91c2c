"""Unit tests of the batched augmentations (skdeepcluster/nn/augment.py): shapes, dtype, value
range, determinism under a ``torch.Generator``, independent per-sample draws, the identity where
the parameters say so and a real change where they do not."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skdeepcluster.nn import augment
from skdeepcluster.nn.augment import (
    RAND_AUGMENT_OPS,
    apply_user_augmentation,
    color_jitter,
    cutout,
    gaussian_noise,
    rand_augment,
    random_affine,
    random_grayscale,
    random_resized_crop,
    rotate_quarters,
    small_image_affine,
    strong_augment,
    weak_augment,
)


@pytest.fixture(scope="module")
def grey():
    """16 digits as a (16, 1, 8, 8) float32 batch in [0, 1]."""
    images = load_digits().images[:16] / 16
    return torch.from_numpy(images.astype(np.float32)).unsqueeze(1)


@pytest.fixture(scope="module")
def colour():
    """16 colour images (16, 3, 8, 8): three different digits as the R, G and B channels."""
    images = load_digits().images[:48].astype(np.float32) / 16
    return torch.from_numpy(images.reshape(3, 16, 8, 8).transpose(1, 0, 2, 3).copy())


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


#: Every random public augmentation with the parameters used here (the defaults, unless the
#: defaults can leave a sample untouched by chance, which would make "it changes" flaky).
RANDOM_AUGMENTATIONS = {
    "random_resized_crop": (random_resized_crop, {}),
    "random_affine": (random_affine, {"degrees": 30.0, "translate": 0.1, "shear": 0.2}),
    "small_image_affine": (small_image_affine, {}),
    "color_jitter": (color_jitter, {"p": 1.0}),
    "random_grayscale": (random_grayscale, {"p": 0.5}),
    "gaussian_noise": (gaussian_noise, {}),
    "cutout": (cutout, {"fill": 0.3}),  # a black hole on the black background changes nothing
    "rand_augment": (rand_augment, {}),
    "weak_augment": (weak_augment, {}),
    "strong_augment": (strong_augment, {}),
}
by_augmentation = pytest.mark.parametrize(
    "name", sorted(RANDOM_AUGMENTATIONS), ids=sorted(RANDOM_AUGMENTATIONS)
)


def _apply(name, x, seed=0):
    function, params = RANDOM_AUGMENTATIONS[name]
    return function(x, _generator(seed), **params)


def test_the_table_covers_the_public_functions():
    public = {name for name in augment.__all__ if name != "RAND_AUGMENT_OPS"}
    public |= {"small_image_affine", "apply_user_augmentation"}  # public, not in __all__
    assert public == set(RANDOM_AUGMENTATIONS) | {"rotate_quarters", "apply_user_augmentation"}


# --------------------------------------------------------------------------- shared properties
@by_augmentation
@pytest.mark.parametrize("images", ["grey", "colour"])
def test_shape_dtype_and_range(name, images, request):
    x = request.getfixturevalue(images)
    before = x.clone()
    out = _apply(name, x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(x, before, rtol=0, atol=0)  # the input is not modified


@by_augmentation
def test_same_generator_seed_same_output_other_seed_other_output(name, colour):
    first, again, other = _apply(name, colour, 0), _apply(name, colour, 0), _apply(name, colour, 1)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)


@by_augmentation
def test_only_the_generator_is_drawn_from(name, colour):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _apply(name, colour)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


@by_augmentation
def test_draws_are_per_sample_and_change_the_input(name, colour):
    # one image repeated: a single draw for the whole batch would give identical outputs
    x = colour[:1].repeat(8, 1, 1, 1)
    out = _apply(name, x)
    changed = (out - x).abs().flatten(1).amax(1) > 1e-3
    if name == "random_grayscale":  # p = 0.5: some samples are grey, the others untouched
        assert 0 < int(changed.sum()) < 8
    else:
        assert changed.all(), changed
    distinct = {tuple(sample.flatten().tolist()) for sample in out}
    assert len(distinct) >= (2 if name == "random_grayscale" else 8)


# --------------------------------------------------------------------------- identities
def test_random_resized_crop_full_crop_is_the_identity_and_flip_p_one_flips(grey):
    kept = random_resized_crop(grey, _generator(), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    torch.testing.assert_close(kept, grey, rtol=0, atol=1e-5)
    flipped = random_resized_crop(grey, _generator(), scale=(1.0, 1.0), ratio=(1.0, 1.0),
                                  flip_p=1.0)
    torch.testing.assert_close(flipped, grey.flip(3), rtol=0, atol=1e-5)


def test_random_resized_crop_small_scale_zooms_in(grey):
    # a crop of 1/4 of the area resized back: the mean absolute change is large
    out = random_resized_crop(grey, _generator(), scale=(0.25, 0.25), ratio=(1.0, 1.0),
                              flip_p=0.0)
    assert (out - grey).abs().mean() > 0.1


def test_random_affine_zero_parameters_is_the_identity(grey):
    torch.testing.assert_close(random_affine(grey, _generator()), grey, rtol=0, atol=1e-5)


def test_random_affine_rotation_only_keeps_the_centre(grey):
    # a 3 × 3 image with one bright centre pixel: any rotation about the centre keeps it
    x = torch.zeros(4, 1, 3, 3)
    x[:, :, 1, 1] = 1.0
    out = random_affine(x, _generator(), degrees=45.0)
    torch.testing.assert_close(out[:, :, 1, 1], torch.ones(4, 1), rtol=0, atol=0.05)
    assert not torch.allclose(random_affine(grey, _generator(), degrees=45.0), grey, atol=1e-3)


def test_color_jitter_identities(colour, grey):
    torch.testing.assert_close(color_jitter(colour, _generator(), p=0.0), colour, rtol=0, atol=0)
    still = color_jitter(colour, _generator(), brightness=0, contrast=0, saturation=0, hue=0,
                         p=1.0)
    torch.testing.assert_close(still, colour, rtol=0, atol=1e-5)
    # saturation and hue need three channels: on grey images only brightness and contrast act
    only_colour = color_jitter(grey, _generator(), brightness=0, contrast=0, saturation=0.9,
                               hue=0.5, p=1.0)
    torch.testing.assert_close(only_colour, grey, rtol=0, atol=1e-6)


def test_color_jitter_brightness_scales_pixels(grey):
    out = color_jitter(grey, _generator(), brightness=0.5, contrast=0, saturation=0, hue=0, p=1.0)
    ratio = out.sum(dim=(1, 2, 3)) / grey.sum(dim=(1, 2, 3))
    # no clamping happens below 1: every factor lies in [0.5, 1.5]
    assert ((ratio >= 0.5 - 1e-5) & (ratio <= 1.5 + 1e-5)).all()
    assert ratio.std() > 0.05  # one factor per sample


def test_random_grayscale(colour, grey):
    torch.testing.assert_close(random_grayscale(grey, _generator(), p=1.0), grey, rtol=0, atol=0)
    torch.testing.assert_close(random_grayscale(colour, _generator(), p=0.0), colour, rtol=0,
                               atol=0)
    all_grey = random_grayscale(colour, _generator(), p=1.0)
    assert torch.equal(all_grey[:, 0], all_grey[:, 1]) and torch.equal(all_grey[:, 1],
                                                                      all_grey[:, 2])
    luma = 0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]
    torch.testing.assert_close(all_grey[:, 0], luma, rtol=0, atol=2e-4)  # torchvision's weights


def test_gaussian_noise(grey):
    torch.testing.assert_close(gaussian_noise(grey, _generator(), std=0.0), grey, rtol=0, atol=0)
    middle = torch.full((64, 1, 8, 8), 0.5)  # far from the clamp at 0 and 1
    noise = gaussian_noise(middle, _generator(), std=0.05) - middle
    assert noise.mean().abs() < 0.005
    assert noise.std().item() == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("size, side", [(0.5, 4), (0.25, 2), (0.0, 1)])
def test_cutout_fixed_size_zeroes_one_square_of_the_given_side(size, side):
    ones = torch.ones(64, 1, 8, 8)
    out = cutout(ones, _generator(), size=size, random_size=False)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    zeroed = (out == 0).flatten(1).sum(1)
    assert (zeroed >= 1).all() and (zeroed <= side * side).all()
    assert (zeroed == side * side).any()  # some squares lie fully inside the image
    # the zeros form one rectangle: its bounding box has exactly `zeroed` pixels
    for mask in out[:, 0] == 0:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == mask.sum()


def _hole_extents(mask):
    """Per image of a (n, H, W) mask: height and width of the masked bounding box, and whether
    the box touches the border (then the hole may have been clipped)."""
    rows, cols = mask.any(2), mask.any(1)
    index = torch.arange(mask.shape[1])
    first_row = torch.where(rows, index, mask.shape[1]).amin(1)
    last_row = torch.where(rows, index, -1).amax(1)
    first_col = torch.where(cols, index, mask.shape[2]).amin(1)
    last_col = torch.where(cols, index, -1).amax(1)
    touches = (first_row == 0) | (first_col == 0) | (last_row == mask.shape[1] - 1) | (
        last_col == mask.shape[2] - 1
    )
    return last_row - first_row + 1, last_col - first_col + 1, touches


def test_cutout_side_is_drawn_uniformly_up_to_size_times_the_side():
    # SCAN's authors: side uniform in 1..16 px on 32 px images (randint(1, 16) per image)
    ones = torch.ones(4000, 1, 32, 32)
    out = cutout(ones, _generator(), size=0.5)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    height, width, touches = _hole_extents(out[:, 0] == 0)
    assert (height >= 1).all() and (height <= 16).all() and (width <= 16).all()
    inside = ~touches
    assert torch.equal(height[inside], width[inside])  # square holes
    counts = torch.bincount(height[inside], minlength=17)[1:]
    assert (counts > 0).all()  # every side from 1 to 16
    # uniform: a hole of side L stays off the border for (31 - L) of 32 centres per axis
    expected = 4000 / 16 * ((31 - torch.arange(1.0, 17)) / 32) ** 2
    assert ((counts - expected).abs() < 5 * expected.sqrt() + 5).all(), (counts, expected)


def test_cutout_fill_is_a_value_or_one_per_channel(colour):
    out = cutout(colour, _generator(), size=0.5, random_size=False, fill=(0.2, 0.4, 0.6))
    changed = (out != colour).any(dim=1)  # (16, 8, 8)
    hole = cutout(torch.ones(16, 1, 8, 8), _generator(), size=0.5, random_size=False)[:, 0] == 0
    assert (changed <= hole).all()  # only the hole changes (same draws)
    for channel, value in enumerate((0.2, 0.4, 0.6)):
        assert (out[:, channel][hole] == value).all()
    grey_fill = cutout(colour, _generator(), size=0.5, random_size=False, fill=0.25)
    assert (grey_fill.permute(1, 0, 2, 3)[:, hole] == 0.25).all()
    with pytest.raises(ValueError, match="fill needs 1 or 3 values"):
        cutout(colour, _generator(), fill=(0.1, 0.2))


def test_rand_augment_enhance_factors_only_weaken_by_default(grey):
    # brightness blends with black by the factor: the pixel ratio is the factor itself
    bright = grey[grey.flatten(1).amax(1) > 0]
    ratio = augment._colour_op("brightness", bright, _generator()).sum((1, 2, 3)) / bright.sum(
        (1, 2, 3)
    )
    assert ((ratio >= 0.05 - 1e-5) & (ratio <= 0.95 + 1e-5)).all(), ratio  # Table S2
    assert ratio.std() > 0.1  # one factor per sample
    # the original RandAugment range is reachable: factors above 1 brighten
    dim = bright * 0.4  # no clamping at 1 for factors up to 2.5
    stronger = augment._colour_op("brightness", dim, _generator(), enhance_range=(0.1, 1.9))
    assert (stronger.sum((1, 2, 3)) > dim.sum((1, 2, 3))).any()
    kept = rand_augment(grey, _generator(), n_ops=4, enhance_range=(1.0, 1.0))
    assert kept.shape == grey.shape


def test_rand_augment_zero_operations_is_the_identity(colour):
    torch.testing.assert_close(rand_augment(colour, _generator(), n_ops=0), colour, rtol=0,
                               atol=0)
    assert len(RAND_AUGMENT_OPS) == 14 and RAND_AUGMENT_OPS[0] == "identity"


def test_rand_augment_runs_every_operation(colour, monkeypatch):
    # with 64 samples × 4 rounds every one of the 14 operations is drawn
    seen = set()
    original = augment._colour_op

    def record(name, x, generator, *args):
        seen.add(name)
        return original(name, x, generator, *args)

    monkeypatch.setattr(augment, "_colour_op", record)
    out = rand_augment(colour.repeat(4, 1, 1, 1), _generator(), n_ops=4)
    assert out.shape == (64, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    colour_ops = set(RAND_AUGMENT_OPS) - augment._GEOMETRIC - {"identity"}
    assert seen == colour_ops


def test_rotate_quarters(grey):
    rotated, labels = rotate_quarters(grey)
    assert rotated.shape == (64, 1, 8, 8) and rotated.dtype == torch.float32
    assert labels.tolist() == [0] * 16 + [1] * 16 + [2] * 16 + [3] * 16
    for k in range(4):
        turned_back = torch.rot90(rotated[16 * k : 16 * (k + 1)], -k, dims=(2, 3))
        torch.testing.assert_close(turned_back, grey, rtol=0, atol=0)
    assert not torch.equal(rotated[16:32], grey)


def test_weak_augment_is_a_crop_with_optional_flip(grey):
    for flip in (True, False):
        expected = random_resized_crop(grey, _generator(), scale=(0.5, 1.0),
                                       flip_p=0.5 if flip else 0.0)
        torch.testing.assert_close(weak_augment(grey, _generator(), flip=flip), expected,
                                   rtol=0, atol=0)
    # full-size square crops: flip=False keeps the image, flip=True mirrors about half of them
    full = {"scale": (1.0, 1.0)}
    kept = random_resized_crop(grey, _generator(), ratio=(1.0, 1.0), flip_p=0.0, **full)
    torch.testing.assert_close(kept, grey, rtol=0, atol=1e-5)


def test_strong_augment_ends_with_cutout(colour):
    out = strong_augment(colour, _generator(), flip=False, n_ops=0, cutout_size=0.5)
    assert ((out == 0).all(dim=1).flatten(1).sum(1) >= 1).all()  # a black square in every image


def test_strong_augment_does_not_crop_unless_asked(colour):
    # authors' code: flip, RandAugment, Cutout; no crop. With no RandAugment operation every
    # image is itself or its mirror image outside the Cutout hole.
    out = strong_augment(colour, _generator(), flip=True, n_ops=0, cutout_size=0.25,
                         cutout_fill=0.3)
    hole = (out == 0.3).all(dim=1, keepdim=True)
    same = ((out == colour) | hole).flatten(1).all(1)
    mirrored = ((out == colour.flip(3)) | hole).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()
    unflipped = strong_augment(colour, _generator(), flip=False, n_ops=0, cutout_size=0.25,
                               cutout_fill=0.3)
    assert ((unflipped == colour) | (unflipped == 0.3)).all()
    # the crop of this library's earlier strong augmentation stays reachable
    cropped = strong_augment(colour, _generator(), flip=False, n_ops=0, cutout_size=0.25,
                             crop_scale=(0.5, 1.0), cutout_fill=0.3)
    assert ((cropped - colour).abs().flatten(1).amax(1) > 0.1).all()


def test_apply_user_augmentation_checks_the_result(grey):
    def shift(batch, generator):
        return torch.roll(batch, 1, dims=3)

    torch.testing.assert_close(apply_user_augmentation(shift, grey, _generator()),
                               torch.roll(grey, 1, dims=3))
    with pytest.raises(ValueError, match=r"input batch \(16, 1, 8, 8\), got .*\[16, 1, 8\]"):
        apply_user_augmentation(lambda batch, generator: batch[..., 0], grey, _generator())
    with pytest.raises(ValueError, match="must return a tensor"):
        apply_user_augmentation(lambda batch, generator: batch.numpy(), grey, _generator())


def test_hue_rotation_by_a_full_turn_is_the_identity(colour):
    # the hue shift rotates the YIQ chroma plane: a whole turn comes back, half a turn does not
    full = augment._hue(colour, torch.full((16,), 1.0))
    torch.testing.assert_close(full, colour.clamp(0, 1), rtol=0, atol=1e-4)
    half = augment._hue(colour, torch.full((16,), 0.5))
    assert (half - colour).abs().mean() > 0.01
    assert math.isclose(float(augment._hue(colour[:, :1], torch.ones(16)).sum()),
                        float(colour[:, :1].sum()))
