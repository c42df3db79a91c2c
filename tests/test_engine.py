"""The shared training engine: steps, schedules, EMA, stopping rule, precision, devices; and
one epoch of every estimator's stages run alone."""

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import FEATURE_ESTIMATORS
from sklearn.base import clone
from sklearn.datasets import load_digits
from torch import nn

import skdeepcluster.engine as engine
from skdeepcluster import (
    DeepClusterer,
    TEMIClusterer,
)
from skdeepcluster.engine import (
    AssignmentTracker,
    ExponentialMovingAverage,
    StoppingRule,
    Trainer,
    make_optimizer,
    parameter_groups,
    resolve_device,
    resolve_precision,
    warmup_cosine_schedule,
    warmup_step_schedule,
)

CPU = torch.device("cpu")


def _linear_stage(trainer, run_epoch, max_epochs=3, lr=0.1, **options):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = make_optimizer("sgd", parameter_groups(model, 0.0), lr=lr, device=CPU)
    return model, trainer.stage("fit", run_epoch, max_epochs, optimizer=optimizer, **options)


# --------------------------------------------------------------------------- optimiser step
def test_step_updates_parameters_once_per_call():
    trainer = Trainer(CPU)
    x = torch.randn(8, 3)

    def epoch(stage):
        stage.step(model(x).square().mean())
        return {}

    model, stage = _linear_stage(trainer, epoch, max_epochs=2)
    before = model.weight.detach().clone()
    trainer.run(stage)
    assert not torch.equal(before, model.weight)
    assert stage.n_steps == 2 and stage.n_epochs == 2


def test_backward_twice_then_step_uses_the_summed_gradient():
    trainer = Trainer(CPU)
    x = torch.randn(8, 3)
    model, stage = _linear_stage(trainer, lambda stage: {}, lr=1.0)
    reference = nn.Linear(3, 2)
    reference.load_state_dict(model.state_dict())
    stage.zero_grad()
    stage.backward(model(x[:4]).sum())
    stage.backward(model(x[4:]).sum())
    stage.step()
    (reference(x[:4]).sum() + reference(x[4:]).sum()).backward()
    with torch.no_grad():
        torch.testing.assert_close(model.weight, reference.weight - reference.weight.grad)


def test_parameter_groups_exempt_biases_and_norm_gains():
    module = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    module.centroids = nn.Parameter(torch.zeros(2, 2))
    weights = parameter_groups(module, 0.5)
    decayed, exempt = (set(map(id, group["params"])) for group in weights)
    assert decayed == {id(module[0].weight), id(module[2].weight), id(module.centroids)}
    assert id(module[1].weight) in exempt and id(module[0].bias) in exempt
    assert [group["weight_decay"] for group in weights] == [0.5, 0.0]
    everything = parameter_groups(module, 0.5, decay="all", exclude=("centroids",))
    assert len(everything[0]["params"]) == 6 and everything[1]["params"] == [module.centroids]
    own = parameter_groups(module, 0.5, decay="all", exclude=("centroids",),
                           weight_decays={"2.weight": 1e-4})
    assert [(len(g["params"]), g["weight_decay"]) for g in own] == [(5, 0.5), (1, 0.0), (1, 1e-4)]
    assert own[2]["params"] == [module[2].weight]
    with pytest.raises(ValueError, match="no parameter of the module"):
        parameter_groups(module, 0.5, weight_decays={"2.weights": 1e-4})
    module[0].requires_grad_(False)
    assert sum(len(g["params"]) for g in parameter_groups(module, 0.5)) == 5


# --------------------------------------------------------------------------- schedules
def _lrs(scheduler, n):
    optimizer = scheduler.optimizer
    values = []
    for _ in range(n):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_cosine_schedule():
    parameter = [nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(parameter, lr=1.0)
    values = _lrs(warmup_cosine_schedule(optimizer, 10, warmup_steps=2, final_lr=0.1), 12)
    assert values[:2] == pytest.approx([0.5, 1.0])
    # cosine from 1 at step 2 to 0.1 at step 10, then held
    expected = [0.1 + 0.45 * (1 + math.cos(math.pi * (s - 2) / 8)) for s in range(2, 12)]
    assert values[2:] == pytest.approx([min(1.0, e) if s < 10 else 0.1
                                        for s, e in zip(range(2, 12), expected, strict=True)])
    optimizer = torch.optim.SGD(parameter, lr=1.0)
    assert _lrs(warmup_cosine_schedule(optimizer, 10), 5) == [1.0] * 5  # constant


def test_warmup_step_schedule_counts_from_the_first_step():
    parameter = [nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(parameter, lr=0.9)
    schedule = warmup_step_schedule(optimizer, warmup_steps=3, decay_steps=4, decay_factor=3.0)
    assert _lrs(schedule, 9) == pytest.approx([0.3, 0.6, 0.9, 0.9, 0.3, 0.3, 0.3, 0.3, 0.1])
    optimizer = torch.optim.SGD(parameter, lr=0.9)  # a fresh optimiser after 4 steps
    resumed = warmup_step_schedule(optimizer, warmup_steps=3, decay_steps=4, decay_factor=3.0,
                                   first_step=4)
    assert _lrs(resumed, 5) == pytest.approx([0.3, 0.3, 0.3, 0.3, 0.1])


def test_epoch_scheduler_and_recorded_lr():
    trainer = Trainer(CPU)

    def epoch(stage):
        stage.step(model(torch.ones(2, 3)).sum())
        return {}

    model, stage = _linear_stage(trainer, epoch, max_epochs=3, lr=1.0)
    stage.scheduler = torch.optim.lr_scheduler.StepLR(stage.optimizers[0], 1, gamma=0.5)
    stage.scheduler_interval = "epoch"
    trainer.run(stage)
    assert [entry["lr"] for entry in trainer.history] == [1.0, 0.5, 0.25]


# --------------------------------------------------------------------------- EMA
def test_ema_equals_its_formula():
    average, source = [torch.zeros(3)], [torch.ones(3)]
    ema = ExponentialMovingAverage(average, source, 0.9)
    ema.update()
    ema.update()
    torch.testing.assert_close(average[0], torch.full((3,), 1 - 0.9**2))
    scheduled = ExponentialMovingAverage([torch.zeros(1)], [torch.ones(1)], lambda n: 0.5 * n)
    scheduled.update()  # momentum 0 at the first update: a copy
    scheduled.update()  # momentum 0.5: stays 1
    torch.testing.assert_close(scheduled.average[0], torch.ones(1))
    assert scheduled.n_updates == 2
    with pytest.raises(ValueError, match="same number"):
        ExponentialMovingAverage([torch.zeros(1)], [], 0.9)


def test_stage_updates_its_ema_after_every_step():
    trainer = Trainer(CPU)

    def epoch(stage):
        stage.step(model(torch.ones(2, 3)).sum())
        return {}

    model, stage = _linear_stage(trainer, epoch, max_epochs=4)
    shadow = [p.detach().clone() for p in model.parameters()]
    stage.ema = ExponentialMovingAverage(shadow, model.parameters(), 0.5)
    trainer.run(stage)
    assert stage.ema.n_updates == 4
    assert not torch.equal(shadow[0], model.weight)


# --------------------------------------------------------------------------- stopping rule
def test_stopping_rule_below_fires_after_n_epochs_under_tol():
    rule = StoppingRule(1e-3, 3)
    values = [1.0, 0.5, 5e-4, 4e-4, 0.01, 1e-4, None, 1e-4, float("nan"), 1e-4]
    assert [rule.update(v) for v in values] == [False] * 9 + [True]
    assert not StoppingRule(0.0, 1).update(0.0)  # "fewer than tol": tol = 0 never stops
    never = StoppingRule(None, 1)
    assert not any(never.update(0.0) for _ in range(5))


def test_stopping_rule_plateau_fires_when_the_change_stops_decreasing():
    rule = StoppingRule(0.01, 3, mode="plateau")
    # decreasing by more than tol keeps going; levelling off (with noise) above zero stops
    values = [0.9, 0.6, 0.5, 0.55, 0.52, 0.45, 0.47, 0.46, 0.455]
    assert [rule.update(v) for v in values] == [False] * 8 + [True]
    flat = StoppingRule(1e-3, 2, mode="plateau")  # nothing changes any more: stops too
    assert [flat.update(v) for v in (0.1, 0.0, 0.0, 0.0)] == [False, False, False, True]
    with pytest.raises(ValueError, match="mode"):
        StoppingRule(0.1, 1, mode="sometimes")


@pytest.mark.parametrize("mode, expected", [("below", 5), ("plateau", 6)])
def test_trainer_stops_a_monitored_stage_and_records_history(mode, expected):
    changes = iter([1.0, 0.2, 0.005, 0.004, 0.006, 0.005, 0.3, 0.2])
    trainer = Trainer(CPU, tol=0.01, n_iter_no_change=3)

    def epoch(stage):
        stage.step(model(torch.ones(2, 3)).sum())
        return {"changed": next(changes)}

    model, stage = _linear_stage(trainer, epoch, max_epochs=8, monitor="changed",
                                 stop_mode=mode)
    # below: epochs 3, 4, 5 under 0.01 → stops after epoch 5; plateau: no new low by 0.01
    # after epoch 3 → epochs 4, 5, 6 → stops after epoch 6
    assert trainer.run(stage) == expected
    assert [entry["epoch"] for entry in trainer.history] == list(range(1, expected + 1))
    assert {"stage", "epoch", "changed", "lr", "seconds", "cpu_seconds"} <= set(
        trainer.history[0]
    )
    assert trainer.n_epochs == {"fit": expected}


def test_cap_without_monitor_or_with_tol_none():
    for trainer, monitor in ((Trainer(CPU, tol=0.5, n_iter_no_change=1), None),
                             (Trainer(CPU, tol=None), "changed")):
        _, stage = _linear_stage(trainer, lambda stage: {"changed": 0.0}, max_epochs=4,
                                 monitor=monitor)
        assert trainer.run(stage) == 4


def test_progress_lines(capsys):
    trainer = Trainer(CPU, tol=0.5, n_iter_no_change=1, verbose=2, name="Demo")
    _, stage = _linear_stage(trainer, lambda stage: {"changed": 0.1}, max_epochs=4,
                             monitor="changed")
    trainer.run(stage)
    out = capsys.readouterr().out
    assert "[Demo] fit epoch 1/4  changed=0.1" in out and "stopped after epoch 1 of 4" in out
    quiet = Trainer(CPU)
    _, stage = _linear_stage(quiet, lambda stage: {}, max_epochs=2)
    quiet.run(stage)
    assert capsys.readouterr().out == ""


def test_assignment_tracker_counts_changes_of_samples_seen_before():
    tracker = AssignmentTracker(5)
    tracker.update(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 1]))
    assert tracker.fraction() == 1.0  # nothing seen before: nothing to compare
    tracker.update(torch.tensor([2, 3]), torch.tensor([0, 1]))  # 2 changed, 3 is new
    tracker.update(torch.tensor([0, 1]), torch.tensor([3, 2]))  # 1 changed
    assert tracker.fraction() == pytest.approx(2 / 3)
    heads = AssignmentTracker(3, n_heads=2)
    heads.update(torch.tensor([0, 1, 2]), torch.tensor([[0, 0, 0], [1, 1, 1]]))
    assert heads.fraction() == 1.0
    heads.update(torch.tensor([0, 1, 2]), torch.tensor([[0, 1, 0], [1, 1, 1]]))
    assert heads.fraction() == pytest.approx(1 / 6)  # one of six (head, sample) pairs
    assert heads.fraction() == 1.0  # counts reset after each call: nothing compared since
    heads.update(torch.tensor([0]), torch.tensor([[1], [1]]))
    assert heads.fraction() == pytest.approx(0.5)


# --------------------------------------------------------------------------- precision
def test_auto_precision_follows_native_bfloat16(monkeypatch):
    monkeypatch.setattr(engine, "native_bfloat16", lambda device: False)
    assert resolve_precision("auto", CPU) == torch.float32
    with pytest.warns(UserWarning, match="emulated"):
        assert resolve_precision("bfloat16", CPU, warn=True) == torch.bfloat16
    monkeypatch.setattr(engine, "native_bfloat16", lambda device: True)
    assert resolve_precision("auto", CPU) == torch.bfloat16
    assert resolve_precision("float32", CPU) == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_precision("bfloat16", CPU, warn=True)
    with pytest.raises(ValueError, match="float16.*CUDA"):
        resolve_precision("float16", CPU)
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("int8", CPU)


def test_native_bfloat16_reads_the_cpu_flags(monkeypatch):
    for amx, avx512 in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda avx512=avx512: avx512)
        assert engine.native_bfloat16(CPU) == (amx or avx512)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert not engine.native_bfloat16(CPU)  # a torch without the probes: float32


def test_bfloat16_autocast_keeps_float32_weights_and_losses():
    trainer = Trainer(CPU, torch.bfloat16)
    x = torch.randn(16, 3)
    seen = {}

    def epoch(stage):
        with stage.autocast():
            out = model(x)
        seen["dtype"] = out.dtype
        loss = out.float().square().mean()
        stage.step(loss)
        return {"loss": loss.item()}

    model, stage = _linear_stage(trainer, epoch, max_epochs=2)
    trainer.run(stage)
    assert seen["dtype"] == torch.bfloat16
    assert model.weight.dtype == torch.float32 and model.weight.grad.dtype == torch.float32
    assert all(math.isfinite(entry["loss"]) for entry in trainer.history)


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("device", ["gpu7000", "cuda:x", 3.5])
def test_bad_device_values_are_value_errors(device):
    with pytest.raises(ValueError, match="device="):
        resolve_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a CPU-only machine")
def test_cuda_on_a_cpu_only_machine_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="device="):
        TEMIClusterer(n_clusters=2, device="gpu7000").fit(np.random.rand(10, 3))


# --------------------------------------------------------------------------- every estimator
@pytest.fixture(scope="module")
def digits():
    X, _ = load_digits(return_X_y=True)
    return (X[:120] / 16).astype(np.float32)


ESTIMATORS = FEATURE_ESTIMATORS


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_first_stage_epoch_runs_alone_and_trains(estimator, digits):
    model = clone(estimator).set_params(random_state=0)
    X, trainer, seed = model._begin_fit(digits)
    generator = torch.Generator().manual_seed(seed)
    stage = next(model._stages(X, trainer, generator))
    before = [p.detach().clone() for p in model.module_.parameters() if p.requires_grad]
    record = stage.run_epoch(stage)
    after = [p for p in model.module_.parameters() if p.requires_grad]
    assert isinstance(record, dict) and stage.n_steps > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


# one or two epochs in bfloat16: a partly collapsed clustering (MMDC) and no confident sample
# for SCAN's self-labelling are expected and beside the point (the dtypes and finite losses)
@pytest.mark.filterwarnings("ignore:.*the clustering has \\(partly\\) collapsed"
                            ":sklearn.exceptions.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore:Self-labelling skipped:sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_bfloat16_fit_of_every_estimator(estimator, digits):
    with pytest.warns(UserWarning, match="emulated") if not engine.native_bfloat16(CPU) else \
            warnings.catch_warnings():
        model = clone(estimator).set_params(random_state=0, precision="bfloat16").fit(digits)
    assert model.precision_ == "bfloat16"
    np.testing.assert_array_equal(model.labels_, model.predict(digits))
    n_records = len(model.history_) - (type(model) is DeepClusterer)  # + its final clustering
    assert model.n_iter_ == n_records
    assert all(p.dtype == torch.float32 for p in model.module_.parameters())
    proba = model.predict_proba(digits)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(1), 1, atol=1e-3)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_float16_on_a_cpu_fails_before_training(estimator, digits):
    model = clone(estimator).set_params(precision="float16", device="cpu")
    with pytest.raises(ValueError, match="float16"):
        model.fit(digits)
    assert not hasattr(model, "module_")


def test_fit_leaves_the_thread_count_alone(digits):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        clone(ESTIMATORS[0]).set_params(random_state=0).fit(digits)
        assert torch.get_num_threads() == 2  # OMP_NUM_THREADS / set_num_threads are respected
    finally:
        torch.set_num_threads(before)
