"""Checkpoints (``checkpoint=PATH``): an interrupted fit resumes and ends as the uninterrupted
fit does, on every estimator and at every kind of point (within the first stage, at a stage's
end, within a later stage, between DeepCluster's reassignments, during the second of
``n_init`` fits, with a stopping rule half-way); a file of another fit is refused before any
training; a completed fit removes its file."""

import glob
import os
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import ESTIMATORS, count_epochs
from sklearn.base import clone
from sklearn.datasets import load_digits

from skdeepcluster import (
    ADCClusterer,
    DeepClusterer,
    SCANClusterer,
    TEMIClusterer,
    checkpoint,
    engine,
)
from skdeepcluster.checkpoint import decode_state, encode_state


@pytest.fixture(scope="module")
def digits3():
    X, y = load_digits(return_X_y=True)
    X = X[y < 3][:240]
    return {"images": X.reshape(-1, 8, 8).astype(np.uint8),
            "features": (X / 16).astype(np.float32)}


@pytest.fixture(autouse=True)
def every_epoch(monkeypatch):
    """Write the running stage after every epoch (the default is at most once a minute)."""
    monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL", 0.0)


def _quiet_fit(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny runs: collapse and skipped batches expected
        return estimator.fit(X)


def _interrupted_fit(estimator, X, monkeypatch, after):
    """Fit, interrupted by Ctrl-C when epoch ``after + 1`` starts."""
    with monkeypatch.context() as patch:
        count_epochs(patch, interrupt_at=after + 1)
        with pytest.raises(KeyboardInterrupt):
            _quiet_fit(estimator, X)


def _records(model):
    """``history_`` without its timings."""
    return [{k: v for k, v in entry.items() if "seconds" not in k} for entry in model.history_]


def _assert_same_fit(model, reference, X):
    np.testing.assert_array_equal(model.labels_, reference.labels_)
    np.testing.assert_array_equal(model.transform(X), reference.transform(X))
    np.testing.assert_array_equal(model.predict_proba(X), reference.predict_proba(X))
    assert model.n_iter_ == reference.n_iter_
    # NaN-safe comparison of the records (DeepCluster's first NMI is NaN)
    assert repr(_records(model)) == repr(_records(reference))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_a_resumed_fit_ends_as_the_uninterrupted_fit(name, digits3, monkeypatch, tmp_path):
    cls, params, kind = ESTIMATORS[name]
    X = digits3[kind]
    reference = _quiet_fit(cls(**params), X)
    path = tmp_path / "fit.ckpt"
    # after the first epoch (within the first stage), and before the last epoch
    for after in sorted({1, reference.n_iter_ - 1}):
        model = cls(**params, checkpoint=path)
        _interrupted_fit(model, X, monkeypatch, after)
        assert path.exists()
        _assert_same_fit(_quiet_fit(model, X), reference, X)
        assert not path.exists()  # a completed fit removes its file


@pytest.mark.parametrize("estimator, kind", [
    # between two reassignments: the classifier and its optimiser are restored
    (DeepClusterer(n_clusters=3, max_epochs=5, reassign=2, batch_size=16, n_components=2),
     "images"),
    # the stopping rule's count of epochs below tol is restored (it stops after 2 + 4 epochs)
    (ADCClusterer(n_clusters=3, warmup_epochs=2, max_epochs=20, tol=1.0, n_iter_no_change=3,
                  batch_size=32, embedding_dim=8, n_augmentations=2), "images"),
    # the SCAN step's selection of its best epoch, self-labelling's moving average
    (SCANClusterer(n_clusters=3, n_neighbors=5, max_epochs=3, self_labeling_epochs=2,
                   self_labeling_batch_size=32, batch_size=32), "features"),
], ids=["deepcluster-reassign", "adc-stopping-rule", "scan-features"])
def test_resumed_at_every_epoch(estimator, kind, digits3, monkeypatch, tmp_path):
    X = digits3[kind]
    reference = _quiet_fit(clone(estimator).set_params(random_state=0), X)
    if isinstance(estimator, ADCClusterer):
        assert reference.n_iter_ == 6  # the rule fired, well before the cap
    path = tmp_path / "fit.ckpt"
    for after in range(1, reference.n_iter_):
        model = clone(estimator).set_params(random_state=0, checkpoint=path)
        _interrupted_fit(model, X, monkeypatch, after)
        _assert_same_fit(_quiet_fit(model, X), reference, X)


def test_n_init_resumes_without_training_the_finished_fits_again(digits3, monkeypatch,
                                                                tmp_path):
    cls, params, kind = ESTIMATORS["SCANClusterer"]
    X = digits3[kind]
    reference = _quiet_fit(cls(**params, n_init=2), X)
    path = tmp_path / "fit.ckpt"
    model = cls(**params, n_init=2, checkpoint=path)
    per_fit = reference.n_iter_
    _interrupted_fit(model, X, monkeypatch, per_fit + 1)  # in the second fit
    assert sorted(os.listdir(tmp_path)) == ["fit.ckpt.0", "fit.ckpt.1"]

    epochs = count_epochs(monkeypatch)
    _quiet_fit(model, X)
    assert epochs[0] == per_fit - 1  # only the rest of the second fit trained
    _assert_same_fit(model, reference, X)
    np.testing.assert_array_equal(model.init_losses_, reference.init_losses_)
    assert glob.glob(str(tmp_path / "*")) == []


def test_n_init_without_an_int_random_state_resumes_too(digits3, monkeypatch, tmp_path):
    cls, params, kind = ESTIMATORS["SCANClusterer"]
    X = digits3[kind]
    params = dict(params, random_state=None, n_init=2)
    path = tmp_path / "fit.ckpt"
    model = cls(**params, checkpoint=path)
    _interrupted_fit(model, X, monkeypatch, 6)  # in the second fit (4 epochs each)
    epochs = count_epochs(monkeypatch)
    _quiet_fit(model, X)
    assert epochs[0] == 2 and model.init_losses_.shape == (2,)
    assert glob.glob(str(tmp_path / "*")) == []


def test_only_finished_stages_saved(digits3, monkeypatch, tmp_path):
    """With no write within a stage, a fit resumes from the end of the last finished stage."""
    monkeypatch.setattr(checkpoint, "CHECKPOINT_INTERVAL", float("inf"))
    cls, params, kind = ESTIMATORS["ADCClusterer"]  # 3 warm-up + 2 clustering epochs
    X = digits3[kind]
    reference = _quiet_fit(cls(**params), X)
    path = tmp_path / "fit.ckpt"
    model = cls(**params, checkpoint=path)
    _interrupted_fit(model, X, monkeypatch, 4)  # one clustering epoch done, not saved
    saved = torch.load(path, weights_only=True)
    assert [stage["name"] for stage in saved["finished"]] == ["warmup"]
    assert saved["running"] is None
    _assert_same_fit(_quiet_fit(model, X), reference, X)


def test_a_checkpoint_of_another_fit_is_refused_before_training(digits3, monkeypatch,
                                                                tmp_path):
    cls, params, kind = ESTIMATORS["TEMIClusterer"]
    X = digits3[kind]
    path = tmp_path / "fit.ckpt"
    _interrupted_fit(cls(**params, checkpoint=path), X, monkeypatch, 3)
    saved = path.read_bytes()
    epochs = []
    monkeypatch.setattr(engine.Trainer, "run", lambda trainer, stage: epochs.append(stage))
    for other, data in [
        (dict(params, hidden_dim=24), X),  # another parameter
        (dict(params, random_state=1), X),  # another seed
        (params, X[::-1]),  # other data (the same rows in another order)
    ]:
        with pytest.raises(ValueError, match="written by a fit of other data, parameters"):
            cls(**other, checkpoint=path).fit(data)
    assert epochs == []
    assert path.read_bytes() == saved  # left as it was

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a checkpoint"):
        cls(**params, checkpoint=path).fit(X)
    torch.save({"something": 1}, path)
    with pytest.raises(ValueError, match="not a checkpoint of this version"):
        cls(**params, checkpoint=path).fit(X)
    assert epochs == []


def test_without_an_int_random_state_the_interrupted_fits_seed_is_resumed(digits3, monkeypatch,
                                                                         tmp_path):
    cls, params, kind = ESTIMATORS["MMDCClusterer"]  # 10 epochs
    X = digits3[kind]
    params = dict(params, random_state=None)
    path = tmp_path / "fit.ckpt"
    _interrupted_fit(cls(**params, checkpoint=path), X, monkeypatch, 6)
    saved = torch.load(path, weights_only=True)
    epochs = count_epochs(monkeypatch)
    model = _quiet_fit(cls(**params, checkpoint=path), X)
    assert epochs[0] == 4 and model.n_iter_ == 10
    assert _records(model)[:6] == [
        {k: v for k, v in entry.items() if "seconds" not in k}
        for entry in saved["running"]["history"]
    ]


def test_resuming_is_announced(digits3, monkeypatch, tmp_path, capsys):
    cls, params, kind = ESTIMATORS["TEMIClusterer"]
    X = digits3[kind]
    path = tmp_path / "fit.ckpt"
    _interrupted_fit(cls(**params, checkpoint=path), X, monkeypatch, 5)
    capsys.readouterr()
    _quiet_fit(cls(**params, checkpoint=str(path), verbose=1), X)
    out = capsys.readouterr().out
    assert f"resuming from {path}: stage 'temi' after epoch 5." in out


def test_parameter_validation():
    with pytest.raises(ValueError, match="checkpoint"):
        TEMIClusterer(checkpoint=3).fit(np.zeros((10, 2), np.float32))


def test_encode_decode_round_trip():
    state = torch.nn.Linear(2, 2).state_dict()
    value = {
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "scalar": np.float32(1.5),
        "numpy_rng": np.random.RandomState(0).get_state(),
        "nested": [1, 2.0, "a", None, (True, torch.ones(2))],
        "module": state,
    }
    decoded = decode_state(encode_state(value))
    np.testing.assert_array_equal(decoded["array"], value["array"])
    assert decoded["array"].dtype == np.int16
    assert decoded["scalar"] == 1.5 and type(decoded["scalar"]) is float
    assert isinstance(decoded["numpy_rng"], tuple)
    np.testing.assert_array_equal(decoded["numpy_rng"][1], value["numpy_rng"][1])
    assert decoded["nested"][:4] == [1, 2.0, "a", None]
    assert torch.equal(decoded["nested"][4][1], torch.ones(2))
    assert type(decoded["module"]) is OrderedDict
    assert decoded["module"]._metadata == state._metadata
    # copies: changing the source afterwards does not change what was encoded
    encoded = encode_state({"w": state["weight"]})
    state["weight"].data.add_(1.0)
    assert not torch.equal(encoded["w"], state["weight"])
    with pytest.raises(TypeError, match="cannot be checkpointed"):
        encode_state({"bad": object()})
    with pytest.raises(TypeError, match="cannot be checkpointed"):
        encode_state(np.array(["a", None], dtype=object))
