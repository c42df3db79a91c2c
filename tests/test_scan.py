"""Tests of SCANClusterer and its losses (Van Gansbeke et al., ECCV 2020)."""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

from skdeepcluster import SCANClusterer, clustering_accuracy_score, overclustering_accuracy_score
from skdeepcluster.methods.scan import SimCLRNetwork, auto_learning_rate
from skdeepcluster.nn.backbones import SmallCNN, SmallVGG
from skdeepcluster.nn.losses import confidence_cross_entropy, nt_xent_loss, scan_loss

# Behaviour tests here fit 1-4 epochs on a few hundred samples: a (partly) collapsed
# clustering and skipped self-labelling batches are expected and beside their point. Only
# these known warnings are ignored (pytest.warns still sees them where a test asserts one);
# quality tests check accuracy.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*the clustering has \\(partly\\) collapsed:sklearn.exceptions.ConvergenceWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Self-labelling skipped:sklearn.exceptions.ConvergenceWarning"
    ),
]

# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = (data.images * 255 / 16).astype(np.uint8)  # (1797, 8, 8)
    return images, data.data / 16.0, data.target


def _small(**params):
    """A few-second configuration for behaviour tests (not for quality)."""
    defaults = dict(
        pretext_epochs=1,
        pretext_batch_size=64,
        n_neighbors=5,
        max_epochs=1,
        batch_size=64,
        self_labeling_epochs=1,
        self_labeling_batch_size=64,
        random_state=0,
    )
    defaults.update(params)
    return SCANClusterer(**defaults)


def _tiny_cnn():
    return SmallCNN(1, width=4, image_size=8)


# --------------------------------------------------------------------------- losses
def test_scan_loss_hand_computed_value():
    anchor = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # (H=1, B=2, K=2)
    neighbour = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    total, consistency, entropy = scan_loss(anchor, neighbour, entropy_weight=5.0)

    def softmax(v):
        e = np.exp(np.asarray(v, dtype=float))
        return e / e.sum()

    pa = [softmax([2, 0]), softmax([0, 1])]
    pn = [softmax([1, 0]), softmax([0, 0])]
    expected_consistency = -np.mean([np.log(a @ n) for a, n in zip(pa, pn, strict=True)])
    mean = np.mean(pa, axis=0)
    expected_entropy = -(mean * np.log(mean)).sum()
    assert consistency.item() == pytest.approx(expected_consistency, rel=1e-5)
    assert entropy.item() == pytest.approx(expected_entropy, rel=1e-5)
    assert total.item() == pytest.approx(expected_consistency - 5.0 * expected_entropy, rel=1e-5)
    assert total.shape == (1,)


def test_scan_loss_entropy_penalises_collapse():
    confident = 20.0 * torch.eye(4)  # 4 samples, 4 clusters, one-hot and consistent
    balanced = confident.unsqueeze(0)
    collapsed = confident[[0, 0, 0, 0]].unsqueeze(0)
    total_balanced, cons_b, ent_b = scan_loss(balanced, balanced, 5.0)
    total_collapsed, cons_c, ent_c = scan_loss(collapsed, collapsed, 5.0)
    assert cons_b.item() == pytest.approx(cons_c.item(), abs=1e-6)  # both perfectly consistent
    assert ent_b.item() == pytest.approx(math.log(4), rel=1e-4)
    assert ent_c.item() == pytest.approx(0.0, abs=1e-4)
    assert total_collapsed.item() > total_balanced.item() + 5.0


def test_scan_loss_no_nan_at_extremes():
    one_hot = torch.tensor([[[1e4, -1e4, -1e4], [-1e4, 1e4, -1e4]]], requires_grad=True)
    disagree = torch.tensor([[[-1e4, 1e4, -1e4], [1e4, -1e4, -1e4]]])
    uniform = torch.zeros(1, 2, 3, requires_grad=True)
    for anchor, neighbour in [(one_hot, one_hot), (one_hot, disagree), (uniform, uniform)]:
        total, consistency, entropy = scan_loss(anchor, neighbour, 5.0)
        total.sum().backward()
        assert torch.isfinite(total).all() and torch.isfinite(anchor.grad).all()
        anchor.grad = None
    total, consistency, entropy = scan_loss(uniform, uniform, 1.0)
    assert consistency.item() == pytest.approx(math.log(3), rel=1e-5)  # -log(3 · 1/9)
    assert entropy.item() == pytest.approx(math.log(3), rel=1e-5)


def test_scan_loss_heads_are_independent():
    torch.manual_seed(0)
    anchors, neighbours = torch.randn(3, 8, 4), torch.randn(3, 8, 4)
    batched = scan_loss(anchors, neighbours, 5.0)[0]
    one_by_one = torch.stack([scan_loss(anchors[h], neighbours[h], 5.0)[0] for h in range(3)])
    torch.testing.assert_close(batched, one_by_one)


def test_nt_xent_hand_computed_and_ordering():
    z1 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    z2 = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0]]), dim=1)
    loss = nt_xent_loss(z1, z2, temperature=0.1)
    z = torch.cat([z1, z2]).numpy().astype(float)
    sim = z @ z.T / 0.1
    expected = []
    for i, positive in enumerate([2, 3, 0, 1]):
        others = [j for j in range(4) if j != i]
        expected.append(-(sim[i, positive] - np.log(np.exp(sim[i, others]).sum())))
    assert loss.item() == pytest.approx(np.mean(expected), rel=1e-4)
    # aligned views are better than swapped ones
    assert nt_xent_loss(z1, z1, 0.1) < nt_xent_loss(z1, z1.flip(0), 0.1)


def test_confidence_cross_entropy_threshold_and_balancing():
    weak = torch.tensor([[10.0, 0.0], [10.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.1, 0.0]])
    strong = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, 3.0], [5.0, 0.0]])
    loss, n_confident = confidence_cross_entropy(weak, strong, 0.99, class_balancing=True)
    assert n_confident == 4  # the last sample is not confident
    ce = torch.nn.functional.cross_entropy(strong[:4], torch.tensor([0, 0, 0, 1]), reduction="none")
    # class weights 4/3 and 4/1; weighted mean normalised by the sum of weights
    weights = torch.tensor([4 / 3, 4 / 3, 4 / 3, 4.0])
    assert loss.item() == pytest.approx(float((weights * ce).sum() / weights.sum()), rel=1e-5)
    plain, _ = confidence_cross_entropy(weak, strong, 0.99, class_balancing=False)
    assert plain.item() == pytest.approx(float(ce.mean()), rel=1e-5)
    none, zero = confidence_cross_entropy(torch.zeros(3, 4), strong[:3, :1].repeat(1, 4), 0.99)
    assert none is None and zero == 0


# --------------------------------------------------------------------------- estimator
def test_full_pipeline_on_images_records_every_step(digits):
    images, _, _ = digits
    model = _small(n_clusters=10, backbone=_tiny_cnn(), n_heads=3).fit(images[:300])
    stages = [entry["stage"] for entry in model.history_]
    assert stages == ["pretext", "scan", "selflabel"]
    selflabel = model.history_[-1]
    assert {"loss", "n_confident", "skipped_batches", "seconds"} <= set(selflabel)
    assert model.neighbors_.shape == (300, 6)
    assert (model.neighbors_[:, 0] == np.arange(300)).mean() > 0.9  # itself, drawn 1/(k+1)
    assert model.best_head_ in range(3) and model.head_losses_.shape == (3,)
    assert 0 <= model.n_confident_ <= 300
    assert model.transform(images[:7]).shape == (7, 128)
    np.testing.assert_allclose(np.linalg.norm(model.transform(images[:7]), axis=1), 1, rtol=1e-5)
    proba = model.predict_proba(images[:7])
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(model.predict(images[:300]), model.labels_)
    assert np.isfinite(model.score(images[:50]))
    assert isinstance(model.pretext_model_, SimCLRNetwork)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(images[:300]), model.labels_)


def test_auto_backbone_on_small_images_is_the_small_vgg(digits):
    images = digits[0][:128]
    model = _small().fit(images)
    assert isinstance(model.pretext_model_.backbone, SmallVGG)
    assert isinstance(model.module_["backbone"], SmallVGG)
    cnn = _small(backbone="small_cnn").fit(images)
    assert isinstance(cnn.pretext_model_.backbone, SmallCNN)
    # no pretext task: the clustering backbone itself
    assert isinstance(_small(pretext=None).fit(images).module_["backbone"], SmallVGG)


def test_best_head_has_lowest_selection_loss(digits):
    _, features, _ = digits
    model = _small(n_clusters=10, n_heads=4, max_epochs=2).fit(features[:400])
    assert model.best_head_ == int(np.argmin(model.head_losses_))
    assert model.history_[model.best_epoch_ - 1]["eval_loss"] == pytest.approx(
        model.head_losses_.min()
    )
    assert model.module_["heads"].n_heads == 1  # only the kept head remains


def test_n_init_keeps_the_lowest_loss_fit(digits):
    images = digits[0][:200]
    backbone = _tiny_cnn()  # every fit starts from a copy of the same module
    model = _small(n_clusters=10, backbone=backbone, n_init=3, random_state=4).fit(images)
    assert model.init_losses_.shape == (3,) and len(set(model.init_losses_)) == 3
    assert model.best_init_ == int(np.argmin(model.init_losses_))
    # the criterion is minus ``score`` of the training data
    assert model.score(images) == pytest.approx(-model.init_losses_.min(), rel=1e-4)
    # the kept fit is the single fit from the seed drawn for it
    seeds = np.random.RandomState(4).randint(np.iinfo(np.int32).max, size=3)
    single = _small(n_clusters=10, backbone=backbone, random_state=int(seeds[model.best_init_]))
    single.fit(images)
    np.testing.assert_array_equal(single.labels_, model.labels_)
    assert single.init_losses_ == pytest.approx(model.init_losses_[[model.best_init_]])
    assert single.best_init_ == 0
    assert [e["stage"] for e in model.history_] == ["pretext", "scan", "selflabel"]
    # the kept fit's warnings reach the caller; an error leaves the estimator unfitted
    with pytest.warns(ConvergenceWarning, match="skipped"):
        _small(n_clusters=10, n_init=2, confidence_threshold=0.999999).fit(digits[1][:100])
    with pytest.raises(ValueError, match="n_clusters=10 is larger"):
        model.set_params(random_state=0).fit(images[:5])
    assert not hasattr(model, "labels_") and not hasattr(model, "init_losses_")
    with pytest.raises(ValueError, match="n_init"):
        _small(n_init=0).fit(images)


@pytest.mark.parametrize(
    "params",
    [
        {"pretext": None},
        {"self_labeling": False},
        {"freeze_backbone": True},
        {"augmentation": "simclr"},
        {"augmentation": "none", "ema_momentum": 0.999},
        {"backbone": "mlp", "class_balancing": False},
    ],
)
def test_each_step_can_be_switched_off(digits, params):
    images, _, _ = digits
    params = {"backbone": _tiny_cnn(), **params}
    model = _small(n_clusters=10, **params).fit(images[:200])
    stages = {entry["stage"] for entry in model.history_}
    assert ("pretext" in stages) == (params.get("pretext", "simclr") == "simclr")
    assert ("selflabel" in stages) == params.get("self_labeling", True)
    assert model.labels_.shape == (200,)


def test_pretext_none_on_images_mines_pixels(digits):
    images, _, y = digits
    model = _small(n_clusters=10, pretext=None, backbone="mlp").fit(images[:300])
    assert not hasattr(model, "pretext_model_")
    flat = images[:300].reshape(300, -1) / 255.0
    np.testing.assert_allclose(
        model.transform(images[:300]), flat / np.linalg.norm(flat, axis=1, keepdims=True), rtol=1e-5
    )


def test_fitted_pretext_model_is_reused(digits):
    images, _, _ = digits
    backbone = _tiny_cnn()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    first = _small(n_clusters=10, backbone=backbone).fit(images[:300])
    for key, value in backbone.state_dict().items():  # the user's module is never trained
        torch.testing.assert_close(value, before[key])
    pretext = first.pretext_model_
    for n_clusters in (5, 15):
        again = _small(n_clusters=n_clusters, backbone=pretext, pretext=None).fit(images[:300])
        assert "pretext" not in {entry["stage"] for entry in again.history_}
        np.testing.assert_array_equal(again.neighbors_, first.neighbors_)
        np.testing.assert_allclose(again.transform(images[:20]), first.transform(images[:20]))
        assert again.predict_proba(images[:5]).shape == (5, n_clusters)


def test_skipped_self_labeling_batches_are_counted(digits):
    _, features, _ = digits
    model = _small(n_clusters=10, confidence_threshold=0.999999, self_labeling_epochs=2)
    with pytest.warns(ConvergenceWarning, match="skipped"):
        model.fit(features[:256])
    selflabel = [entry for entry in model.history_ if entry["stage"] == "selflabel"]
    assert [entry["skipped_batches"] for entry in selflabel] == [4, 4]
    assert model.n_skipped_batches_ == 8
    assert all(entry["n_confident"] == 0 for entry in selflabel)


def _record_strong_augment(monkeypatch):
    """Replace the SCAN step's strong augmentation by one that records its keyword arguments."""
    from skdeepcluster.methods import scan

    calls = []
    original = scan.strong_augment

    def record(x, generator, **kwargs):
        calls.append(kwargs)
        return original(x, generator, **kwargs)

    monkeypatch.setattr(scan, "strong_augment", record)
    return calls


def test_strong_augmentation_follows_the_authors_by_default(digits, monkeypatch):
    # authors' code: flip + 4 RandAugment ops (factors in [0.05, 0.95]) + Cutout of side
    # 1..16 px of 32 filled with the data mean (0 after their normalisation); no crop
    images, _, _ = digits
    calls = _record_strong_augment(monkeypatch)
    _small(n_clusters=10, backbone=_tiny_cnn(), pretext=None).fit(images[:200])
    assert calls
    mean = images[:200].mean() / 255
    for kwargs in calls:
        assert kwargs["crop_scale"] is None and kwargs["enhance_range"] == (0.05, 0.95)
        assert kwargs["cutout_random_size"] is True and kwargs["cutout_size"] == 0.5
        assert kwargs["cutout_fill"] == [pytest.approx(mean, rel=1e-6)]


def test_earlier_strong_augmentation_stays_reachable(digits, monkeypatch):
    images, _, _ = digits
    calls = _record_strong_augment(monkeypatch)
    earlier = dict(strong_crop_scale=(0.5, 1.0), enhance_range=(0.1, 1.9),
                   cutout_random_size=False, cutout_fill=0.0)
    _small(n_clusters=10, backbone=_tiny_cnn(), pretext=None, **earlier).fit(images[:200])
    assert calls
    for kwargs in calls:
        assert kwargs["crop_scale"] == (0.5, 1.0) and kwargs["enhance_range"] == (0.1, 1.9)
        assert kwargs["cutout_random_size"] is False and kwargs["cutout_fill"] == 0.0


def test_learning_rate_auto_rule():
    assert auto_learning_rate(19_500, 19_500) == pytest.approx(1e-4)  # the authors' CIFAR-10 run
    assert auto_learning_rate(10**6, 19_500) == pytest.approx(1e-4)  # never below the paper's
    assert auto_learning_rate(3_900, 19_500) == pytest.approx(5e-4)  # same lr x steps
    assert auto_learning_rate(700, 19_500) == pytest.approx(1e-3)  # at most 10x (digits)
    assert auto_learning_rate(200, 10_000) == pytest.approx(1e-3)


def test_auto_learning_rates_follow_each_steps_length(digits, monkeypatch):
    _, features, _ = digits
    from skdeepcluster.methods import scan as scan_module

    rates = []
    make_optimizer = scan_module.make_optimizer
    monkeypatch.setattr(scan_module, "make_optimizer", lambda kind, groups, **kwargs: (
        rates.append((kind, kwargs["lr"])) or make_optimizer(kind, groups, **kwargs)))
    # 300 samples: 4 batches of 64 x 50 epochs = 200 SCAN steps, 4 x 40 = 160 self-labelling;
    # self-labelling keeps the paper's 1e-4 by default, follows the rule when asked to
    model = _small(n_clusters=3, lr="auto", max_epochs=50, self_labeling_epochs=40, tol=0.5,
                   n_iter_no_change=1).fit(features[:300])
    assert model.lr_ == pytest.approx(1e-3) and model.self_labeling_lr_ == 1e-4
    assert rates == [("adam", model.lr_), ("adam", model.self_labeling_lr_)]
    model = _small(n_clusters=3, lr="auto", max_epochs=50, self_labeling_epochs=40, tol=0.5,
                   n_iter_no_change=1, self_labeling_lr=None).fit(features[:300])
    assert model.self_labeling_lr_ == pytest.approx(1e-3)
    # enough steps: the paper's rate; 10 000 steps on 300 samples take 2 500 epochs (capped)
    model = _small(n_clusters=3, max_epochs=4_875, self_labeling_epochs=2_500, tol=0.5,
                   n_iter_no_change=1, self_labeling_lr="auto").fit(features[:300])
    assert model.lr_ == pytest.approx(1e-4) and model.self_labeling_lr_ == pytest.approx(1e-4)
    # explicit values are kept; self_labeling_lr=None follows an explicit lr
    model = _small(n_clusters=3, lr=3e-4, self_labeling_lr=None).fit(features[:300])
    assert model.lr_ == 3e-4 and model.self_labeling_lr_ == 3e-4
    model = _small(n_clusters=3, lr=3e-4, self_labeling_lr="auto").fit(features[:300])
    assert model.self_labeling_lr_ == pytest.approx(1e-3)


def test_overclustering_on_features(digits):
    _, features, y = digits
    model = SCANClusterer(
        n_clusters=20, max_epochs=6, lr=1e-3, self_labeling=False, n_heads=2, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a few empty clusters are allowed
        labels = model.fit(features).labels_
    assert np.unique(labels).size >= 15
    assert overclustering_accuracy_score(y, labels) > 0.85


def test_bad_parameters_get_clear_errors(digits):
    # bad input common to all estimators (NaN, too few samples, channels, ...): test_common.py
    images, features, _ = digits
    with pytest.raises(ValueError, match="crop_scale"):
        _small(n_clusters=2, crop_scale=(0.9, 0.1)).fit(features[:50])
    for name in ("small_cnn", "small_vgg"):
        with pytest.raises(ValueError, match="needs image input"):
            _small(n_clusters=2, backbone=name).fit(features[:50])
    with pytest.raises(ValueError, match="entropy_weight"):
        _small(entropy_weight=-1.0).fit(features[:50])
    with pytest.raises(ValueError, match="strong_crop_scale"):
        _small(n_clusters=2, strong_crop_scale=(0.9, 0.1)).fit(features[:50])
    with pytest.raises(ValueError, match="enhance_range"):
        _small(n_clusters=2, enhance_range=(1.0, 0.5)).fit(features[:50])
    with pytest.raises(ValueError, match="cutout_fill"):
        _small(n_clusters=2, cutout_fill=2.0).fit(features[:50])


# --------------------------------------------------------------------------- quality
def test_quality_on_digits_images(digits):
    """Full pipeline (SimCLR pretext, mining, SCAN loss, self-labelling) on the 1797 digits as
    8×8 images; k-means on the same pixels gets 0.79."""
    images, _, y = digits
    model = SCANClusterer(**QUALITY_CONFIG).fit(images)
    scan_only = [e for e in model.history_ if e["stage"] == "scan"]
    assert scan_only and model.history_[-1]["stage"] == "selflabel"
    accuracy = clustering_accuracy_score(y, model.labels_)
    assert accuracy >= 0.90, accuracy


#: The documented small-data CPU configuration (the paper's schedules assume a GPU; see the
#: estimator's Notes and benchmarks/bench_scan.py): an MLP backbone, 40 SimCLR epochs with the
#: small-image views, 20 SCAN epochs at lr 1e-3 with the pretext views, then 20 self-labelling
#: epochs at the paper's lr 1e-4 and batch 1000. No flips: a mirrored digit is another symbol.
QUALITY_CONFIG = dict(
    n_clusters=10,
    backbone="mlp",
    flip=False,
    pretext_epochs=40,
    pretext_batch_size=256,
    max_epochs=20,
    lr=1e-3,
    n_heads=3,
    augmentation="simclr",
    self_labeling_epochs=20,
    self_labeling_batch_size=1000,
    self_labeling_lr=1e-4,
    random_state=0,
)
