"""Feature extractors: an MLP for feature vectors, a small CNN and a CIFAR-style ResNet-18 for
images, a frozen Sobel filter, and ``make_backbone`` to pick one by input.

Every backbone maps a batch to ``(B, out_features)`` and exposes ``out_features``.
"""

import copy

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MLP", "SmallCNN", "SmallVGG", "CifarResNet18", "Sobel", "make_backbone"]


class MLP(nn.Module):
    """``Linear → BatchNorm → ReLU`` blocks for feature-vector input."""

    def __init__(self, in_features, hidden_dims=(512, 512)):
        super().__init__()
        layers, width = [], in_features
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x):
        return self.layers(x.flatten(1))


def _conv_block(in_channels, out_channels, pool=False):
    """3×3 conv-BN-ReLU, with 2×2 max pooling after it when ``pool``.

    The pooling runs before the ReLU: both are monotone, so ``relu(maxpool(x))`` equals
    ``maxpool(relu(x))`` and routes every gradient to the same element, bit for bit, while the
    ReLU and its backward pass touch a quarter of the map (a training step of :class:`SmallVGG`
    on 28 px images 1.10x faster, ``doc/benchmarks.rst``).
    """
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
              nn.BatchNorm2d(out_channels)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers + [nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """A VGG-style convnet for small images (8 to 32 pixels), ending in global average pooling.

    Three stages of two 3×3 conv-BN-ReLU layers (``width``, ``2·width``, ``4·width`` channels);
    the first two stages end with 2×2 max pooling when the image is large enough. With the
    default ``width=32`` the stages have 32, 64 and 128 channels: the MNIST network of Haeusser
    et al.'s learning by association (``mnist_model``: conv 32, 32, pool, 64, 64, pool, 128,
    128, pool), which ADC uses as its "VCNN"; batch norm instead of ELU alone, and global
    average pooling so that 8 px images fit. Twice the width costs four times the compute.
    """

    def __init__(self, in_channels=1, width=32, image_size=32):
        super().__init__()
        layers, channels, size = [], in_channels, image_size
        for stage, out_channels in enumerate((width, 2 * width, 4 * width)):
            pool = stage < 2 and size >= 8
            layers += _conv_block(channels, out_channels)
            layers += _conv_block(out_channels, out_channels, pool=pool)
            size = size // 2 if pool else size
            channels = out_channels
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.layers = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x):
        return self.layers(x)


class SmallVGG(nn.Module):
    """The small VGG of the MMDC paper's MNIST experiments: four blocks of one 3×3 conv-BN-ReLU.

    Block widths 32, 64, 128 and 256 channels, each block ending with 2×2 max pooling while the
    feature map is at least 2 px wide (Shiran & Weinshall, Sec. IV-A: "four blocks", each "one
    convolution layer, followed by a batch normalization layer and ReLU activation function,
    and ends with a max pooling layer"; widths from the authors' code). The last map is
    flattened, as in the authors' code: on 32 px images 256 × 2 × 2 = 1 024 features; on 28 px
    256 × 1 × 1; on 8 px images the fourth block has a 1 px map left and keeps it unpooled
    (256 features). About a fifth of :class:`SmallCNN`'s multiply-adds on 8 px images.
    """

    widths = (32, 64, 128, 256)

    def __init__(self, in_channels=1, image_size=32):
        super().__init__()
        layers, channels, size = [], in_channels, image_size
        for out_channels in self.widths:
            pool = size >= 2
            layers += _conv_block(channels, out_channels, pool=pool)
            size = size // 2 if pool else size
            channels = out_channels
        layers.append(nn.Flatten())
        self.layers = nn.Sequential(*layers)
        self.out_features = channels * size * size

    def forward(self, x):
        return self.layers(x)


class _BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32 px images: a 3×3 stem without max pooling (as SCAN/MMDC use on CIFAR)."""

    def __init__(self, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True)
        )
        blocks, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.out_features = 512

    def forward(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


class Sobel(nn.Module):
    """Frozen grayscale conversion followed by Sobel x/y filters: C channels → 2 channels
    (DeepCluster, Sec. 3.4 of Caron et al.)."""

    def __init__(self):
        super().__init__()
        kernel_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("kernels", torch.stack([kernel_x, kernel_x.t()]).unsqueeze(1))

    def forward(self, x):
        grey = x.mean(dim=1, keepdim=True)
        return F.conv2d(grey, self.kernels, padding=1)


#: The backbone names that need image input.
IMAGE_BACKBONES = ("small_cnn", "small_vgg", "resnet18")
#: Every backbone name an estimator's ``backbone`` parameter accepts.
BACKBONE_NAMES = ("auto", "mlp", *IMAGE_BACKBONES)

#: Images with a side under this many pixels are "small" (digits, letters): they get a small
#: convnet and the small-image augmentations; from it on, the papers' natural-image settings.
#: DeepCluster's augmentation and ADC's rotation have their own, measured thresholds
#: (``CROP_MIN_SIDE``, 28 px; ``ROTATION_MIN_SIDE``, 16 px).
SMALL_IMAGE_SIDE = 32


def is_small_image(input_shape, min_side=SMALL_IMAGE_SIDE):
    """Whether images of shape ``(C, H, W)`` are small: a side under ``min_side`` pixels."""
    return min(input_shape[1:]) < min_side


def make_backbone(name, input_kind, input_shape, *, user_module=None, small_images="small_cnn"):
    """Build the feature extractor for an estimator.

    Parameters
    ----------
    name : {"auto", "mlp", "small_cnn", "small_vgg", "resnet18"}
        ``"auto"``: an MLP for features, the ``small_images`` network for images under 32 px,
        the CIFAR ResNet-18 from 32 px.
    input_kind : {"features", "images"}
    input_shape : tuple
        ``(n_features,)`` or ``(C, H, W)``.
    user_module : torch.nn.Module or None
        A user backbone; a deep copy is returned (the user's module is never trained). It must
        have an ``out_features`` attribute or one is measured with a dummy forward pass.
    small_images : {"small_cnn", "small_vgg"}, default="small_cnn"
        What ``"auto"`` means for images under 32 px: the estimator's choice.

    Returns
    -------
    torch.nn.Module with an ``out_features`` attribute.
    """
    if user_module is not None:
        module = copy.deepcopy(user_module)
        if not hasattr(module, "out_features"):
            was_training = module.training
            module.eval()
            with torch.no_grad():
                module.out_features = int(module(torch.zeros(2, *input_shape)).flatten(1).shape[1])
            module.train(was_training)
        return module
    if name == "auto":
        if input_kind == "features":
            name = "mlp"
        else:
            name = small_images if is_small_image(input_shape) else "resnet18"
    if name == "mlp":
        return MLP(int(torch.tensor(input_shape).prod()))
    if input_kind != "images":
        raise ValueError(f"backbone {name!r} needs image input, got {input_kind}.")
    if name == "small_cnn":
        return SmallCNN(input_shape[0], image_size=min(input_shape[1:]))
    if name == "small_vgg":
        return SmallVGG(input_shape[0], image_size=min(input_shape[1:]))
    if name == "resnet18":
        return CifarResNet18(input_shape[0])
    raise ValueError(f"Unknown backbone {name!r}: use one of {', '.join(BACKBONE_NAMES)}.")
