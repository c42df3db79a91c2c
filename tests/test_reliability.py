"""Failure behaviour and reproducibility of every estimator (issue 14): interrupted fits,
collapse warnings, bad devices, CPU-only pickles, memory layout, silence at verbose=0."""

import io
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import FEATURE_ESTIMATORS, count_epochs
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
    engine,
)
from skdeepcluster.kmeans import MIN_POINTS_PER_CENTROID, warn_if_few_points

ESTIMATORS = FEATURE_ESTIMATORS

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
    return count_epochs(monkeypatch, interrupt_at=n_epoch)


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


# --------------------------------------------------------------------------- 2. collapse
@pytest.mark.parametrize("n_clusters", [2, 3])
def test_collapse_warning_whatever_the_number_of_clusters(n_clusters):
    model = MMDCClusterer(n_clusters=n_clusters)
    balanced = np.arange(100) % n_clusters
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model._warn_if_degenerate(balanced)
        others = 1 + np.arange(10) % (n_clusters - 1)
        model._warn_if_degenerate(np.r_[np.zeros(90), others].astype(int))  # 90 %: not more
    empty = balanced.copy()
    empty[empty == n_clusters - 1] = 0
    with pytest.warns(ConvergenceWarning,
                      match=f"uses only {n_clusters - 1} of the {n_clusters} clusters"):
        model._warn_if_degenerate(empty)
    dominated = np.r_[np.zeros(91), 1 + np.arange(9) % (n_clusters - 1)].astype(int)
    with pytest.warns(ConvergenceWarning, match="puts 91% of the 100 samples into one cluster") \
            as record:
        model._warn_if_degenerate(dominated)  # every cluster used, but 91 % in one
    assert "uses only" not in str(record[0].message)
    everything = np.zeros(100, dtype=int)
    with pytest.warns(ConvergenceWarning, match="uses only 1 of .* and puts 100%"):
        model._warn_if_degenerate(everything)


def test_one_cluster_asked_for_is_no_collapse():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MMDCClusterer(n_clusters=1)._warn_if_degenerate(np.zeros(10, dtype=int))


@pytest.mark.parametrize("n_clusters", [2, 3])
def test_a_fit_that_collapses_warns(digits, n_clusters):
    # 190 copies of one digit and 10 others: the copies get one label, > 90 % of the samples
    X = np.concatenate([np.repeat(digits[:1], 190, axis=0), digits[1:11]])
    model = MMDCClusterer(n_clusters=n_clusters, max_epochs=2, batch_size=32, random_state=0)
    with pytest.warns(ConvergenceWarning, match="into one cluster") as record:
        model.fit(X)
    collapse = [w for w in record if "collapsed" in str(w.message)]
    assert len(collapse) == 1 and collapse[0].filename == __file__  # points at the caller
    assert np.bincount(model.labels_).max() >= 190


# --------------------------------------------------------------------------- 3. bad device
@by_name
def test_bad_device_string_is_a_value_error_before_any_work(estimator, digits, monkeypatch):
    def no_training(trainer, stage):
        raise AssertionError("training started")

    monkeypatch.setattr(engine.Trainer, "run", no_training)
    model = clone(estimator).set_params(device="gpu7000")
    with pytest.raises(ValueError, match=r"device='gpu7000'.*'auto', 'cpu', 'cuda'"):
        model.fit(digits)
    assert not hasattr(model, "module_")


# --------------------------------------------------------------------------- 4. pickles on CPU
class _DevicePickler(pickle.Pickler):
    """Pickles normally and records the device of every tensor and storage it meets."""

    def __init__(self, file):
        super().__init__(file)
        self.devices = []

    def persistent_id(self, obj):  # None for every object: pickled as usual
        if isinstance(obj, (torch.Tensor, torch.UntypedStorage)):
            self.devices.append(obj.device.type)
        elif isinstance(obj, torch.TypedStorage):
            self.devices.append(obj._untyped_storage.device.type)


def _pretend_meta_is_a_device_with_data(monkeypatch):
    """The meta device stands for a GPU here: its tensors get a CPU copy (of zeros) instead of
    torch's "cannot copy out of meta tensor"."""
    real_cpu = torch.Tensor.cpu

    def cpu(self, *args, **kwargs):
        if self.is_meta:
            return torch.zeros(self.shape, dtype=self.dtype)
        return real_cpu(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", cpu)


@by_name
def test_pickle_holds_only_cpu_tensors_user_backbone_included(estimator, digits, monkeypatch):
    backbone = nn.Sequential(nn.Linear(64, 16), nn.ReLU())
    backbone.out_features = 16
    model = _fit_quietly(clone(estimator).set_params(backbone=backbone, random_state=0), digits)
    assert model.backbone is backbone
    # as if fitted on a GPU: the user's backbone and the fitted modules on another device
    backbone.to("meta")
    model.module_.to("meta")
    _pretend_meta_is_a_device_with_data(monkeypatch)
    buffer = io.BytesIO()
    pickler = _DevicePickler(buffer)
    pickler.dump(model)
    assert pickler.devices and set(pickler.devices) == {"cpu"}
    # the live objects are left where they are
    assert model.backbone is backbone and backbone[0].weight.is_meta
    assert all(p.is_meta for p in model.module_.parameters())
    loaded = pickle.loads(buffer.getvalue())
    assert loaded.backbone[0].weight.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in loaded.module_.parameters())


def test_pickle_keeps_shared_modules_shared(digits):
    model = _fit_quietly(clone(ESTIMATORS[0]).set_params(random_state=0), digits)
    model.extra_ = {"same": model.module_, "list": [model.module_, torch.ones(2)]}
    state = model.__getstate__()
    assert state["extra_"]["same"] is state["module_"] is state["extra_"]["list"][0]
    assert state["module_"] is not model.module_  # a copy, not the live module


# --------------------------------------------------------------------------- 5. memory layout
@by_name
def test_fortran_order_gives_the_same_model(estimator, digits):
    fortran = np.asfortranarray(digits)
    before = fortran.copy(order="F")
    c_model = _fit_quietly(clone(estimator).set_params(random_state=0), digits)
    f_model = _fit_quietly(clone(estimator).set_params(random_state=0), fortran)
    np.testing.assert_array_equal(f_model.labels_, c_model.labels_)
    np.testing.assert_array_equal(f_model.transform(digits), c_model.transform(digits))
    np.testing.assert_array_equal(fortran, before)  # the caller's array is untouched
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous


@by_name
def test_dataframe_gives_the_same_model_as_its_array(estimator, digits):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(digits, columns=[f"pixel_{i}" for i in range(digits.shape[1])])
    array_model = _fit_quietly(clone(estimator).set_params(random_state=0), digits)
    frame_model = _fit_quietly(clone(estimator).set_params(random_state=0), frame)
    np.testing.assert_array_equal(frame_model.labels_, array_model.labels_)
    np.testing.assert_array_equal(frame_model.transform(frame), array_model.transform(digits))


# --------------------------------------------------------------------------- 7. silence
@by_name
def test_verbose_zero_prints_nothing_and_warns_once_about_small_k_means(estimator, digits,
                                                                         capfd):
    X = digits[:60]  # 60 points into 3 clusters: faiss asks for at least 117
    model = clone(estimator).set_params(random_state=0, verbose=0)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""  # C-level output included
    small = [w for w in caught if "points per cluster" in str(w.message)]
    uses_faiss_k_means = isinstance(model, (ADCClusterer, DeepClusterer))
    assert len(small) == (1 if uses_faiss_k_means else 0)


def test_small_k_means_warning_threshold():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_few_points(MIN_POINTS_PER_CENTROID * 3, 3, "X")
    with pytest.warns(UserWarning, match="116 points into 3 clusters.*at least 117"):
        warn_if_few_points(MIN_POINTS_PER_CENTROID * 3 - 1, 3, "X")


def test_skipped_self_labelling_epoch_has_no_nan_loss(digits, capsys):
    model = SCANClusterer(n_clusters=3, n_neighbors=5, max_epochs=1, self_labeling_epochs=2,
                          self_labeling_batch_size=32, batch_size=32,
                          confidence_threshold=0.999999, random_state=0, verbose=2)
    with pytest.warns(ConvergenceWarning, match="skipped"):
        model.fit(digits)
    out = capsys.readouterr().out
    assert "nan" not in out.lower()
    assert out.count("no confident samples") == 2
    selflabel = [entry for entry in model.history_ if entry["stage"] == "selflabel"]
    assert [entry["loss"] for entry in selflabel] == [None, None]
    assert all(entry["skipped_batches"] == 3 for entry in selflabel)
    for entry in model.history_:
        assert not any(isinstance(v, float) and math.isnan(v) for v in entry.values())
