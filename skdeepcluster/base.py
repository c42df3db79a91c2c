"""BaseDeepClusterer: the sklearn plumbing and the driver of every estimator's training stages.

A method subclass provides:

* ``_stages(X, trainer, generator)``: a generator that builds ``self.module_`` (one
  ``torch.nn.Module`` holding every learned network) and yields its training stages in the
  paper's order (:class:`~skdeepcluster.engine.Stage`, made with ``trainer.stage``); the code
  between two ``yield`` is the work between two stages (mining neighbours, a k-means
  initialisation);
* ``_proba_tensor(batch)`` and ``_transform_tensor(batch)``: inference on one float32 batch
  already on the module's device; ``_predict_tensor`` defaults to the argmax of the former.

The base validates input, seeds everything, resolves device and precision, runs each stage
through the shared :class:`~skdeepcluster.engine.Trainer` (optimiser steps, schedules, EMA,
stopping rule, ``history_``, progress), batches inference, warns about degenerate clusterings
and pickles to CPU.
"""

import copy
import os
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import TransformerTags, assert_all_finite, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._memory import keep_freed_memory
from .checkpoint import Checkpoint
from .data import batch_to_tensor, check_images, is_image_array, iterate_batches
from .engine import (
    PRECISIONS,
    Trainer,
    autocast,
    resolve_device,
    resolve_distributed,
    resolve_precision,
)

__all__ = ["BaseDeepClusterer", "resolve_device"]


class BaseDeepClusterer(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator,
    metaclass=ABCMeta,
):
    """Base class of the deep clustering estimators. Not for direct use.

    Parameters shared by every estimator: ``n_clusters``, ``backbone``, ``max_epochs``,
    ``batch_size``, ``lr``, ``weight_decay``, ``tol``, ``n_iter_no_change``, ``precision``,
    ``device``, ``random_state``, ``checkpoint``, ``verbose``.

    A clusterer and a transformer, like :class:`~sklearn.cluster.KMeans`: ``transform`` gives
    the learned representation, named ``<classname>0``, ``<classname>1``, ... by
    ``get_feature_names_out``, and ``set_output(transform="pandas")`` makes ``transform`` and
    ``fit_transform`` return DataFrames (standalone or in a Pipeline).
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "backbone": [torch.nn.Module, None],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "tol": [Interval(Real, 0, 1, closed="both"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "precision": [StrOptions(set(PRECISIONS))],
        "device": [StrOptions({"auto", "cpu", "cuda"}), str, torch.device],
        "random_state": ["random_state"],
        "checkpoint": [str, os.PathLike, None],
        "verbose": ["verbose"],
    }

    #: Share of the samples above which the largest cluster of a fitted clustering (with at
    #: least 2 clusters) is called a collapse (see :meth:`_warn_if_degenerate`).
    _max_cluster_share = 0.9

    #: The parameter (e.g. ``"n_init"``) that asks for several complete fits (:meth:`_fit_several`);
    #: None: one fit. An estimator that names one defines ``_fit_loss()``, the label-free loss
    #: of a fitted copy by which the lowest is kept.
    _n_fits_parameter = None

    #: Whether a completed fit leaves its ``checkpoint`` file (set on the fits of
    #: :meth:`_fit_several`, which removes their files when all are done).
    _keep_checkpoint = False

    #: What the collapse warning advises.
    _collapse_advice = "Try more epochs, a larger batch or fewer clusters."

    #: Feature dtypes taken as they are (anything else is converted to the first): an
    #: estimator that reads its features batch by batch also takes float16, so that a
    #: memory-mapped float16 matrix is never converted whole.
    _feature_dtypes = (np.float32, np.float64)

    # ------------------------------------------------------------------ sklearn plumbing
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # transform returns float32 whatever the input dtype.
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])
        tags.input_tags.allow_nan = False
        tags.input_tags.three_d_array = True  # (n, H, W) images; 4-d image arrays too
        return tags

    @property
    def _n_features_out(self):
        """Width of ``transform``'s output (for ``get_feature_names_out``); set by ``fit``."""
        try:
            return self._transform_width_
        except AttributeError:  # unfitted: check_is_fitted reads this as "not fitted"
            raise AttributeError("_n_features_out") from None

    def _validate_input(self, X, *, reset):
        """Validate X; return a float 2-d array (features) or an (n, C, H, W) view (images)."""
        if is_image_array(X):
            images = check_images(X)
            if reset:
                self.input_kind_ = "images"
                self.input_shape_ = tuple(int(s) for s in images.shape[1:])
                self.n_features_in_ = int(np.prod(self.input_shape_))
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            else:
                self._check_same_kind("images")
                if tuple(images.shape[1:]) != self.input_shape_:
                    raise ValueError(
                        f"X has images of shape (C, H, W)={tuple(images.shape[1:])}, but "
                        f"{type(self).__name__} was fitted on {self.input_shape_}."
                    )
            return images
        # C order: whole-array reductions (a feature's std, PCA) then sum in one order whatever
        # the caller's layout, so a Fortran array or a DataFrame gives the labels of its
        # C-ordered values; a C-ordered array is not copied (and never written to).
        features = validate_data(
            self, X, reset=reset, dtype=list(self._feature_dtypes), order="C",
            ensure_all_finite=False,
        )
        _check_finite_in_chunks(features, type(self).__name__)
        if reset:
            self.input_kind_ = "features"
            self.input_shape_ = (features.shape[1],)
        else:
            self._check_same_kind("features")
        return features

    def _check_same_kind(self, kind):
        if kind != self.input_kind_:
            raise ValueError(
                f"X holds {kind}, but {type(self).__name__} was fitted on {self.input_kind_}."
            )

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the clusterer on X. Labels ``y`` are ignored (accepted for Pipeline/CV use).

        A fit completes or leaves the estimator unfitted: when it raises (Ctrl-C included),
        every fitted attribute is removed, those of an earlier fit too. An estimator that
        offers several complete fits (``SCANClusterer(n_init=...)``; DeepCluster's and ADC's
        ``n_init`` are k-means restarts within one fit) keeps the one with the lowest
        label-free loss.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or image array
            Features, or images of shape (n, H, W), (n, H, W, C) or (n, C, H, W).
        y : Ignored

        Returns
        -------
        self : object
            The fitted estimator.
        """
        if self._n_fits_parameter and getattr(self, self._n_fits_parameter) > 1:
            return self._fit_several(X)
        # an earlier fit's attributes go first: a checkpoint saves those that this fit sets
        self._discard_fit_state(set(vars(self)))
        attributes_before = set(vars(self))
        try:
            X, trainer, seed = self._begin_fit(X)
            checkpoint = self._open_checkpoint(X, trainer, seed)
            if checkpoint is not None:
                seed = checkpoint.seed  # the interrupted fit's, with random_state=None
            device = trainer.device
            fork_devices = [device.index or 0] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=fork_devices), keep_freed_memory():
                torch.manual_seed(seed)
                np_state = np.random.get_state()
                np.random.seed(seed)  # faiss' Python helpers draw from numpy's global state
                try:
                    generator = torch.Generator().manual_seed(seed)
                    if checkpoint is not None:
                        checkpoint.generator = generator
                    for stage in self._stages(X, trainer, generator):
                        trainer.run(stage)
                finally:
                    np.random.set_state(np_state)
            self.n_iter_ = int(sum(trainer.n_epochs.values()))
            # on the training device; in a distributed fit each rank predicts its share
            self.labels_ = self._apply_batched(X, self._predict_tensor, shard=True).astype(
                np.int64
            )
            self._transform_width_ = int(
                self._apply_batched(X[:1], self._transform_tensor, batch_size=1).shape[1]
            )
            del self._trainer
            self._warn_if_degenerate(self.labels_)
            if checkpoint is not None and not self._keep_checkpoint:
                checkpoint.remove()
        except BaseException:
            # Ctrl-C (KeyboardInterrupt) or any error: no half-fitted estimator is left behind.
            self._discard_fit_state(attributes_before)
            raise
        return self

    def _open_checkpoint(self, X, trainer, seed):
        """The fit's :class:`~skdeepcluster.checkpoint.Checkpoint` (None without the
        ``checkpoint`` parameter), read when its file exists, and given to the trainer.

        An int ``random_state`` is part of what the file must match; without one (None, a
        ``RandomState``) the fit resumes with the seed the interrupted fit drew."""
        if self.checkpoint is None:
            return None
        fixed = isinstance(self.random_state, Integral)
        fingerprint = {
            "fit": _fit_fingerprint(self, X),
            "random_state": int(self.random_state) if fixed else None,
            "precision": self.precision_,
            "device": trainer.device.type,
        }
        checkpoint = Checkpoint(self.checkpoint, fingerprint, self, seed, trainer.device)
        if checkpoint.load() and self.verbose:
            print(f"[{type(self).__name__}] resuming from {checkpoint.path}: "
                  f"{checkpoint.describe()}.", flush=True)
        trainer.checkpoint = checkpoint
        return checkpoint

    def _fit_several(self, X):
        """As many complete fits as the ``_n_fits_parameter`` says, each from its own seed drawn
        from ``random_state``; the one with the lowest ``_fit_loss()`` is kept, like
        ``KMeans(n_init=...)``. Sets ``init_losses_`` (every fit's loss, in order) and
        ``best_init_``; only the kept fit's warnings reach the caller."""
        attributes_before = set(vars(self))
        try:
            seeds = check_random_state(self.random_state).randint(
                np.iinfo(np.int32).max, size=getattr(self, self._n_fits_parameter)
            )
            kept, kept_warnings, losses = None, [], []
            paths = [None if self.checkpoint is None else f"{os.fspath(self.checkpoint)}.{i}"
                     for i in range(seeds.size)]
            # without an int random_state the seeds differ at every call: a fit that resumes
            # from its checkpoint then takes its seed from the file (random_state=None)
            redrawn = self.checkpoint is not None and not isinstance(self.random_state, Integral)
            for index, seed in enumerate(seeds):
                single = {self._n_fits_parameter: 1,
                          "random_state": None if redrawn else int(seed),
                          "checkpoint": paths[index]}
                run = clone(self).set_params(**single)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    # each fit keeps its checkpoint until all are done: an interrupted
                    # n_init fit resumes without training the finished fits again
                    run._keep_checkpoint = True
                    run.fit(X)
                losses.append(run._fit_loss())
                if self.verbose:
                    print(f"[{type(self).__name__}] fit {index + 1}/{seeds.size}: "
                          f"loss {losses[-1]:.4f}", flush=True)
                if kept is None or losses[-1] < min(losses[:-1]):
                    kept, kept_warnings = run, caught
            parameters = set(self.get_params(deep=False))
            vars(self).update({k: v for k, v in vars(kept).items() if k not in parameters})
            self.init_losses_ = np.array(losses)
            self.best_init_ = int(np.argmin(losses))
            for path in paths:
                if path is not None and os.path.exists(path):
                    os.remove(path)
        except BaseException:
            self._discard_fit_state(attributes_before)
            raise
        for caught in kept_warnings:
            warnings.warn(caught.message, caught.category, stacklevel=3)
        return self

    def _discard_fit_state(self, attributes_before):
        """Leave the estimator unfitted after a fit that raised: remove every fitted attribute
        (trailing underscore, those of an earlier fit included) and whatever this fit added;
        the parameters and what was set before this fit without a trailing underscore stay."""
        for name in list(vars(self)):
            fitted = name.endswith("_") and not name.startswith("__")
            if fitted or name not in attributes_before:
                delattr(self, name)

    def _begin_fit(self, X):
        """Everything before training: validated X, the trainer, the seed.

        Checks the input, the parameters against it, the device and the precision (so a bad
        value fails before any work), and starts ``history_``. A test can run one stage's epoch
        alone: ``X, trainer, seed = est._begin_fit(X)``, then
        ``stage = next(est._stages(X, trainer, generator))`` and ``stage.run_epoch(stage)``.
        """
        device = resolve_device(self.device)
        distributed, device = resolve_distributed(self._distributed_setting(), device)
        try:
            X = self._validate_input(X, reset=True)
            n_samples = X.shape[0]
            if self.n_clusters > n_samples:
                raise ValueError(
                    f"n_clusters={self.n_clusters} is larger than n_samples={n_samples}: "
                    "there must be at least one sample per cluster."
                )
            self._check_fit_params(X)
            if self.checkpoint is not None and distributed is not None:
                raise ValueError(
                    "checkpoint is not supported in a distributed fit; set checkpoint=None."
                )
            dtype = resolve_precision(self.precision, device, warn=True)
        except Exception as error:
            if distributed is None:
                raise
            distributed.check(error, "Checking the input and the parameters")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        if distributed is not None:
            distributed.check(None, "Checking the input and the parameters")
            distributed.agree(_fit_fingerprint(self, X), "the data and the parameters")
            seed = distributed.broadcast_object(seed, what="sharing the random seed")
        self.precision_ = str(dtype).removeprefix("torch.")
        self.world_size_ = 1 if distributed is None else distributed.world_size
        self.history_ = []
        trainer = Trainer(
            device,
            dtype,
            history=self.history_,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            verbose=self.verbose,
            name=type(self).__name__,
            distributed=distributed,
        )
        self._trainer = trainer  # inference during fit uses the training device and precision
        return X, trainer, seed

    def _check_fit_params(self, X):
        """Method-specific checks of parameters against the data, before any training."""

    def _distributed_setting(self):
        """The ``distributed`` parameter of an estimator that supports a distributed fit;
        False (one process) for the others."""
        return False

    @abstractmethod
    def _stages(self, X, trainer, generator):
        """Build ``self.module_`` and yield the training stages (see the module docstring)."""

    def _warn_if_degenerate(self, labels):
        """ConvergenceWarning when a clustering into ``n_clusters`` >= 2 clusters has collapsed:
        a cluster is empty, or the largest one holds more than ``_max_cluster_share`` (90 %) of
        the samples."""
        if self.n_clusters < 2 or labels.size == 0:
            return
        counts = np.bincount(labels, minlength=self.n_clusters)
        n_used = int(np.count_nonzero(counts))
        largest_share = counts.max() / labels.size
        problems = []
        if n_used < self.n_clusters:
            problems.append(f"uses only {n_used} of the {self.n_clusters} clusters asked for")
        if largest_share > self._max_cluster_share:
            problems.append(
                f"puts {largest_share:.0%} of the {labels.size} samples into one cluster"
            )
        if problems:
            warnings.warn(
                f"{type(self).__name__} {' and '.join(problems)}: the clustering has (partly) "
                f"collapsed. {self._collapse_advice}",
                ConvergenceWarning,
                stacklevel=4,
            )

    # ------------------------------------------------------------------ inference
    def _inference_setting(self):
        """(device, autocast dtype): the trainer's during fit, else from the parameters."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            return trainer.device, trainer.dtype
        device = resolve_device(self.device)
        return device, resolve_precision(self.precision, device)

    def _inference_batch_size(self):
        """Rows per batch of inference: the training batch size, at least 256."""
        return max(self.batch_size, 256)

    def _apply_batched(self, X, function, batch_size=None, *, module=None, shard=False):
        """``function`` on every batch of the validated array X; concatenated numpy result.

        ``module`` (default ``module_``) is put on the device in eval mode; the batches run
        without gradients, under the precision's autocast; floating outputs come back as
        float32. ``shard=True`` during a distributed fit: each rank computes its share of the
        rows, and every rank gets all of them, in order.
        """
        device, dtype = self._inference_setting()
        trainer = getattr(self, "_trainer", None)
        distributed = trainer.distributed if shard and trainer is not None else None
        rows = X if distributed is None else X[distributed.shard(X.shape[0])]
        module = self.module_ if module is None else module
        module.to(device).eval()
        batch_size = batch_size or self._inference_batch_size()
        outputs = []
        with torch.no_grad(), autocast(device, dtype), keep_freed_memory():
            for indices in iterate_batches(rows.shape[0], batch_size):
                output = function(batch_to_tensor(rows, indices, device))
                if output.is_floating_point():
                    output = output.float()
                outputs.append(output.cpu())
        result = torch.cat(outputs).numpy()
        if distributed is not None:
            result = distributed.gather_rows(result, "gathering the ranks' predictions")
        return result

    @abstractmethod
    def _proba_tensor(self, batch):
        """Soft assignments (B, n_clusters) of one float32 batch on the module's device."""

    @abstractmethod
    def _transform_tensor(self, batch):
        """Learned representation (B, d) of one float32 batch on the module's device."""

    def _predict_tensor(self, batch):
        return self._proba_tensor(batch).argmax(dim=1)

    def predict(self, X):
        """Cluster index of each sample of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or image array

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        return self._apply_batched(X, self._predict_tensor).astype(np.int64)

    def predict_proba(self, X):
        """Soft cluster assignment of each sample; rows sum to 1.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or image array

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters), float32
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        return self._apply_batched(X, self._proba_tensor)

    def transform(self, X):
        """The learned representation of X (see the estimator's documentation).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or image array

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components), float32
        """
        check_is_fitted(self)
        return self._transform(X)

    def _transform(self, X):
        # unwrapped by set_output, so that fit_transform converts its output once
        X = self._validate_input(X, reset=False)
        return self._apply_batched(X, self._transform_tensor)

    def fit_transform(self, X, y=None):
        """Fit on X and return ``transform(X)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or image array
        y : Ignored

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components), float32
            A DataFrame after ``set_output(transform="pandas")``.
        """
        return self.fit(X)._transform(X)

    def score(self, X, y=None):
        """Label-free quality of the clustering of X; higher is better.

        The empirical mutual information between samples and clusters under ``predict_proba``:
        ``H(mean_x p(c|x)) - mean_x H(p(c|x))``, in nats. It is high when the predictions are
        confident (low conditional entropy) and the clusters evenly used (high marginal entropy),
        the two criteria TEMI's authors use to choose ``beta`` without labels. ``y`` is ignored,
        so ``GridSearchCV`` can select parameters without labels: compare fits with the same
        ``n_clusters`` only (the score is at most ``log n_clusters``, so it favours more
        clusters). The class's Notes say which parameters it may choose.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or image array
        y : Ignored

        Returns
        -------
        score : float
        """
        proba = self.predict_proba(X).astype(np.float64)
        marginal = proba.mean(axis=0)
        marginal_entropy = -np.sum(marginal * np.log(np.clip(marginal, 1e-12, None)))
        conditional_entropy = -np.sum(proba * np.log(np.clip(proba, 1e-12, None)), axis=1).mean()
        return float(marginal_entropy - conditional_entropy)

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        # Pickles always hold CPU tensors, so a model trained on CUDA loads anywhere: the
        # fitted modules and the parameters (a user backbone) are pickled as CPU copies; the
        # live objects stay where they are (one memo keeps shared modules shared).
        state = dict(super().__getstate__())
        memo = {}
        return {name: _cpu_copy(value, memo) for name, value in state.items()}


def _fit_fingerprint(estimator, X):
    """What every rank of a distributed fit must share: the shape and type of X, a checksum of
    about 1 000 of its rows (read strided, cheap for a memory-mapped array) and the parameters
    (``random_state``, ``verbose``, ``checkpoint`` and the backbone's object identity left
    out). A checkpoint is refused unless its fit had the same fingerprint."""
    step = max(1, X.shape[0] // 1000)
    sample = np.asarray(X[::step], dtype=np.float64).reshape(-1)
    # weighted by position, so that the same rows in another order differ too
    checksum = float(sample @ np.linspace(1.0, 2.0, sample.size))
    params = {
        name: repr(value)
        for name, value in estimator.get_params(deep=False).items()
        if name not in ("random_state", "verbose", "checkpoint")
    }
    return (tuple(X.shape), X.dtype.str, round(checksum, 6), params)


#: Rows checked for NaN/inf at a time: a memory-mapped matrix is read in pieces of bounded size.
_FINITE_CHECK_ROWS = 8192


def _check_finite_in_chunks(features, estimator_name):
    """sklearn's NaN/inf check (its messages), one block of rows at a time: O(block) memory
    whatever the size of X, so a memory-mapped matrix is never read into memory whole."""
    for start in range(0, features.shape[0], _FINITE_CHECK_ROWS):
        block = features[start : start + _FINITE_CHECK_ROWS]
        if block.dtype == np.float16:  # sklearn's fast checks know float32 and float64
            block = block.astype(np.float32)
        assert_all_finite(block, input_name="X", estimator_name=estimator_name)


def _cpu_copy(value, memo):
    """``value`` with every torch module and tensor in it (through dicts, lists and tuples)
    replaced by a CPU copy; values without tensors are returned as they are."""
    if isinstance(value, torch.nn.Module):
        return copy.deepcopy(value, memo).cpu()
    if isinstance(value, torch.Tensor):
        if value.device.type == "cpu":
            return value
        moved = value.detach().cpu()
        if isinstance(value, torch.nn.Parameter):
            return torch.nn.Parameter(moved, requires_grad=value.requires_grad)
        return moved.requires_grad_(value.requires_grad)
    if type(value) is dict:
        return {key: _cpu_copy(item, memo) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_cpu_copy(item, memo) for item in value)
    return value
