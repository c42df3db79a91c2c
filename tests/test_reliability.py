"""Failure behaviour and reproducibility of every estimator (issue 14): interrupted fits,
collapse warnings, bad devices, CPU-only pickles, memory layout, silence at verbose=0."""

import io
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.validation import check_is_fitted
from torch import nn

from skdeepcluster import (
    ADCClusterer,
    DeepClusterer,
    MMDCClusterer,
    SCANClusterer,
    TEMIClusterer,
    engine,
)
from skdeepcluster.kmeans import MIN_POINTS_PER_CENTROID, warn_if_few_points

#: Small configurations on feature input (MLP backbones), one or two epochs per stage; every
#: estimator trains at least two epochs in all.
ESTIMATORS = [
    TEMIClusterer(n_clusters=3, n_heads=2, n_neighbors=5, hidden_dim=16, bottleneck_dim=8,
                  batch_size=32, max_epochs=2),
    SCANClusterer(n_clusters=3, n_neighbors=5, max_epochs=2, self_labeling_epochs=2,
                  self_labeling_batch_size=32, batch_size=32),
    DeepClusterer(n_clusters=3, n_components=4, max_epochs=2, batch_size=32),
    MMDCClusterer(n_clusters=3, max_epochs=2, batch_size=32),
    ADCClusterer(n_clusters=3, warmup_epochs=1, max_epochs=2, batch_size=32),
]

by_name = pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)


@pytest.fixture(scope="module")
def digits():
    X, _ = load_digits(return_X_y=True)
    return (X[:120] / 16).astype(np.float32)


def _fit_quietly(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny runs: collapse and skipped batches expected
        return estimator.fit(X)


def _fitted_attributes(estimator):
    return sorted(name for name in vars(estimator)
                  if name.endswith("_") and not name.startswith("__"))


# --------------------------------------------------------------------------- 1. interrupted fit
def _interrupt_at_epoch(monkeypatch, n_epoch):
    """Make the ``n_epoch``-th epoch of a fit (over all its stages) raise KeyboardInterrupt,
    as Ctrl-C would."""
    run = engine.Trainer.run
    count = [0]

    def run_until_interrupted(trainer, stage):
        epoch = stage.run_epoch

        def counted(stage):
            count[0] += 1
            if count[0] == n_epoch:
                raise KeyboardInterrupt
            return epoch(stage)

        stage.run_epoch = counted
        return run(trainer, stage)

    monkeypatch.setattr(engine.Trainer, "run", run_until_interrupted)
    return count


@by_name
def test_interrupted_fit_leaves_the_estimator_unfitted(estimator, digits, monkeypatch):
    model = clone(estimator).set_params(random_state=0)
    count = _interrupt_at_epoch(monkeypatch, 2)  # after one finished epoch
    with pytest.raises(KeyboardInterrupt):
        _fit_quietly(model, digits)
    assert count[0] == 2
    with pytest.raises(NotFittedError):
        check_is_fitted(model)
    assert _fitted_attributes(model) == []
    assert not hasattr(model, "_trainer")
    assert model.get_params() == clone(estimator).set_params(random_state=0).get_params()


@by_name
def test_interrupted_refit_also_leaves_it_unfitted_and_a_new_fit_works(estimator, digits,
                                                                       monkeypatch):
    model = _fit_quietly(clone(estimator).set_params(random_state=0), digits)
    reference = model.labels_.copy()
    with monkeypatch.context() as patch:
        _interrupt_at_epoch(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            _fit_quietly(model, digits)
    with pytest.raises(NotFittedError):
        model.predict(digits)
    assert _fitted_attributes(model) == []
    np.testing.assert_array_equal(_fit_quietly(model, digits).labels_, reference)
