"""Tests of ADCClusterer and its losses (association, norm, trafo)."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skdeepcluster import ADCClusterer, clustering_accuracy_score
from skdeepcluster.nn.losses import (
    association_loss,
    association_probabilities,
    norm_loss,
    trafo_loss,
    visit_loss,
    walker_loss,
)

# Behaviour tests here fit 1-4 epochs on a few dozen samples: a (partly) collapsed
# clustering and faiss' few-points-per-centroid notice are expected and beside their point.
# Only these known warnings are ignored (pytest.warns still sees them where a test asserts
# one); quality tests check accuracy.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:.*the clustering has \\(partly\\) collapsed:sklearn.exceptions.ConvergenceWarning"
    ),
    pytest.mark.filterwarnings("ignore:.*fewer than 39 points per cluster:UserWarning"),
]


def _small(**params):
    defaults = dict(
        n_clusters=3,
        warmup_epochs=1,
        max_epochs=1,
        batch_size=32,
        embedding_dim=8,
        n_augmentations=2,
        random_state=0,
    )
    return ADCClusterer(**{**defaults, **params})


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images * 255 / 16).astype(np.uint8), data.target


# ---------------------------------------------------------------------- losses
def _softmax(rows):
    e = np.exp(rows - rows.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_association_loss_hand_computed():
    # Two orthonormal "labelled" points and two identical "unlabelled" ones: every quantity
    # has a closed form with s = e / (1 + e).
    a = torch.eye(2, dtype=torch.float64)
    b = torch.eye(2, dtype=torch.float64)
    labels = torch.tensor([0, 1])
    s = math.e / (1 + math.e)
    round_trip_same = s**2 + (1 - s) ** 2
    expected_walker = -math.log(round_trip_same + 1e-8)
    expected_visit = math.log(2)  # both columns of P_ab have mean 1/2
    p_ab, p_aba = association_probabilities(a, b)
    assert p_aba[0, 0].item() == pytest.approx(round_trip_same)
    assert walker_loss(p_aba, labels).item() == pytest.approx(expected_walker)
    assert visit_loss(p_ab).item() == pytest.approx(expected_visit)
    value = association_loss(a, b, labels, visit_weight=0.3).item()
    assert value == pytest.approx(expected_walker + 0.3 * expected_visit)


def test_association_loss_matches_definition_with_shared_labels():
    # Three labelled rows, two sharing a label (target 1/2 on their pair), three unlabelled.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    labels = np.array([0, 0, 1])
    match = a @ b.T
    p_ab, p_ba = _softmax(match), _softmax(match.T)
    p_aba = p_ab @ p_ba
    target = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    walker = -(target * np.log(p_aba + 1e-8)).sum(axis=1).mean()
    visit = -np.log(p_ab.mean(axis=0) + 1e-8).mean()
    value = association_loss(
        torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(labels), visit_weight=0.7
    )
    assert value.item() == pytest.approx(walker + 0.7 * visit, rel=1e-10)


def test_visit_loss_minimal_when_visited_equally():
    n_b = 5
    uniform = torch.full((4, n_b), 1.0 / n_b)
    assert visit_loss(uniform).item() == pytest.approx(math.log(n_b), rel=1e-6)
    # rows that are not uniform but whose mean is: still minimal
    balanced = torch.eye(n_b)
    assert visit_loss(balanced).item() == pytest.approx(math.log(n_b), rel=1e-6)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        p_ab = torch.softmax(3 * torch.randn(4, n_b, generator=generator), dim=1)
        assert visit_loss(p_ab).item() > math.log(n_b)
    # one sample never visited: large loss
    skewed = torch.zeros(4, n_b)
    skewed[:, 0] = 1.0
    assert visit_loss(skewed).item() > 10


def test_walker_loss_small_for_consistent_round_trips():
    # Well-separated classes: round trips come back to the same class, walker ≈ entropy of T.
    centres = 10 * torch.eye(3)
    a = centres.repeat_interleave(2, dim=0)
    b = centres.repeat_interleave(4, dim=0)
    labels = torch.arange(3).repeat_interleave(2)
    _, p_aba = association_probabilities(a, b)
    assert walker_loss(p_aba, labels).item() == pytest.approx(math.log(2), abs=1e-3)
    shuffled = torch.tensor([0, 1, 2, 0, 1, 2])
    assert walker_loss(p_aba, shuffled).item() > 5


def test_association_gradients_flow_to_centroids():
    generator = torch.Generator().manual_seed(0)
    centroids = torch.randn(6, 8, generator=generator, requires_grad=True)
    embeddings = torch.randn(20, 8, generator=generator, requires_grad=True)
    labels = torch.arange(3).repeat_interleave(2)
    association_loss(centroids, embeddings, labels).backward()
    for tensor in (centroids, embeddings):
        assert tensor.grad is not None
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


def test_association_loss_finite_at_extremes():
    a = 1e3 * torch.eye(3, 4)
    b = -1e3 * torch.eye(5, 4)
    value = association_loss(a, b, torch.tensor([0, 1, 2]))
    assert torch.isfinite(value)


def test_norm_loss():
    vectors = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])
    assert norm_loss(vectors).item() == pytest.approx(16.0 + 0.0 + 1.0)
    assert norm_loss(vectors, target=5.0).item() == pytest.approx(0.0 + 16.0 + 25.0)


def test_trafo_loss_hand_computed():
    z = torch.tensor([[1.0, 0.0]])
    z_t = torch.tensor([[0.0, 1.0]])
    o = torch.tensor([[0.0, 0.0]])  # uniform over 2 clusters: CE = log 2 for every pair
    o_t = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    p_t = np.array([0.75, 0.25])
    ce = np.array(
        [
            [math.log(2), -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))],
            [math.log(2), -(p_t * np.log(p_t)).sum()],
        ]
    )
    similarity = np.array([[1.0, 0.0], [0.0, 1.0]])
    expected = np.abs(1 - similarity - ce).mean()
    assert trafo_loss(z, z_t, o, o_t).item() == pytest.approx(expected, rel=1e-6)


def test_trafo_loss_prefers_consistent_pairs():
    # Same cluster and confident: CE ≈ 0, so unit similar embeddings give ≈ 0 loss.
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1]]), dim=1)
    o = torch.tensor([[20.0, 0.0], [20.0, 0.0]])
    assert trafo_loss(z, z, o, o).item() < 0.02
    assert trafo_loss(z, -z, o, o).item() > 0.9
    # no NaN at extreme logits
    assert torch.isfinite(trafo_loss(z, z, 1e4 * o, -1e4 * o))


# ---------------------------------------------------------------------- estimator
def test_fit_attributes_and_history():
    X = np.random.default_rng(0).normal(size=(60, 5))
    model = _small(delta=1.0, max_epochs=2, n_centroids_per_cluster=4).fit(X)
    assert model.labels_.shape == (60,)
    np.testing.assert_array_equal(model.labels_, model.predict(X))
    proba = model.predict_proba(X)
    assert proba.shape == (60, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), model.labels_)
    assert model.transform(X).shape == (60, 8)
    assert model.cluster_centers_.shape == (3, 8)
    assert model.centroids_.shape == (12, 8)
    np.testing.assert_allclose(
        model.cluster_centers_, model.centroids_.reshape(3, 4, 8).mean(axis=1), rtol=1e-6
    )
    assert model.kmeans_labels_.shape == (60,)
    stages = [entry["stage"] for entry in model.history_]
    assert stages == ["warmup", "clustering", "clustering"]
    for entry in model.history_:
        for key in ("assoc_centroid", "assoc_aug", "norm", "classification", "trafo", "loss"):
            assert np.isfinite(entry[key])
    warmup, clustering = model.history_[0], model.history_[-1]
    assert warmup["assoc_centroid"] == warmup["classification"] == warmup["trafo"] == 0
    assert warmup["assoc_aug"] > 0
    for key in ("assoc_centroid", "assoc_aug", "classification", "trafo"):
        assert clustering[key] > 0


def _weighted_total(entry, beta, gamma=1e-5, alpha=1.0, delta=1.0, classification_weight=1.0):
    return (beta * entry["assoc_aug"] + gamma * entry["norm"] + alpha * entry["assoc_centroid"]
            + delta * entry["trafo"] + classification_weight * entry["classification"])


def test_defaults_are_the_papers_one_centroid_and_constant_beta():
    # the paper: one μ_k per cluster (Sec. 2.2), β = 0.9 kept after the warm-up (Sec. 3.1)
    X = np.random.default_rng(0).normal(size=(60, 5))
    model = _small(delta=1.0, max_epochs=2).fit(X)
    assert model.centroids_.shape == (3, 8)
    np.testing.assert_array_equal(model.cluster_centers_, model.centroids_)
    for entry in model.history_:  # the recorded total is the weighted sum of the terms
        assert entry["loss"] == pytest.approx(_weighted_total(entry, beta=0.9), rel=1e-5)
    # the authors' code values: 4 centroids per cluster, β × 0.2 after the warm-up
    code = _small(delta=1.0, max_epochs=2, n_centroids_per_cluster=4,
                  aug_weight_decay=0.2).fit(X)
    assert code.centroids_.shape == (12, 8)
    warmup, *clustering = code.history_
    assert warmup["loss"] == pytest.approx(_weighted_total(warmup, beta=0.9), rel=1e-5)
    for entry in clustering:
        assert entry["loss"] == pytest.approx(_weighted_total(entry, beta=0.18), rel=1e-5)


def test_centroids_are_trained_after_kmeans_initialisation():
    X = np.random.default_rng(1).normal(size=(80, 5))
    # Same seed: same warm-up and k-means initialisation; only the clustering stage differs.
    short = _small(max_epochs=1).fit(X)
    long = _small(max_epochs=3).fit(X)
    np.testing.assert_array_equal(short.kmeans_labels_, long.kmeans_labels_)
    assert np.abs(short.centroids_ - long.centroids_).max() > 1e-3
    # Without noise the copies of a centre get identical gradients and never separate: the
    # reason for ``centroid_noise``.
    exact = _small(centroid_noise=0.0, n_centroids_per_cluster=4).fit(X).centroids_.reshape(
        3, 4, 8
    )
    np.testing.assert_allclose(exact, np.broadcast_to(exact[:, :1], exact.shape), atol=1e-6)


def test_logit_layer_weight_decay_bounds_W_once_the_centroids_are_separated():
    """``L_classification`` sees only the centroids; once W separates them the loss vanishes
    and Adam grows W without bound, unless W has its own L2 penalty (the authors' 1e-4)."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(300, centers=3, n_features=6, random_state=0)
    params = dict(max_epochs=30, batch_size=20, lr=1e-2, lr_warmup_epochs=0, tol=None)
    norms, losses = {}, {}
    for decay in (0.0, 1e-4):
        model = _small(logits_weight_decay=decay, **params).fit(X)
        norms[decay] = float(model.module_.logits.weight.detach().norm())
        losses[decay] = model.history_[-1]["classification"]
    assert losses[0.0] < 1e-4  # the centroids are classified: the loss has saturated
    assert norms[1e-4] < 0.7 * norms[0.0], norms  # measured 3.4 against 6.6


def test_n_init_keeps_the_kmeans_run_with_the_lowest_objective(monkeypatch):
    from sklearn.datasets import load_digits

    from skdeepcluster import kmeans as kmeans_module
    from skdeepcluster.methods import adc

    X = load_digits().data.astype(np.float32)
    single = [kmeans_module.kmeans(X, 10, seed=s)[2] for s in range(4)]
    best = [kmeans_module.kmeans(X, 10, n_init=8, seed=s)[2] for s in range(4)]
    assert all(b <= o * (1 + 1e-6) for b, o in zip(best, single, strict=True))
    assert np.std(best) < np.std(single)  # 5 seeds, n_init=10: 0.1 % against 1.8 % of the mean
    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs["n_init"])
        return kmeans_module.kmeans(*args, **kwargs)

    monkeypatch.setattr(adc, "kmeans", recording)
    _small(n_init=3).fit(np.random.default_rng(2).normal(size=(50, 4)))
    assert calls == [3]


def test_ablation_options():
    X = np.random.default_rng(2).normal(size=(50, 4))
    no_kmeans = _small(kmeans_init=False).fit(X)
    assert no_kmeans.kmeans_labels_ is None
    no_aug = _small(beta=0.0).fit(X)
    assert all(entry["assoc_aug"] == 0 for entry in no_aug.history_)
    assert no_aug.history_[-1]["assoc_centroid"] > 0


def test_images_input_default_backbone(digits):
    images = digits[0][:40]
    model = ADCClusterer(
        n_clusters=4, warmup_epochs=1, max_epochs=1, batch_size=20, n_augmentations=1,
        embedding_dim=16, random_state=0,
    ).fit(images)
    assert type(model.module_.backbone).__name__ == "SmallCNN"
    assert model.transform(images).shape == (40, 16)


def test_flips_auto_from_32_pixels(digits, monkeypatch):
    from skdeepcluster.methods import adc as adc_module

    flips = []
    crop = adc_module.random_resized_crop
    monkeypatch.setattr(adc_module, "random_resized_crop", lambda x, generator, **kwargs: (
        flips.append(kwargs["flip_p"]) or crop(x, generator, **kwargs)))
    small = _small(n_augmentations=1).fit(digits[0][:40])  # 8 px: a mirrored digit is no digit
    assert small.flip_ is False and flips and set(flips) == {0.0}
    flips.clear()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 32, 32), dtype=np.uint8)
    large = _small(n_augmentations=1, backbone="small_cnn", batch_size=12).fit(images)
    assert large.flip_ is True and set(flips) == {0.5}  # the paper's flips on larger images
    assert _small(flip=True).fit(digits[0][:40]).flip_ is True  # an explicit value is kept
    assert _small().fit(digits[0][:40].reshape(40, -1) / 255.0).flip_ is False  # features


def test_rotation_auto_by_image_side(digits, monkeypatch):
    from skdeepcluster.methods import adc as adc_module

    angles = []
    affine = adc_module.random_affine
    monkeypatch.setattr(adc_module, "random_affine", lambda x, generator, **kwargs: (
        angles.append(kwargs["degrees"]) or affine(x, generator, **kwargs)))
    small = _small(n_augmentations=1).fit(digits[0][:40])  # 8 px: a weak turn moves little
    assert small.rotation_ == adc_module.SMALL_IMAGE_ROTATION == 20.0
    assert angles and set(angles) == {20.0}
    angles.clear()
    side = adc_module.ROTATION_MIN_SIDE
    images = np.random.default_rng(0).integers(0, 256, size=(24, side, side), dtype=np.uint8)
    large = _small(n_augmentations=1, batch_size=12).fit(images)
    assert large.rotation_ == adc_module.PAPER_ROTATION == 10.0 and set(angles) == {10.0}
    assert ADCClusterer().rotation == "auto"
    assert _small(rotation=10).fit(digits[0][:40]).rotation_ == 10  # an explicit value is kept
    features = digits[0][:40].reshape(40, -1) / 255.0
    assert _small().fit(features).rotation_ == 10.0  # features are not rotated; the paper's


def test_bad_parameters():
    # bad input common to all estimators (NaN, too few samples, ...): test_common.py
    X = np.random.default_rng(0).normal(size=(30, 4))
    for name in ("small_cnn", "small_vgg", "resnet18"):
        with pytest.raises(ValueError, match="needs image input"):
            _small(backbone=name).fit(X)
    with pytest.raises(ValueError, match="n_centroids_per_cluster"):
        _small(n_centroids_per_cluster=0).fit(X)
    with pytest.raises(ValueError, match="backbone"):
        _small(backbone="vgg").fit(X)
    with pytest.raises(ValueError, match="rotation"):
        _small(rotation="large").fit(X)


# ---------------------------------------------------------------------- quality
#: The quality test's configuration: the digits schedule of benchmarks/bench_adc.py, an MLP on
#: the 8×8 pixels (fast on CPU), no flips (a flipped digit is another symbol), 10 + 10 epochs of
#: 17 steps; with the authors' four centroids per cluster and β × 0.2 after the warm-up, the
#: defaults this test was calibrated with. Over seeds 0-2 the paper's defaults (one centroid,
#: constant β) score as well (0.841 ± 0.060 against 0.827 ± 0.060), but seed 0 draws 0.781
#: with them (0.899 with these), under k-means: one seed cannot tell the two apart (see the
#: estimator's Notes).
QUALITY_PARAMS = dict(
    n_clusters=10,
    backbone="mlp",
    warmup_epochs=10,
    max_epochs=10,
    flip=False,
    n_centroids_per_cluster=4,
    aug_weight_decay=0.2,
    random_state=0,
)


def test_digits_accuracy_beats_kmeans(digits):
    """Digits images, fixed seed: ADC beats k-means on the pixels (0.79 ACC) by ≥ 5 points."""
    images, target = digits
    model = ADCClusterer(**QUALITY_PARAMS).fit(images)
    accuracy = clustering_accuracy_score(target, model.labels_)
    assert accuracy >= 0.84, accuracy

