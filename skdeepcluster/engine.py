"""The training engine shared by every estimator, below the methods.

A method describes its training as a sequence of stages. A :class:`Stage` is a name, a cap on
its epochs, one function that trains one epoch, and what that epoch steps: optimiser(s), a
learning-rate schedule from :mod:`torch.optim.lr_scheduler`, an exponential moving average.
:class:`Trainer` runs a stage epoch by epoch and owns the mechanics that every method shares:

* device and precision: bfloat16 autocast where the device computes it natively
  (:func:`resolve_precision`), float32 master weights and optimiser state, a gradient scaler for
  float16 on CUDA;
* the optimiser step (``zero_grad`` / ``backward`` / ``step``, then the schedule and the EMA);
* the stopping rule (:class:`StoppingRule`, sklearn's ``tol`` / ``n_iter_no_change``);
* the per-epoch records (``history_``) and the progress lines;
* a distributed fit (:class:`Distributed`): the ``torch.distributed`` process group a fit runs
  in, its collectives and DistributedDataParallel wrapping, failures turned into clear errors.

Parameter groups (:func:`parameter_groups`), optimisers (:func:`make_optimizer`) and schedules
(:func:`warmup_cosine_schedule`, :func:`warmup_step_schedule`) are built here once for all
methods. Nothing in this module knows about a particular method.
"""

import contextlib
import math
import os
import time
import warnings

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

__all__ = [
    "AssignmentTracker",
    "Distributed",
    "ExponentialMovingAverage",
    "PRECISIONS",
    "Stage",
    "StoppingRule",
    "Trainer",
    "autocast",
    "make_optimizer",
    "native_bfloat16",
    "parameter_groups",
    "resolve_device",
    "resolve_distributed",
    "resolve_precision",
    "warmup_cosine_schedule",
    "warmup_step_schedule",
]

#: Values of the shared ``precision`` parameter.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------- device and precision
def resolve_device(device):
    """The ``device`` parameter as a ``torch.device``; ``"auto"`` → CUDA when available.

    Raises a ``ValueError`` naming the parameter for a string torch cannot parse and for a device
    this machine does not have, before any work is done.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device={device!r} is not a device: use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(resolved)!r} was asked for but CUDA is not available; use "
                "device='auto' or 'cpu' (e.g. set_params(device='cpu') on a model loaded from "
                "disk)."
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(resolved)!r}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s)."
            )
    elif resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={str(resolved)!r} was asked for but MPS is not available.")
    elif resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device={str(resolved)!r} is not supported: use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        )
    return resolved


def native_bfloat16(device):
    """Whether ``device`` computes bfloat16 matrix products natively (and so faster than float32).

    CUDA: a GPU with bfloat16 arithmetic (Ampere and newer). CPU: AMX tiles or AVX512-BF16, as
    torch itself detects them; a CPU without either emulates bfloat16, tens of times slower than
    float32 (measured: 1 GFLOP/s against 85 on an AVX2-only core, ``doc/benchmarks.rst``).
    """
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(
            including_emulation=False
        )
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(precision, device, *, warn=False):
    """The autocast dtype of the ``precision`` parameter on ``device``.

    ``"auto"``: bfloat16 where :func:`native_bfloat16` says the device computes it natively,
    else float32. ``"bfloat16"`` is honoured everywhere (with a warning when ``warn`` and the
    device emulates it). ``"float16"`` needs CUDA (it trains with a gradient scaler).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "auto":
        return torch.bfloat16 if native_bfloat16(device) else torch.float32
    if precision == "float16" and device.type != "cuda":
        raise ValueError(
            "precision='float16' needs a CUDA device (it trains with a gradient scaler); use "
            "'bfloat16' or 'auto' on this device."
        )
    if precision == "bfloat16" and warn and not native_bfloat16(device):
        warnings.warn(
            f"precision='bfloat16' on a {device.type} device without native bfloat16 "
            "arithmetic: it is emulated and much slower than float32. precision='auto' "
            "chooses float32 here.",
            UserWarning,
            stacklevel=3,
        )
    return _DTYPES[precision]


def autocast(device, dtype):
    """Autocast context for ``dtype`` on ``device``; a no-op for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------- distributed
#: Environment variables that ``torchrun`` sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def resolve_distributed(distributed, device):
    """The process group a fit runs in (a :class:`Distributed`, or None) and its device.

    Parameters
    ----------
    distributed : {"auto"} or bool
        ``"auto"``: the initialised default ``torch.distributed`` process group when it has more
        than one process (e.g. a script started by ``torchrun`` that called
        ``init_process_group``), else None. ``False``: None, a single-process fit even inside a
        process group. ``True``: the initialised process group, or one initialised here from
        the environment ``torchrun`` sets (backend ``"nccl"`` for CUDA, ``"gloo"`` else); a
        ``ValueError`` when there is neither.
    device : torch.device
        The resolved ``device`` parameter. In a distributed fit a CUDA device without an index
        becomes ``cuda:LOCAL_RANK`` (one GPU per process).

    Returns
    -------
    distributed : Distributed or None
    device : torch.device
    """
    if distributed is False:
        return None, device
    available = torch.distributed.is_available()
    initialised = available and torch.distributed.is_initialized()
    if distributed is True and not initialised:
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
        if not available or missing:
            raise ValueError(
                "distributed=True needs a torch.distributed process group: start the script "
                "with torchrun (e.g. torchrun --nproc-per-node 2 script.py), or call "
                "torch.distributed.init_process_group(...) before fit"
                + (f"; the environment lacks {', '.join(missing)}." if missing else ".")
            )
        if device.type == "cuda":
            torch.cuda.set_device(_local_cuda_device(device))
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        initialised = True
    if not initialised or torch.distributed.get_world_size() < 2:
        return None, device
    if device.type == "cuda" and device.index is None:
        device = _local_cuda_device(device)
    return Distributed(device), device


def _local_cuda_device(device):
    if device.index is not None:
        return device
    rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))
    return torch.device("cuda", rank % torch.cuda.device_count())


class Distributed:
    """The ``torch.distributed`` process group of a distributed fit and what the fit needs of it.

    Every rank runs the same fit on the same data; the collectives here keep the ranks in step:
    ``all_reduce_mean`` (batch statistics, epoch records), ``all_gather`` (per-step values that
    every rank must know), ``gather_rows`` (each rank's share of an inference, concatenated in
    rank order), ``broadcast`` (work done once on rank 0, e.g. mined neighbours), ``check``
    (input or parameters that must agree) and :meth:`wrap` (a module in
    :class:`~torch.nn.parallel.DistributedDataParallel`, whose gradients are averaged over the
    ranks during ``backward``).

    A rank that fails or stops leaves the others waiting in their next collective; the wait ends
    after the process group's timeout (``init_process_group(timeout=...)``), and the collective's
    error is re-raised as a ``RuntimeError`` that says so.

    Parameters
    ----------
    device : torch.device
        The device this rank trains on.
    """

    def __init__(self, device):
        import torch.distributed as dist

        self._dist = dist
        self.device = device
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = dist.get_backend()
        # NCCL communicates CUDA tensors; gloo (and MPI) CPU tensors
        self.comm_device = device if self.backend == "nccl" else torch.device("cpu")

    def __repr__(self):
        return f"Distributed(rank={self.rank}, world_size={self.world_size}, {self.backend})"

    @property
    def is_main(self):
        """Rank 0: the rank that prints progress and does the work done once."""
        return self.rank == 0

    @contextlib.contextmanager
    def collective(self, what):
        """Re-raise the failure of a collective inside as an error that says what it means."""
        try:
            yield
        except RuntimeError as error:
            raise RuntimeError(
                f"Distributed fit, rank {self.rank} of {self.world_size}: {what} failed "
                f"({str(error).strip().splitlines()[-1] if str(error).strip() else error!r}). "
                "Another rank has probably failed or stopped (its own error says why); the "
                "wait is bounded by the process group's timeout, "
                "init_process_group(timeout=...)."
            ) from error

    def shard(self, n):
        """This rank's contiguous share of ``range(n)`` (shares differ by at most one)."""
        start = n * self.rank // self.world_size
        return slice(start, n * (self.rank + 1) // self.world_size)

    def all_reduce_mean(self, tensor, what="an all-reduce"):
        """The mean of ``tensor`` over the ranks (a new tensor on ``tensor``'s device)."""
        reduced = tensor.detach().to(self.comm_device, copy=True)
        with self.collective(what):
            self._dist.all_reduce(reduced)
        return (reduced / self.world_size).to(tensor.device)

    def all_gather(self, tensor, what="an all-gather"):
        """Every rank's ``tensor`` (all of one shape), stacked: shape ``(world_size, *shape)``."""
        local = tensor.detach().to(self.comm_device).reshape(1, -1).contiguous()
        gathered = torch.empty((self.world_size, local.shape[1]), dtype=local.dtype,
                               device=self.comm_device)
        # all_gather_single is all_gather_into_tensor's name from torch 2.14 on
        gather = getattr(self._dist, "all_gather_single", None) or self._dist.all_gather_into_tensor
        with self.collective(what):
            gather(gathered, local)
        return gathered.reshape(self.world_size, *tensor.shape).to(tensor.device)

    def gather_rows(self, array, what="gathering the results"):
        """Every rank's rows of ``array`` (numpy, any number of rows, even none), concatenated
        in rank order; the same array on every rank."""
        shapes = [shape for shape, _ in self.all_gather_object((array.shape, array.dtype.str),
                                                               what)]
        counts = [shape[0] for shape in shapes]
        trailing = next((shape[1:] for shape in shapes if shape[0]), array.shape[1:])
        padded = np.zeros((max(counts), *trailing), dtype=array.dtype)
        padded[: array.shape[0]] = array
        gathered = self.all_gather(torch.from_numpy(padded), what).numpy()
        return np.concatenate([gathered[r, :count] for r, count in enumerate(counts)])

    def all_gather_object(self, value, what="an all-gather"):
        """Every rank's picklable ``value``, as a list in rank order."""
        values = [None] * self.world_size
        with self.collective(what):
            self._dist.all_gather_object(values, value)
        return values

    def broadcast(self, array, src=0, what="a broadcast"):
        """Rank ``src``'s numpy ``array`` on every rank (the others pass None)."""
        meta = [(array.shape, array.dtype.str) if self.rank == src else None]
        with self.collective(what):
            self._dist.broadcast_object_list(meta, src=src)
        shape, dtype = meta[0]
        tensor = (torch.from_numpy(np.ascontiguousarray(array)) if self.rank == src
                  else torch.from_numpy(np.empty(shape, dtype=dtype)))
        tensor = tensor.to(self.comm_device)
        with self.collective(what):
            self._dist.broadcast(tensor, src=src)
        return tensor.cpu().numpy()

    def broadcast_object(self, value, src=0, what="a broadcast"):
        """Rank ``src``'s picklable ``value`` on every rank."""
        box = [value]
        with self.collective(what):
            self._dist.broadcast_object_list(box, src=src)
        return box[0]

    def check(self, error, what):
        """Raise on every rank when any rank's ``error`` (an exception or None) is not None.

        Each rank passes what its own check raised: the ranks then fail together, before any
        training, with the failed ranks named, instead of the healthy ones waiting for the
        failed ones until the timeout.
        """
        message = None if error is None else f"{type(error).__name__}: {error}"
        reports = self.all_gather_object(message, what)
        failed = {rank: report for rank, report in enumerate(reports) if report is not None}
        if not failed:
            return
        if error is not None:
            raise error
        first = min(failed)
        raise ValueError(
            f"{what} failed on rank(s) {sorted(failed)} of this distributed fit (rank {first}: "
            f"{failed[first]}); every rank must pass the same valid data and parameters."
        )

    def agree(self, value, what):
        """A ``ValueError`` on every rank unless all ranks pass equal ``value`` (picklable)."""
        values = self.all_gather_object(value, what)
        differing = [rank for rank, other in enumerate(values) if other != values[0]]
        if differing:
            raise ValueError(
                f"The ranks of this distributed fit disagree on {what}: rank 0 has "
                f"{values[0]!r}, rank {differing[0]} has {values[differing[0]]!r}. Every rank "
                "must call fit with the same data and parameters."
            )

    def wrap(self, module):
        """``module`` in :class:`~torch.nn.parallel.DistributedDataParallel`: its parameters
        are rank 0's from here on, and ``backward`` averages its gradients over the ranks."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        with self.collective("wrapping the model in DistributedDataParallel"):
            return DistributedDataParallel(module, device_ids=device_ids)


# ---------------------------------------------------------------------- optimisers and schedules
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _is_bias_or_gain(module, name):
    return name == "bias" or name == "gain" or isinstance(module, _NORM_LAYERS)


def parameter_groups(module, weight_decay, *, decay="weights", exclude=(), weight_decays=None):
    """Optimiser parameter groups with and without weight decay.

    Parameters
    ----------
    module : torch.nn.Module
    weight_decay : float
    decay : {"weights", "all"}, default="weights"
        ``"weights"``: biases, normalisation-layer gains and weight-norm gains get no decay
        (DINO/TEMI, the MMDC code). ``"all"``: every parameter decays (plain
        ``optimizer(model.parameters(), weight_decay=...)``, as the SCAN and DeepCluster code).
    exclude : tuple of str
        Names of parameters (as in ``named_parameters``) that never decay, e.g. ADC's centroids.
    weight_decays : dict of str to float, optional
        Parameters (by name) with a weight decay of their own, in groups of their own, e.g.
        ADC's logit layer. A name that is not a parameter of ``module`` is a ``ValueError``.

    Returns
    -------
    list of dict
        Non-empty groups only; parameters that do not require gradients are left out.
    """
    weight_decays = dict(weight_decays or {})
    unknown = sorted(set(weight_decays) - {name for name, _ in module.named_parameters()})
    if unknown:  # a misspelt name would otherwise leave the parameter in the common groups
        raise ValueError(f"weight_decays names no parameter of the module: {unknown}.")
    decayed, exempt, own = [], [], {name: [] for name in weight_decays}
    for module_name, child in module.named_modules():
        for name, parameter in child.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            full_name = f"{module_name}.{name}" if module_name else name
            if full_name in own:
                own[full_name].append(parameter)
                continue
            no_decay = full_name in exclude or (
                decay == "weights" and _is_bias_or_gain(child, name)
            )
            (exempt if no_decay else decayed).append(parameter)
    groups = [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
        *({"params": own[name], "weight_decay": value} for name, value in weight_decays.items()),
    ]
    return [group for group in groups if group["params"]]


_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def make_optimizer(name, groups, *, lr, device, **options):
    """``torch.optim`` SGD / Adam / AdamW over ``groups``; Adam and AdamW fused on CPU and CUDA.

    The fused kernels update each parameter tensor in one pass over memory instead of one pass
    per arithmetic operation (TEMI's stacked heads: 0.02 s instead of 0.35 s per step on one CPU
    thread, ``doc/benchmarks.rst``). SGD keeps torch's default (multi-tensor) implementation:
    its fused kernel fails when a parameter first gets a gradient after other parameters
    already have momentum buffers (MMDC's two heads, trained in alternation; torch 2.14).
    """
    fused = True if name != "sgd" and device.type in ("cpu", "cuda") else None
    return _OPTIMIZERS[name](groups, lr=lr, fused=fused, **options)


def warmup_cosine_schedule(optimizer, total_steps, *, warmup_steps=0, final_lr=None):
    """Per-step schedule: linear warm-up over ``warmup_steps``, then cosine decay to ``final_lr``
    at ``total_steps`` (constant after the warm-up when ``final_lr`` is None)."""
    base_lr = optimizer.param_groups[0]["lr"]

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if final_lr is None:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        final = final_lr / base_lr
        return final + 0.5 * (1.0 - final) * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_step_schedule(optimizer, *, warmup_steps=0, decay_steps=0, decay_factor=1.0,
                         first_step=0):
    """Per-step schedule: linear warm-up over ``warmup_steps``; the rate is divided by
    ``decay_factor`` every ``decay_steps`` steps (0: never). Steps are counted from the first
    step of training: ``first_step`` steps were taken before this optimiser (a stage that
    resets the optimiser but not the schedule)."""

    def factor(step):
        step += first_step
        value = (step + 1) / warmup_steps if step < warmup_steps else 1.0
        if decay_steps:
            value /= decay_factor ** (step // decay_steps)
        return value

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ExponentialMovingAverage:
    """``average ← m · average + (1 − m) · source`` over lists of tensors, after each step.

    ``momentum`` is a float or a function of the number of updates made so far (a schedule).
    The update is :func:`torch.optim.swa_utils.get_ema_multi_avg_fn`'s, one fused pass over
    every tensor.
    """

    def __init__(self, average, source, momentum):
        self.average = list(average)
        self.source = list(source)
        if len(self.average) != len(self.source):
            raise ValueError("average and source must hold the same number of tensors.")
        self.momentum = momentum
        self.n_updates = 0

    def current_momentum(self):
        return self.momentum(self.n_updates) if callable(self.momentum) else self.momentum

    @torch.no_grad()
    def update(self):
        get_ema_multi_avg_fn(self.current_momentum())(self.average, self.source, None)
        self.n_updates += 1


# ---------------------------------------------------------------------- stopping
class StoppingRule:
    """sklearn-style ``tol`` / ``n_iter_no_change`` stopping on a monitored change.

    The monitored value is a fraction in [0, 1] that an epoch reports, lower meaning more
    settled, typically the fraction of the training samples whose cluster changed during the
    epoch. Two modes, chosen by the stage for what its paper's training does:

    * ``"below"`` (DEC, Xie et al. 2016): stop when fewer than ``tol`` of the assignments
      changed, ``n_iter_no_change`` epochs in a row. For training whose assignments settle.
    * ``"plateau"`` (``MLPClassifier`` / ``SGDClassifier`` on their loss): stop when the value has
      not gone below its lowest value so far minus ``tol``, ``n_iter_no_change`` epochs in a row.
      For an alternation that relabels a share of the samples every epoch however long it trains
      (DeepCluster's fresh k-means, a pretext task's neighbour lists): the change levels off
      above zero and the rule ends training when it stops decreasing.

    ``tol=None`` never stops (the paper's fixed schedule). An epoch that reports None or NaN
    (nothing to compare yet) does not count.
    """

    def __init__(self, tol, n_iter_no_change, mode="below"):
        if mode not in ("below", "plateau"):
            raise ValueError(f"mode must be 'below' or 'plateau', got {mode!r}.")
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.mode = mode
        self.best = math.inf
        self.n_no_change = 0

    def update(self, value):
        """Record one epoch's value; True when training should stop."""
        if self.tol is None or value is None or math.isnan(value):
            return False
        if self.mode == "below":
            self.n_no_change = self.n_no_change + 1 if value < self.tol else 0
        else:
            self.n_no_change = 0 if value < self.best - self.tol else self.n_no_change + 1
            self.best = min(self.best, value)
        return self.n_no_change >= self.n_iter_no_change


class AssignmentTracker:
    """The usual stopping signal: the fraction of training samples whose cluster changed.

    Training code calls :meth:`update` with the clusters it sees for a batch of samples (for
    free: the predictions a step computes anyway); a sample counts once it has been seen
    before. :meth:`fraction` returns the fraction changed since its last call. With ``n_heads``
    every head keeps its own assignment and the fraction is over all (head, sample) pairs.
    Counts stay on the device until :meth:`fraction` (no synchronisation per step).
    """

    def __init__(self, n_samples, *, n_heads=None, n_clusters=2**15, device="cpu"):
        shape = (n_samples,) if n_heads is None else (n_heads, n_samples)
        dtype = torch.int16 if n_clusters < 2**15 else torch.int32
        self.last = torch.full(shape, -1, dtype=dtype, device=device)
        self._counts = torch.zeros(2, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, indices, clusters):
        """``clusters`` of the samples ``indices``: shape (B,), or (n_heads, B)."""
        clusters = clusters.to(self.last.dtype)
        previous = self.last[..., indices]
        seen = previous >= 0
        self._counts[0] += ((previous != clusters) & seen).sum()
        self._counts[1] += seen.sum()
        self.last[..., indices] = clusters

    def fraction(self):
        """Fraction of the compared assignments that changed since the last call; 1.0 when
        nothing could be compared yet (the first epoch)."""
        changed, compared = (int(v) for v in self._counts.tolist())
        self._counts.zero_()
        return changed / compared if compared else 1.0

    def state_dict(self):
        return {"last": self.last, "counts": self._counts}

    @torch.no_grad()
    def load_state_dict(self, state):
        self.last.copy_(state["last"])
        self._counts.copy_(state["counts"])


# ---------------------------------------------------------------------- stages and trainer
class Stage:
    """One training stage: what an epoch of it trains and steps.

    Create stages with :meth:`Trainer.stage`. The epoch function receives the stage:
    ``run_epoch(stage) -> dict`` trains one epoch (``stage.epoch`` is its 0-based index), calls
    :meth:`step` once per optimiser step and returns the epoch's record (plain numbers). Forward
    passes go under ``with stage.autocast():``.

    Attributes
    ----------
    name : str
    max_epochs : int
        The cap; the stopping rule may end the stage earlier.
    optimizers : list of torch.optim.Optimizer
        Stepped together by :meth:`step` (DeepCluster steps its network and its classifier).
    scheduler : torch.optim.lr_scheduler.LRScheduler or None
        Stepped after every optimiser step (``scheduler_interval="step"``) or epoch.
    ema : ExponentialMovingAverage or None
        Updated after every optimiser step.
    monitor : str or None
        Key of the epoch record that the stopping rule watches; None: the stage runs all of
        ``max_epochs``.
    stop_mode : {"below", "plateau"}
        How the stopping rule reads the monitor (:class:`StoppingRule`).
    state : dict
        What else the epochs change and a checkpoint must save (:mod:`skdeepcluster.checkpoint`):
        name → a module not in the estimator's ``module_``, a tensor, or an object with
        ``state_dict()`` / ``load_state_dict()``.
    rule : StoppingRule
    epoch, n_steps, n_epochs : int
        Current epoch, optimiser steps taken, epochs run.
    """

    def __init__(self, trainer, name, run_epoch, max_epochs, *, optimizer=None, scheduler=None,
                 scheduler_interval="step", ema=None, monitor=None, stop_mode="below",
                 state=None):
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got "
                             f"{scheduler_interval!r}.")
        self.trainer = trainer
        self.name = name
        self.run_epoch = run_epoch
        self.max_epochs = int(max_epochs)
        if optimizer is None:
            self.optimizers = []
        elif isinstance(optimizer, torch.optim.Optimizer):
            self.optimizers = [optimizer]
        else:
            self.optimizers = list(optimizer)
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.ema = ema
        self.monitor = monitor
        self.stop_mode = stop_mode
        self.state = {} if state is None else dict(state)
        tol = trainer.tol if monitor is not None else None
        self.rule = StoppingRule(tol, trainer.n_iter_no_change, stop_mode)
        self.epoch = 0
        self.n_steps = 0
        self.n_epochs = 0
        self.last_lr = self._current_lr()

    @property
    def device(self):
        return self.trainer.device

    def autocast(self):
        """The trainer's autocast context (bfloat16 / float16, or nothing for float32)."""
        return self.trainer.autocast()

    def _current_lr(self):
        return self.optimizers[0].param_groups[0]["lr"] if self.optimizers else None

    def zero_grad(self):
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)

    def backward(self, loss):
        """Back-propagate ``loss`` (scaled for float16); gradients accumulate until :meth:`step`."""
        scaler = self.trainer.grad_scaler
        scaled = loss if scaler is None else scaler.scale(loss)
        distributed = self.trainer.distributed
        if distributed is None:
            scaled.backward()
            return
        # a DistributedDataParallel module averages its gradients over the ranks in here
        with distributed.collective("the gradient all-reduce of a training step"):
            scaled.backward()

    def step(self, loss=None):
        """One optimiser step; with ``loss``, first ``zero_grad`` and ``backward(loss)``.

        Then the per-step schedule and the EMA. Without ``loss`` the gradients accumulated by
        :meth:`backward` are used (several backward passes, one step).
        """
        if loss is not None:
            self.zero_grad()
            self.backward(loss)
        self.last_lr = self._current_lr()
        scaler = self.trainer.grad_scaler
        for optimizer in self.optimizers:
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
        if scaler is not None:
            scaler.update()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update()
        self.n_steps += 1


class Trainer:
    """Runs stages: device, precision, the stopping rule, ``history`` and progress lines.

    Parameters
    ----------
    device : torch.device
    dtype : torch.dtype
        Autocast dtype (float32: no autocast).
    history : list
        Receives one dict per epoch: ``stage``, ``epoch`` (1-based), the epoch's record, ``lr``
        (the last one used) when the stage has an optimiser, ``seconds`` (wall) and
        ``cpu_seconds`` (this process). The progress lines show the record's numbers and its
        strings (notes) as they are.
    tol : float or None
        Stopping rule threshold (see :class:`StoppingRule`); None: every stage runs its cap.
    n_iter_no_change : int
    verbose : int
        0: silent; 1: about 20 progress lines per stage; 2: every epoch.
    name : str
        Prefix of the progress lines (the estimator's class name).
    distributed : Distributed or None
        The process group of a distributed fit: only its rank 0 prints. The epochs' records,
        and so the stopping rule, must be the same on every rank (the methods reduce them).

    Attributes
    ----------
    checkpoint : Checkpoint or None
        Set by the estimator before the first stage runs: the stages are then saved to it and,
        when it holds an interrupted fit, restored from it (:mod:`skdeepcluster.checkpoint`).
    """

    def __init__(self, device, dtype=torch.float32, *, history=None, tol=None,
                 n_iter_no_change=5, verbose=0, name="skdeepcluster", distributed=None):
        self.device = device
        self.dtype = dtype
        self.history = [] if history is None else history
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.distributed = distributed
        self.verbose = verbose if distributed is None or distributed.is_main else 0
        self.name = name
        self.grad_scaler = (
            torch.amp.GradScaler("cuda") if dtype == torch.float16 and device.type == "cuda"
            else None
        )
        self.n_epochs = {}
        self.checkpoint = None
        self.n_stages = 0  # stages run so far: the index of the next one

    def autocast(self):
        return autocast(self.device, self.dtype)

    def prepare(self, module):
        """``module`` on the trainer's device; a convolutional network also in channels-last
        memory format (oneDNN's and cuDNN's fast layout; 11-26 % less time per step of the
        default convnets on a CPU in float32, ``doc/benchmarks.rst``). Inputs may stay NCHW:
        the first convolution switches to the weights' layout."""
        module = module.to(self.device)
        if any(isinstance(layer, nn.Conv2d) for layer in module.modules()):
            module = module.to(memory_format=torch.channels_last)
        return module

    def stage(self, name, run_epoch, max_epochs, **options):
        """A :class:`Stage` of this trainer (same options)."""
        return Stage(self, name, run_epoch, max_epochs, **options)

    def run(self, stage):
        """Train ``stage`` until its cap or its stopping rule; return the epochs run.

        With a checkpoint, a stage that the checkpoint saved finished is restored to its end
        and not trained; one that it saved running is restored and trained on from there.
        """
        index, self.n_stages = self.n_stages, self.n_stages + 1
        checkpoint = self.checkpoint
        restored = None if checkpoint is None else checkpoint.restore(self, stage, index)
        if restored == "finished":
            return stage.n_epochs
        started, first = time.perf_counter(), stage.n_epochs
        report_every = 1 if self.verbose > 1 else max(1, stage.max_epochs // 20)
        for epoch in range(first, stage.max_epochs):
            stage.epoch = epoch
            wall, cpu = time.perf_counter(), time.process_time()
            record = stage.run_epoch(stage)
            if stage.scheduler is not None and stage.scheduler_interval == "epoch":
                stage.scheduler.step()
            entry = {"stage": stage.name, "epoch": epoch + 1, **record}
            if stage.optimizers and "lr" not in entry:
                entry["lr"] = stage.last_lr
            entry["seconds"] = time.perf_counter() - wall
            entry["cpu_seconds"] = time.process_time() - cpu
            self.history.append(entry)
            stage.n_epochs = epoch + 1
            stop = stage.rule.update(record.get(stage.monitor)) if stage.monitor else False
            if self.verbose and (
                (epoch + 1) % report_every == 0 or epoch + 1 == stage.max_epochs or stop
            ):
                self._report(stage, entry, record, started, first)
            if stop:
                if self.verbose:
                    print(
                        f"[{self.name}] {stage.name}: stopped after epoch {epoch + 1} of "
                        f"{stage.max_epochs}: {stage.monitor} "
                        + ("below" if stage.stop_mode == "below" else "not decreasing by")
                        + f" {stage.rule.tol} for {self.n_iter_no_change} epochs in a row.",
                        flush=True,
                    )
                break
            if checkpoint is not None and epoch + 1 < stage.max_epochs:
                checkpoint.epoch_done(self, stage)
        self.n_epochs[stage.name] = self.n_epochs.get(stage.name, 0) + stage.n_epochs
        if checkpoint is not None:
            checkpoint.stage_done(self, stage)
        return stage.n_epochs

    def log(self, name, function):
        """Run ``function() -> dict`` once (work after training, e.g. a final clustering) and
        record it in ``history`` like an epoch of a stage called ``name``."""
        wall, cpu = time.perf_counter(), time.process_time()
        record = function()
        self.history.append({"stage": name, "epoch": 1, **record,
                             "seconds": time.perf_counter() - wall,
                             "cpu_seconds": time.process_time() - cpu})
        return record

    def _report(self, stage, entry, record, started, first):
        elapsed = time.perf_counter() - started
        done = stage.epoch + 1
        eta = elapsed / (done - first) * (stage.max_epochs - done)
        terms = "  ".join(
            f"{key}={value:.4g}"
            for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        )
        notes = [value for value in record.values() if isinstance(value, str)]
        if notes:  # what the numbers cannot say, e.g. an epoch that trained nothing
            terms = "  ".join(filter(None, [terms, *notes]))
        print(
            f"[{self.name}] {stage.name} epoch {done}/{stage.max_epochs}  {terms}  "
            f"{entry['seconds']:.2f}s  elapsed {elapsed:.0f}s  eta {eta:.0f}s",
            flush=True,
        )
