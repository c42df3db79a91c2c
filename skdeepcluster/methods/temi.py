"""TEMI: Teacher Ensemble-weighted pointwise Mutual Information (Adaloglou et al., BMVC 2023)."""

import copy
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from torch import nn

from ..base import BaseDeepClusterer
from ..data import batch_to_tensor, iterate_batches, rows_to_device
from ..engine import (
    AssignmentTracker,
    Distributed,
    ExponentialMovingAverage,
    make_optimizer,
    parameter_groups,
    warmup_cosine_schedule,
)
from ..neighbors import mine_neighbors
from ..nn.heads import HeadGroups, TEMIHeads, head_group_sizes
from ..nn.losses import instance_weights, temi_pair_loss, update_cluster_prior

__all__ = ["TEMIClusterer"]


def _cosine(start, end, progress):
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def auto_teacher_momentum(total_steps, paper_momentum=0.996):
    """The ``teacher_momentum="auto"`` rule: ``1 - 30 / total_steps`` within [0.9, 0.996].

    The teacher's averaging window ``1 / (1 - m)`` stays under 1/30 of the run, so a short run's
    teacher follows its student; from 7 500 steps on this is the paper's 0.996.
    """
    return float(min(paper_momentum, max(0.9, 1.0 - 30.0 / total_steps)))


@dataclass
class _PairData:
    """What the TEMI epochs share: features, neighbours, prior, tracked assignments.

    ``rows(indices)`` returns the features of samples ``indices`` as a float32 tensor on the
    training device. ``batch_size`` is the global batch; in a distributed fit each rank trains
    on its ``local`` slice of it, through its ``wrapped`` head groups
    (DistributedDataParallel, rebuilt when ``wrapped_frozen``, the last layer's state, changes).
    """

    rows: Callable[[torch.Tensor], torch.Tensor]
    n_samples: int
    neighbors: torch.Tensor
    batch_size: int
    generator: torch.Generator
    prior: torch.Tensor
    assignments: AssignmentTracker
    distributed: Distributed | None = None
    local: slice = field(default_factory=lambda: slice(None))
    wrapped: list | None = None
    wrapped_frozen: bool | None = None

    def state_dict(self):  # what the epochs change, for a checkpoint
        return {"prior": self.prior, "assignments": self.assignments.state_dict()}

    def load_state_dict(self, state):
        self.prior = state["prior"].to(self.prior.device)
        self.assignments.load_state_dict(state["assignments"])


class TEMIClusterer(BaseDeepClusterer):
    """Clustering heads trained by self-distillation on nearest-neighbour pairs (TEMI).

    For every sample the ``n_neighbors`` most cosine-similar samples are mined with faiss. Pairs
    of a sample and one of its neighbours train ``n_heads`` student heads against
    exponential-moving-average teacher heads with the teacher-ensemble-weighted pointwise
    mutual information loss. The head with the lowest training loss is kept and its teacher
    predicts. The representation is frozen: X is usually a matrix of embeddings from a
    pretrained model (e.g. :class:`~skdeepcluster.ImageEmbedder` in a Pipeline); images are
    accepted when a frozen ``backbone`` maps them to embeddings.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of clusters K.
    backbone : torch.nn.Module or None, default=None
        Frozen feature extractor for image input (a copy is kept, in eval mode, never trained).
        None: X must be a feature matrix.
    n_heads : int, default=50
        Number of heads H trained at once (paper: 50; 16 lose less than a point).
    n_neighbors : int, default=50
        Neighbours mined per sample, itself excluded (paper: 50; 25 on ImageNet). Capped at
        ``n_samples - 1`` with a warning.
    beta : float, default=0.6
        PMI exponent β in (0.5, 1] (paper: 0.6 for clustering, 1 for overclustering).
    loss : {"temi", "wpmi", "pmi"}, default="temi"
        The paper's objective and its ablations: instance weights averaged over heads (TEMI),
        each head's own weight (WPMI), or none (PMI).
    tau : float, default=0.1
        Softmax temperature of student and teacher.
    teacher_momentum : float or "auto", default="auto"
        EMA momentum m of the teacher heads. ``"auto"``: the paper's 0.996 when ``max_epochs``
        amount to at least 7 500 steps, else ``1 - 30 / total_steps``, at least 0.9 (small-data
        rule, see Notes): the teacher's averaging window ``1 / (1 - m)`` stays under 1/30 of
        the run. The value used is ``teacher_momentum_``.
    teacher_momentum_schedule : {"constant", "cosine"}, default="constant"
        ``"cosine"`` raises the momentum to 1 over training (the authors' code option).
    prior_momentum : float, default=0.9
        EMA momentum of the cluster prior q̃(c), updated before each step's loss.
    max_epochs : int, default=200
        Cap on the epochs (paper: 200), always honoured; the stopping rule may end training
        earlier (``tol``).
    tol : float or None, default=2e-3
        Stopping rule: training ends when fewer than ``tol`` of the anchors seen in an epoch
        changed their teacher cluster since their previous visit (mean over heads), for
        ``n_iter_no_change`` epochs in a row. None: train exactly ``max_epochs`` (the paper's
        fixed schedule). See Notes.
    n_iter_no_change : int, default=10
        Consecutive epochs below ``tol`` that end training.
    batch_size : int, default=512
        Anchors per step (capped at n_samples). Every anchor is paired with one neighbour.
    lr : float, default=1e-4
        AdamW learning rate (paper).
    weight_decay : float, default=1e-4
        AdamW weight decay, not applied to biases and weight-norm gains.
    lr_schedule : {"constant", "cosine"}, default="constant"
        Paper: constant. The authors' code: linear warm-up then cosine decay.
    warmup_epochs : int, default=0
        Linear warm-up of the learning rate (authors' code: 20 for long runs).
    scale_lr_with_batch : bool, default=False
        Authors' code: ``lr * batch_size / 256``.
    freeze_last_layer_epochs : int, default=0
        Epochs during which the last (weight-normalised) layer gets no update (authors': 1).
    hidden_dim : int, default=512
        Width of each head's hidden layer.
    bottleneck_dim : int, default=256
        Width of each head's L2-normalised bottleneck.
    neighbor_index : {"auto", "exact", "approximate"}, default="auto"
        faiss index for mining (see :func:`~skdeepcluster.mine_neighbors`).
    distributed : "auto" or bool, default="auto"
        Distributed fit over the processes of a ``torch.distributed`` process group (e.g.
        ``torchrun --nproc-per-node N script.py``; see the "Large data and several GPUs" page).
        ``"auto"``: when an initialised process group has more than one process. ``True``:
        always; the process group is initialised from torchrun's environment if the script did
        not (``"nccl"`` on CUDA, ``"gloo"`` on CPUs). ``False``: one process, even inside a
        process group. Every process must call ``fit`` with the same X and parameters; each
        trains on its share of every batch, and all end with the same fitted model.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Arithmetic of the heads' matrix products (autocast); weights, optimiser state and the
        loss stay float32. ``"auto"``: bfloat16 where the device computes it natively (CUDA
        GPUs with bfloat16, CPUs with AMX or AVX512-BF16), else float32. ``"float16"``: CUDA
        only, with a gradient scaler. The value used is ``precision_``.
    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds torch, numpy and faiss; an int makes CPU runs reproducible.
    checkpoint : str, path-like or None, default=None
        File for the training state, written during training; ``fit`` called again with the
        same data and parameters resumes an interrupted fit from it (:ref:`checkpoints`).
    verbose : int, default=0
        Progress lines (epoch, loss, seconds, ETA) when > 0; every epoch when > 1.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample (``predict`` of the training data).
    neighbors_ : ndarray of shape (n_samples, n_neighbors)
        The mined neighbours of each training sample (itself excluded).
    best_head_ : int
        Index of the head with the lowest training loss; its teacher predicts.
    head_losses_ : ndarray of shape (n_heads,)
        Mean training loss of each head over the last epoch.
    cluster_prior_ : ndarray of shape (n_heads, n_clusters)
        The EMA cluster prior of every head at the end of training.
    history_ : list of dict
        Per epoch: ``loss`` (mean over heads), ``best_head_loss``, ``changed`` (the stopping
        rule's fraction), ``lr``, ``seconds``, ``cpu_seconds``.
    n_iter_ : int
        Epochs trained.
    precision_ : str
        The arithmetic used (``"float32"``, ``"bfloat16"`` or ``"float16"``).
    batch_size_ : int
        The batch size used (``batch_size`` capped at n_samples).
    teacher_momentum_ : float
        The teacher EMA momentum used (after the ``"auto"`` rule).
    n_steps_ : int
        Optimiser steps taken.
    head_groups_ : int
        Number of groups the heads were computed in (1 on a GPU; cache-sized groups on a CPU).
    module_ : torch.nn.ModuleDict
        ``backbone`` (or identity), ``student`` and ``teacher`` heads
        (:class:`~skdeepcluster.nn.heads.HeadGroups` of batched ``TEMIHeads``).
    n_features_in_ : int
        Number of features (values per image for image input).
    world_size_ : int
        Number of processes that trained the model (1 unless ``distributed``).

    See Also
    --------
    SCANClusterer : the SCAN loss this method improves upon.

    Notes
    -----
    Adaloglou, Michels, Kalisch, Kollmann, "Exploring the Limits of Deep Image Clustering using
    Pretrained Models", BMVC 2023. Defaults are the paper's (Sec. 4); the authors' code values
    are reachable with ``lr_schedule="cosine"``, ``warmup_epochs``, ``scale_lr_with_batch=True``,
    ``freeze_last_layer_epochs=1`` and ``teacher_momentum_schedule="cosine"``.

    Deviation from the paper, on purpose — the small-data rule ``teacher_momentum="auto"``; on
    runs of at least 7 500 steps it is the paper's 0.996. The paper's 200 epochs assume large
    data: on 1 797 digits they are 600 optimiser steps, and with the paper's momentum 0.996 (an
    averaging window of 250 steps, most of such a run) the authors' code stops at ~0.5
    accuracy, below k-means (0.79). A teacher that follows its student within the run is what
    helps: the rule's 0.95 for 600 steps gives 0.867 with the 50 default heads (seed 0), as
    much as the 2 000 steps at 0.985 that an earlier version trained (0.869); more steps alone
    do not (2 000 steps at 0.996: 0.72, 4 heads). See ``doc/benchmarks.rst``.

    Stopping rule (``tol``): each step already computes the teachers' probabilities of its
    anchors, so the cluster of every anchor in every head is tracked at no cost; ``changed`` is
    the fraction of them (over all heads) that differs from the sample's previous visit. On
    digits (50 heads, seed 0) it falls from 0.10 at epoch 10 to 0.002 at epoch 130 while the
    accuracy rises to its final level; the defaults (``tol=2e-3``, ``n_iter_no_change=10``)
    stop after epoch ~150 of 200 at the accuracy of the full schedule (0.866 vs 0.867).

    Layout of the heads: one step of 50 heads computes 50 × 1 024 × 512 activations per layer
    (100 MB each in float32). On a CPU the heads run in groups whose activations stay in the
    cache (:func:`~skdeepcluster.nn.heads.head_group_sizes`; 4 heads per group at batch 512),
    each group back-propagated in turn, with one AdamW step and one EMA over all heads; on a GPU
    all heads form one group. On two CPU threads this took a 50-head step on 64 features from
    1.2-1.8 s to 0.55 s, 1.14× faster than the authors' loop over heads; on one thread it is as
    fast as that loop, 1.7-1.9× above the float32 matrix-product floor. In bfloat16 (the
    ``"auto"`` precision of a CPU with AVX512-BF16) one thread runs the step 2.7× (64 features)
    and 3.4× (784) faster than the authors' float32 loop (``bench_speed.py heads``,
    ``doc/benchmarks.rst``).

    ``transform`` returns the best teacher head's L2-normalised bottleneck (``bottleneck_dim``
    values). ``score`` is the label-free mutual information between samples and clusters.
    Training costs O(n_heads · steps · batch_size · hidden_dim · d); mining is batched faiss, never
    an n×n matrix.

    Model selection without labels: ``score`` (the mutual information, at most
    ``log n_clusters`` nats) may compare fits with the same ``n_clusters``, e.g.
    ``GridSearchCV(TEMIClusterer(n_clusters=10), {"beta": [0.6, 0.8, 1.0]})`` without ``y``
    (also ``lr``, ``tau``, ``n_heads``, ``n_neighbors``), but not choose ``n_clusters``: its
    ceiling grows with K. See the "Evaluating" page of the user guide.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdeepcluster import TEMIClusterer
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X[:500] / 16  # a few seconds: too short to cluster well
    >>> model = TEMIClusterer(n_clusters=10, n_heads=2, max_epochs=5, batch_size=64,
    ...                       random_state=0).fit(X)
    >>> model.labels_.shape
    (500,)
    """

    _parameter_constraints: dict = {
        **BaseDeepClusterer._parameter_constraints,
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="neither")],
        "loss": [StrOptions({"temi", "wpmi", "pmi"})],
        "tau": [Interval(Real, 0, None, closed="neither")],
        "teacher_momentum": [Interval(Real, 0, 1, closed="both"), StrOptions({"auto"})],
        "teacher_momentum_schedule": [StrOptions({"constant", "cosine"})],
        "prior_momentum": [Interval(Real, 0, 1, closed="both")],
        "lr_schedule": [StrOptions({"constant", "cosine"})],
        "warmup_epochs": [Interval(Integral, 0, None, closed="left")],
        "scale_lr_with_batch": ["boolean"],
        "freeze_last_layer_epochs": [Interval(Integral, 0, None, closed="left")],
        "hidden_dim": [Interval(Integral, 1, None, closed="left")],
        "bottleneck_dim": [Interval(Integral, 1, None, closed="left")],
        "neighbor_index": [StrOptions({"auto", "exact", "approximate"})],
        "distributed": [StrOptions({"auto"}), "boolean"],
    }

    # features are read batch by batch: a float16 (memory-mapped) matrix stays float16
    _feature_dtypes = (np.float32, np.float64, np.float16)

    def __init__(
        self,
        n_clusters=10,
        *,
        backbone=None,
        n_heads=50,
        n_neighbors=50,
        beta=0.6,
        loss="temi",
        tau=0.1,
        teacher_momentum="auto",
        teacher_momentum_schedule="constant",
        prior_momentum=0.9,
        max_epochs=200,
        tol=2e-3,
        n_iter_no_change=10,
        batch_size=512,
        lr=1e-4,
        weight_decay=1e-4,
        lr_schedule="constant",
        warmup_epochs=0,
        scale_lr_with_batch=False,
        freeze_last_layer_epochs=0,
        hidden_dim=512,
        bottleneck_dim=256,
        neighbor_index="auto",
        distributed="auto",
        precision="auto",
        device="auto",
        random_state=None,
        checkpoint=None,
        verbose=0,
    ):
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.n_heads = n_heads
        self.n_neighbors = n_neighbors
        self.beta = beta
        self.loss = loss
        self.tau = tau
        self.teacher_momentum = teacher_momentum
        self.teacher_momentum_schedule = teacher_momentum_schedule
        self.prior_momentum = prior_momentum
        self.max_epochs = max_epochs
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.warmup_epochs = warmup_epochs
        self.scale_lr_with_batch = scale_lr_with_batch
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.hidden_dim = hidden_dim
        self.bottleneck_dim = bottleneck_dim
        self.neighbor_index = neighbor_index
        self.distributed = distributed
        self.precision = precision
        self.device = device
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.verbose = verbose

    def _distributed_setting(self):
        return self.distributed

    def _check_fit_params(self, X):
        if self.input_kind_ == "images" and self.backbone is None:
            raise ValueError(
                "TEMIClusterer clusters embeddings: got images but no backbone. Pass a frozen "
                "backbone=..., or put an ImageEmbedder before it in a Pipeline."
            )

    # ------------------------------------------------------------------ training
    def _embed(self, batch):
        return self.module_["backbone"](batch).flatten(1)

    def _stages(self, X, trainer, generator):
        device = trainer.device
        backbone = nn.Identity() if self.backbone is None else copy.deepcopy(self.backbone)
        backbone.requires_grad_(False)
        self.module_ = nn.ModuleDict({"backbone": backbone})
        distributed = trainer.distributed
        if self.backbone is None:
            # the validated input itself, read batch by batch: a memory-mapped matrix stays on
            # disk (never converted or copied whole)
            features = X
        else:  # frozen representation, computed once (each rank its share when distributed)
            features = self._apply_batched(X, self._embed, shard=True)
        n_samples, n_features = features.shape

        # Sec. 3.1: the k nearest neighbours of every sample by cosine similarity, itself excluded
        n_neighbors = min(self.n_neighbors, n_samples - 1)
        if n_neighbors < self.n_neighbors:
            warnings.warn(
                f"n_neighbors={self.n_neighbors} needs more than n_samples={n_samples} "
                f"samples; using {n_neighbors}.",
                UserWarning,
                stacklevel=4,
            )
        self.neighbors_ = self._mine(features, n_neighbors, distributed)

        # Sec. 3.2: H student heads; the teachers are their exponential moving average
        batch_size, local = self._batch_shares(n_samples, distributed)
        # On a CPU the heads run in cache-sized groups (one group on a GPU), each group with its
        # own tensors; the gradients are those of one batched computation. The groups are sized
        # for the global batch, also in a distributed fit: the grouping decides the order in
        # which the heads are initialised, so a distributed fit starts from the weights of a
        # single-process one.
        student = HeadGroups(
            functools.partial(
                TEMIHeads,
                in_features=n_features,
                n_clusters=self.n_clusters,
                hidden_dim=self.hidden_dim,
                bottleneck_dim=self.bottleneck_dim,
            ),
            head_group_sizes(self.n_heads, 2 * batch_size, self.hidden_dim, device),
        )
        teacher = copy.deepcopy(student).requires_grad_(False)
        self.module_.update({"student": student, "teacher": teacher})
        self.module_ = trainer.prepare(self.module_)

        steps_per_epoch = n_samples // batch_size
        total_steps = self.max_epochs * steps_per_epoch
        momentum = self.teacher_momentum
        if momentum == "auto":
            momentum = auto_teacher_momentum(total_steps)
        self.batch_size_, self.teacher_momentum_ = batch_size, float(momentum)

        base_lr = self.lr * batch_size / 256 if self.scale_lr_with_batch else self.lr
        optimizer = make_optimizer(
            "adamw", parameter_groups(student, self.weight_decay), lr=base_lr, device=device
        )
        scheduler = warmup_cosine_schedule(
            optimizer,
            total_steps,
            warmup_steps=self.warmup_epochs * steps_per_epoch,
            final_lr=1e-6 if self.lr_schedule == "cosine" else None,
        )

        def teacher_momentum(n_updates):
            if self.teacher_momentum_schedule == "cosine":  # authors' option: m → 1
                return _cosine(self.teacher_momentum_, 1.0, n_updates / total_steps)
            return self.teacher_momentum_

        ema = ExponentialMovingAverage(teacher.parameters(), student.parameters(), teacher_momentum)
        if device.type == "cpu":  # read from X (or the embeddings) batch by batch
            rows = functools.partial(batch_to_tensor, features, device=device)
        else:  # the features on the accelerator, uploaded in chunks, then gathered there
            rows = rows_to_device(features, device).__getitem__
        pairs = _PairData(
            rows=rows,
            n_samples=n_samples,
            neighbors=torch.from_numpy(self.neighbors_).to(device),
            batch_size=batch_size,
            generator=generator,
            prior=torch.full((self.n_heads, self.n_clusters), 1.0 / self.n_clusters,
                             device=device),
            assignments=AssignmentTracker(
                n_samples, n_heads=self.n_heads, n_clusters=self.n_clusters, device=device
            ),
            distributed=distributed,
            local=local,
        )
        stage = trainer.stage(
            "temi",
            functools.partial(self._temi_epoch, pairs),
            self.max_epochs,
            optimizer=optimizer,
            scheduler=scheduler,
            ema=ema,
            monitor="changed",
            state={"pairs": pairs},
        )
        yield stage
        self.n_steps_ = stage.n_steps
        self.head_groups_ = len(student.groups)
        # Sec. 3.3: the head with the lowest training loss is kept; its teacher predicts
        self.best_head_ = int(np.argmin(self.head_losses_))
        self.cluster_prior_ = pairs.prior.cpu().numpy()

    def _mine(self, features, n_neighbors, distributed):
        """The neighbour lists; in a distributed fit mined once, on rank 0, and shared."""
        def mine():
            return mine_neighbors(
                features, n_neighbors, include_self=False, index=self.neighbor_index
            )

        if distributed is None:
            return mine()
        neighbors, error = None, None
        if distributed.is_main:
            try:
                neighbors = mine()
            except Exception as exception:  # the other ranks must not wait for it
                error = exception
        distributed.check(error, "Mining the neighbours (rank 0)")
        return distributed.broadcast(neighbors, what="sharing the mined neighbours")

    def _batch_shares(self, n_samples, distributed):
        """The global batch size and this rank's slice of every batch (equal shares)."""
        batch_size = min(self.batch_size, n_samples)
        if distributed is None:
            return batch_size, slice(0, batch_size)
        world_size = distributed.world_size
        if batch_size < world_size:
            raise ValueError(
                f"batch_size={batch_size} is smaller than the {world_size} processes of this "
                "distributed fit: every process needs at least one anchor per step."
            )
        if batch_size % world_size:
            batch_size -= batch_size % world_size
            warnings.warn(
                f"batch_size={self.batch_size} is not a multiple of the {world_size} "
                f"processes; using {batch_size}, so that every process trains on an equal share.",
                UserWarning,
                stacklevel=5,
            )
        share = batch_size // world_size
        return batch_size, slice(distributed.rank * share, (distributed.rank + 1) * share)

    def _training_groups(self, pairs, student, frozen):
        """The head groups a step trains: the student's own, or, in a distributed fit, each
        in DistributedDataParallel (one gradient all-reduce per group and step, overlapped with
        the next group's computation; one group, so one all-reduce of all stacked heads, on a
        GPU). Re-wrapped when the last layer is frozen or thawed, since DDP keeps the
        parameters that need gradients when it is built."""
        if pairs.distributed is None:
            return student.groups
        if pairs.wrapped is None or pairs.wrapped_frozen != frozen:
            pairs.wrapped = [pairs.distributed.wrap(group) for group in student.groups]
            pairs.wrapped_frozen = frozen
        return pairs.wrapped

    def _temi_epoch(self, pairs, stage):
        """One epoch of anchor/neighbour pairs; returns the epoch's record.

        Every step: the teacher's probabilities of both sides of each pair (all heads), the
        cluster prior updated with them before the loss (Eq. 6), the instance weights (Eqs. 9-10,
        the mean over all heads for TEMI), then the symmetrised loss (Eq. 7) of each group of
        heads back-propagated in turn, one AdamW step and one EMA update over all heads. On a
        CPU the heads run in groups whose activations stay in the cache (``HeadGroups``); the
        gradients are those of one batched computation.
        """
        student, teacher = self.module_["student"], self.module_["teacher"]
        student.train()
        # authors' code option: the last layer gets no update during the first epochs
        frozen = stage.epoch < self.freeze_last_layer_epochs
        for group in student.groups:
            group.last_layer.requires_grad_(not frozen)
        groups = self._training_groups(pairs, student, frozen)
        distributed = pairs.distributed
        reduce_mean = None if distributed is None else functools.partial(
            distributed.all_reduce_mean, what="the cluster prior's batch statistics"
        )
        n_heads = self.n_heads
        head_loss_sum = torch.zeros(n_heads, device=stage.device)
        n_steps = 0
        for batch in iterate_batches(
            pairs.n_samples, pairs.batch_size, shuffle=True, generator=pairs.generator,
            drop_last=True,
        ):
            # every rank draws the whole batch and takes its share: the global batch is the
            # batch of a single-process fit with the same seed
            choice = torch.randint(
                pairs.neighbors.shape[1], (batch.numel(),), generator=pairs.generator
            )
            anchors = batch[pairs.local].to(stage.device)
            neighbours = pairs.neighbors[anchors, choice[pairs.local].to(stage.device)]
            inputs = torch.cat([pairs.rows(anchors), pairs.rows(neighbours)])
            with torch.no_grad():
                with stage.autocast():
                    teacher_logits = teacher(inputs)
                teacher_logits = teacher_logits.float()
                teacher_probs = torch.softmax(teacher_logits / self.tau, dim=-1)
                # Eq. (6): the prior is updated before this step's loss (with the batch mean
                # over all ranks in a distributed fit)
                pairs.prior = update_cluster_prior(
                    pairs.prior, teacher_probs, self.prior_momentum, reduce=reduce_mean
                )
                probs_x, probs_y = teacher_probs.chunk(2, dim=1)
                weights = instance_weights(probs_x, probs_y, self.loss)
                clusters = probs_x.argmax(dim=-1)
                if distributed is not None:  # (ranks, H, share) → (H, batch), in batch order
                    clusters = distributed.all_gather(
                        clusters, "sharing the step's assignments"
                    ).transpose(0, 1).reshape(n_heads, -1)
                pairs.assignments.update(batch.to(stage.device), clusters)
            log_prior = pairs.prior.log()
            teacher_x, teacher_y = teacher_logits.chunk(2, dim=1)
            stage.zero_grad()
            for group, heads in zip(groups, student.slices, strict=True):
                with stage.autocast():
                    student_x, student_y = group(inputs).chunk(2, dim=1)
                head_losses = temi_pair_loss(
                    (student_x, student_y),
                    (teacher_x[heads], teacher_y[heads]),
                    log_prior[heads],
                    beta=self.beta,
                    tau=self.tau,
                    weights=weights[heads],
                )
                # the loss is the mean over heads (and over the ranks' shares: DDP averages
                # the gradients)
                stage.backward(head_losses.sum() / n_heads)
                head_loss_sum[heads] += head_losses.detach()
            stage.step()
            n_steps += 1
        if distributed is not None:  # every rank selects the same best head
            head_loss_sum = distributed.all_reduce_mean(head_loss_sum, "the epoch's losses")
        head_losses = (head_loss_sum / max(n_steps, 1)).cpu().numpy()
        self.head_losses_ = head_losses
        return {
            "loss": float(head_losses.mean()),
            "best_head_loss": float(head_losses.min()),
            # fraction of the anchors (over all heads) whose teacher cluster changed since the
            # sample's previous visit; 1 when nothing was seen before
            "changed": pairs.assignments.fraction(),
        }

    # ------------------------------------------------------------------ inference
    def _proba_tensor(self, batch):
        logits = self.module_["teacher"](self._embed(batch), heads=[self.best_head_])[0]
        return torch.softmax(logits.float() / self.tau, dim=-1)

    def _transform_tensor(self, batch):
        return self.module_["teacher"].embed(self._embed(batch), heads=[self.best_head_])[0]
