"""Multi-head clustering heads computed as ONE batched tensor operation.

H independent heads keep their weights stacked along a leading head axis, so a forward pass over
all heads is one ``bmm``/``baddbmm`` per layer instead of a Python loop over heads. Inputs are
either shared by all heads, shape ``(B, in)``, or per head, shape ``(H, B, in)``; outputs are
``(H, B, out)``. ``heads=`` selects a subset of heads (e.g. the best one at prediction time).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "HeadGroups",
    "MultiHeadLinear",
    "MultiHeadWeightNormLinear",
    "TEMIHeads",
    "head_group_sizes",
    "l2_normalize",
]

#: Activation bytes of one group of heads on a CPU: small enough that a group's activations,
#: weights and gradients are still in the cache when the next layer (or the backward pass) reads
#: them. Chosen by measurement (``doc/benchmarks.rst``): one TEMI step of 50 heads, 1 024 rows,
#: 2 threads, took 1.24-1.77 s with all heads at once (each activation 100 MB) and, with groups
#: from budgets of 2 / 4 / 8 / 16 MiB, 0.67 / 0.60 / 0.59 / 0.62 s on 64 features and
#: 1.52 / 1.40 / 1.45 / 1.59 s on 784 features.
CPU_GROUP_BYTES = 8 * 2**20


def head_group_sizes(n_heads, n_rows, width, device):
    """Sizes of the groups of heads to compute together: one group on a GPU, cache-sized groups
    on a CPU.

    Parameters
    ----------
    n_heads : int
    n_rows : int
        Rows of the batch that every head processes.
    width : int
        Widest activation of a head (TEMI: the hidden layer).
    device : torch.device
    """
    if device.type != "cpu":
        return [n_heads]
    size = max(1, min(n_heads, CPU_GROUP_BYTES // (4 * n_rows * width)))
    return [min(size, n_heads - start) for start in range(0, n_heads, size)]


def l2_normalize(x, dim=-1):
    """``x`` scaled to unit L2 norm along ``dim``, in float32 whatever the autocast.

    The unit-norm outputs of the networks (TEMI's bottleneck, SCAN's projection and mining
    space, MMDC's output) are normalised here: normalised in bfloat16 their norms are only
    1 ± 4e-3; a matrix product after it is cast back to the autocast dtype.
    """
    return F.normalize(x.float(), dim=dim)


def _select(tensor, heads):
    return tensor if heads is None else tensor[heads]


def _batched_matmul(x, weight, bias=None):
    """``x`` (B, in) shared or (H, B, in) per head, ``weight`` (H, in, out) → (H, B, out)."""
    if x.dim() == 2:
        # A shared input enters every head's GEMM through a stride-0 head axis, without a copy.
        x = x.expand(weight.shape[0], *x.shape)
    if bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(bias, x, weight)


class MultiHeadLinear(nn.Module):
    """``n_heads`` independent ``Linear(in_features, out_features)`` layers, batched.

    Parameters
    ----------
    n_heads, in_features, out_features : int
    bias : bool, default=True
    init : {"default", "trunc_normal"}, default="default"
        ``"default"``: PyTorch's ``nn.Linear`` initialisation, per head.
        ``"trunc_normal"``: truncated normal with std 0.02 and zero bias (DINO/TEMI heads).
    """

    def __init__(self, n_heads, in_features, out_features, *, bias=True, init="default"):
        super().__init__()
        self.n_heads, self.in_features, self.out_features = n_heads, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_heads, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_heads, 1, out_features)) if bias else None
        self.reset_parameters(init)

    def reset_parameters(self, init="default"):
        if init == "trunc_normal":
            nn.init.trunc_normal_(self.weight, std=0.02, a=-0.04, b=0.04)
            if self.bias is not None:
                nn.init.zeros_(self.bias)
        elif init == "default":
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.weight, -bound, bound)
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound, bound)
        else:
            raise ValueError(f"init must be 'default' or 'trunc_normal', got {init!r}.")

    def forward(self, x, heads=None):
        bias = None if self.bias is None else _select(self.bias, heads)
        return _batched_matmul(x, _select(self.weight, heads), bias)

    def extra_repr(self):
        return (
            f"n_heads={self.n_heads}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


class MultiHeadWeightNormLinear(nn.Module):
    """Batched weight-normalised ``Linear(in, out, bias=False)``: ``W = g · V / ||V||``.

    The norm is taken per output unit over the input dimension, as ``torch.nn.utils.weight_norm``
    does for a ``Linear``; the gain ``g`` starts at 1 and is trainable unless ``train_gain=False``.
    """

    def __init__(self, n_heads, in_features, out_features, *, train_gain=True):
        super().__init__()
        self.direction = nn.Parameter(torch.empty(n_heads, in_features, out_features))
        nn.init.trunc_normal_(self.direction, std=0.02, a=-0.04, b=0.04)
        self.gain = nn.Parameter(torch.ones(n_heads, 1, out_features), requires_grad=train_gain)

    def forward(self, x, heads=None):
        direction = _select(self.direction, heads)
        weight = _select(self.gain, heads) * direction / direction.norm(dim=1, keepdim=True)
        return _batched_matmul(x, weight)


class TEMIHeads(nn.Module):
    """H TEMI/DINO clustering heads, batched.

    Each head: ``Linear(d, hidden) → GELU → Linear(hidden, bottleneck) → L2-normalise →
    weight-normalised Linear(bottleneck, K, bias=False)``; truncated-normal(0.02) init, zero
    biases, no batch norm, no dropout (TEMI, Sec. 3.2 and the authors' code).
    """

    def __init__(self, n_heads, in_features, n_clusters, *, hidden_dim=512, bottleneck_dim=256):
        super().__init__()
        self.n_heads = n_heads
        self.hidden = MultiHeadLinear(n_heads, in_features, hidden_dim, init="trunc_normal")
        self.bottleneck = MultiHeadLinear(n_heads, hidden_dim, bottleneck_dim, init="trunc_normal")
        self.last_layer = MultiHeadWeightNormLinear(n_heads, bottleneck_dim, n_clusters)

    def embed(self, x, heads=None):
        """The L2-normalised bottleneck, shape (H, B, bottleneck_dim)."""
        hidden = F.gelu(self.hidden(x, heads))
        return l2_normalize(self.bottleneck(hidden, heads))

    def forward(self, x, heads=None):
        """Logits of every head, shape (H, B, n_clusters)."""
        return self.last_layer(self.embed(x, heads), heads)


class HeadGroups(nn.Module):
    """H heads kept as consecutive groups, each group a batched module with its own tensors.

    A training step can then run (and back-propagate) one group at a time, so that the
    activations of a group stay in the CPU cache, while one optimiser and one EMA still see all
    heads. Each group owns its parameters: slicing one stacked tensor per group instead would
    make autograd write a zero-filled gradient of the whole stack for every group (measured 13-20 %
    slower per TEMI step). With one group this is the plain batched module.

    Parameters
    ----------
    make_group : callable
        ``make_group(size)`` builds a batched module of ``size`` heads whose methods take
        ``(x, heads=None)`` and return ``(size, B, ·)``.
    group_sizes : list of int
    """

    def __init__(self, make_group, group_sizes):
        super().__init__()
        self.groups = nn.ModuleList(make_group(size) for size in group_sizes)
        self.group_sizes = list(group_sizes)
        self.n_heads = sum(group_sizes)
        starts = torch.tensor([0, *group_sizes]).cumsum(0)
        self.slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]

    def _over_heads(self, method, x, heads):
        if heads is None:
            return torch.cat([getattr(group, method)(x) for group in self.groups])
        heads = [int(h) for h in heads]
        outputs = {}
        for group, part in zip(self.groups, self.slices, strict=True):
            local = [h - part.start for h in heads if part.start <= h < part.stop]
            if local:
                for h, out in zip(local, getattr(group, method)(x, heads=local), strict=True):
                    outputs[h + part.start] = out
        return torch.stack([outputs[h] for h in heads])

    def forward(self, x, heads=None):
        """Outputs of the heads (all, or the list ``heads`` in that order), ``(H, B, ·)``."""
        return self._over_heads("forward", x, heads)

    def embed(self, x, heads=None):
        return self._over_heads("embed", x, heads)
