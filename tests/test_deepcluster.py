"""Tests of DeepClusterer (Caron et al., ECCV 2018) and of its Power Iteration Clustering."""

import time
import tracemalloc

import numpy as np
import pytest
import torch
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits, make_blobs
from sklearn.metrics import adjusted_rand_score, homogeneity_score

from skdeepcluster import DeepClusterer, load_digits_images
from skdeepcluster.kmeans import pca_whiten, train_pca_whitening
from skdeepcluster.methods.deepcluster import uniform_cluster_sampler
from skdeepcluster.metrics import clustering_accuracy_score
from skdeepcluster.nn.backbones import SmallCNN
from skdeepcluster.pic import knn_graph, pic_basins, pic_power_iteration, power_iteration_clustering

# Behaviour tests here fit 1-4 epochs on a few hundred samples: a (partly) collapsed
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
    defaults = dict(n_clusters=3, max_epochs=2, batch_size=16, n_components=8, random_state=0)
    return DeepClusterer(**{**defaults, **params})


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images * 255 / 16).astype(np.uint8), data.data / 16, data.target


# ---------------------------------------------------------------- components
def test_uniform_cluster_sampler_balances_unbalanced_clusters():
    labels = torch.cat([torch.zeros(5000), torch.ones(40), torch.full((5,), 2.0)]).long()
    generator = torch.Generator().manual_seed(0)
    draws = uniform_cluster_sampler(labels, labels.numel(), generator)
    assert draws.shape == (labels.numel(),)
    assert 0 <= int(draws.min()) and int(draws.max()) < labels.numel()
    counts = torch.bincount(labels[draws], minlength=3).double()
    per_label = labels.numel() / 3
    assert torch.all((counts - per_label).abs() <= 0.05 * per_label), counts
    # The large cluster is drawn without replacement, the small ones with replacement.
    big = draws[labels[draws] == 0]
    assert big.unique().numel() == big.numel()
    assert draws[labels[draws] == 2].unique().numel() == 5


def test_uniform_cluster_sampler_rejects_label_gaps():
    with pytest.raises(ValueError, match="without gaps"):
        uniform_cluster_sampler(torch.tensor([0, 0, 2]), 3, torch.Generator())


def test_pca_whitening_whitens_and_survives_rank_deficiency():
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    X = rng.normal(size=(2000, 6)) @ mixing + 100.0  # correlated, far from the origin
    matrix = train_pca_whitening(X, 6)
    projected = matrix.apply(np.ascontiguousarray(X, np.float32)).astype(np.float64)
    covariance = np.cov(projected, rowvar=False)
    np.testing.assert_allclose(covariance / covariance[0, 0], np.eye(6), atol=1e-2)
    # Rank-deficient input: a constant column and fewer samples than dimensions.
    Y = rng.normal(size=(10, 30))
    Y[:, 4] = 3.0
    reduced, _ = pca_whiten(Y, matrix=train_pca_whitening(Y, 256))
    assert reduced.shape == (10, 10)
    assert np.isfinite(reduced).all()
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, rtol=1e-5)


def test_knn_graph_is_sparse_symmetric_with_gaussian_weights():
    X = np.random.default_rng(0).normal(size=(300, 8))
    graph = knn_graph(X, n_neighbors=5, sigma=0.2)
    assert sparse.issparse(graph)
    assert graph.nnz <= 2 * 300 * 5
    assert abs(graph - graph.T).max() < 1e-12
    assert graph.diagonal().max() == 0
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    rows, cols = graph.nonzero()
    distance2 = np.square(unit[rows] - unit[cols]).sum(1)
    weights = np.asarray(graph[rows, cols]).ravel()
    # Mutual neighbours appear in G and Gᵀ: weight exp(-d²/σ²) once or twice.
    single = np.exp(-distance2 / 0.04)
    assert np.all(np.isclose(weights, single) | np.isclose(weights, 2 * single))


def test_pic_basins_follow_steepest_neighbour_to_local_maxima():
    # A path 0-1-2-3-4 with v peaking at 1 and at 4: two basins {0, 1, 2} and {3, 4}.
    path = sparse.diags([np.ones(4), np.ones(4)], [-1, 1], shape=(5, 5)).tocsr()
    v = np.array([0.1, 0.3, 0.2, 0.15, 0.25])
    labels = pic_basins(path, v)
    assert labels.tolist() == [0, 0, 0, 1, 1]
    # The power iteration keeps an L1-normalised positive vector.
    v = pic_power_iteration(path, alpha=1e-3, n_iter=200)
    assert v.shape == (5,) and np.isclose(v.sum(), 1.0) and (v > 0).all()


def test_pic_finds_well_separated_blobs():
    X, y = make_blobs(2000, n_features=16, centers=5, cluster_std=0.1, random_state=0)
    # Paper's parameters: PIC over-segments (local maxima of a 5-NN graph), but never merges
    # two blobs: every cluster found lies inside one blob.
    labels = power_iteration_clustering(X)
    assert homogeneity_score(y, labels) == pytest.approx(1.0)
    assert 5 <= labels.max() + 1 <= 60
    # A denser graph smooths v: one local maximum per blob, up to a stray one.
    labels = power_iteration_clustering(X, n_neighbors=50)
    assert 5 <= labels.max() + 1 <= 6
    assert adjusted_rand_score(y, labels) > 0.95


def test_pic_memory_is_linear_in_n():
    n, k = 20_000, 5
    X = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    tracemalloc.start()
    graph = knn_graph(X, n_neighbors=k)
    labels = pic_basins(graph, pic_power_iteration(graph))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert graph.nnz <= n * k * 2
    assert labels.shape == (n,)
    # A dense n×n float64 matrix would need 3.2 GB; the sparse pipeline stays under 40 MB.
    assert peak < 40 * 2**20, peak


# ---------------------------------------------------------------- estimator behaviour
def test_outputs_are_consistent_on_features():
    X, _ = make_blobs(120, n_features=5, centers=3, random_state=0)
    model = _small(max_epochs=3).fit(X)
    np.testing.assert_array_equal(model.labels_, model.predict(X))
    Z = model.transform(X)
    assert Z.shape == (120, 8) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, rtol=1e-5)
    assert model.cluster_centers_.shape == (model.n_clusters_found_, 8)
    # predict is the nearest centroid in the transform space.
    distances = ((Z[:, None, :] - model.cluster_centers_[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(distances.argmin(1), model.labels_)
    assert model.score(X) == pytest.approx(-distances.min(1).mean(), rel=1e-4)
    np.testing.assert_allclose(model.inertia_, distances.min(1).sum(), rtol=1e-4)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(1), model.labels_)
    assert (model.pseudo_labels_ == model.labels_).mean() > 0.99
    history = model.history_
    assert [h["stage"] for h in history] == ["deepcluster"] * 3 + ["final_clustering"]
    assert np.isnan(history[0]["nmi_previous"]) and 0 <= history[1]["nmi_previous"] <= 1
    for entry in history:
        assert sum(entry["cluster_sizes"]) == 120
        assert entry["objective"] > 0
        for key in ("seconds_features", "seconds_clustering"):
            assert entry[key] >= 0
    assert all(np.isfinite(h["loss"]) for h in history[:-1])


def test_reassign_every_other_epoch():
    X, _ = make_blobs(60, n_features=4, centers=3, random_state=0)
    model = _small(max_epochs=4, reassign=2).fit(X)
    reassigned = [not np.isnan(h["objective"]) for h in model.history_]
    assert reassigned == [True, False, True, False, True]


def test_reassignments_keep_the_best_of_n_init_kmeans_runs(digits):
    """Every reassignment keeps the lowest objective of ``n_init`` faiss runs: the first one
    clusters the same untrained features whatever ``n_init`` is, and faiss' first run uses the
    same seed, so more runs can only lower its objective (here they do)."""
    X = digits[1]
    objectives = [
        DeepClusterer(n_clusters=10, max_epochs=1, batch_size=64, n_init=n, random_state=0)
        .fit(X).history_[0]["objective"]
        for n in (1, 5)
    ]
    assert objectives[1] < objectives[0] - 1e-3, objectives


def test_pic_clustering_reports_the_clusters_it_finds():
    X, _ = make_blobs(300, n_features=6, centers=4, cluster_std=0.3, random_state=0)
    model = _small(clustering="pic", n_clusters=4, max_epochs=2).fit(X)
    assert model.n_clusters_found_ == model.history_[-1]["n_clusters_found"]
    assert model.cluster_centers_.shape[0] == model.n_clusters_found_
    assert model.n_clusters_found_ >= 2
    np.testing.assert_array_equal(model.labels_, model.predict(X))
    assert model.predict_proba(X).shape == (300, model.n_clusters_found_)


@pytest.mark.parametrize(
    "params, X, match",
    [
        (dict(crop_scale=(0.5, 0.2)), np.random.rand(20, 4), "crop_scale"),
        (dict(crop_scale=(0.0, 1.0)), np.random.rand(20, 4), "crop_scale"),
        (dict(clustering="pic", n_neighbors=20), np.random.rand(20, 4), "n_neighbors"),
        (dict(n_pseudo_labels=30), np.random.rand(20, 4), "n_pseudo_labels"),
        (dict(clustering="spectral"), np.random.rand(20, 4), "clustering"),
        (dict(backbone="small_vgg"), np.random.rand(20, 4), "needs image input"),
    ],
)
def test_bad_input_is_rejected_before_training(params, X, match):
    with pytest.raises(ValueError, match=match):
        _small(**params).fit(X)


def test_divergence_is_reported():
    X = np.random.default_rng(0).normal(size=(64, 4))
    with pytest.raises(FloatingPointError, match="diverged"):
        _small(lr=1e12, max_epochs=3).fit(X)


# ---------------------------------------------------------------- anti-collapse and quality
def test_anti_collapse_machinery_on_digits(digits):
    """Uniform sampling over pseudo-labels (Sec. 3.3) against a plain shuffle, digits features.

    What the data shows: with the sampler every reassignment and the final clustering use all
    K clusters. Without it, on digits, the partition does not collapse either: faiss' splitting
    of empty clusters and the PCA-whitening before k-means re-balance whatever the network
    does (the smallest cluster keeps more than 1% of the samples). The sampler's own effect —
    balanced pseudo-labels in the training batches, whatever the cluster sizes — is what the
    test checks next, on this run's last pseudo-labels.
    """
    _, X, _ = digits
    params = dict(n_clusters=10, n_components=10, max_epochs=4, batch_size=64, random_state=0)
    uniform = DeepClusterer(uniform_sampling=True, **params).fit(X)
    shuffled = DeepClusterer(uniform_sampling=False, **params).fit(X)
    for model in (uniform, shuffled):
        assert np.unique(model.labels_).size == 10
        for entry in model.history_:
            assert entry["n_clusters_found"] == 10
            assert min(entry["cluster_sizes"]) > 0.01 * len(X)
    # The sampler on the last (unbalanced) pseudo-labels: each cluster gets ~n/K draws, while
    # a shuffle gives each its own size.
    sizes = np.array(uniform.history_[-2]["cluster_sizes"])
    labels = torch.from_numpy(np.repeat(np.arange(10), sizes))
    draws = uniform_cluster_sampler(labels, len(X), torch.Generator().manual_seed(0))
    drawn = torch.bincount(labels[draws], minlength=10).numpy()
    assert np.abs(drawn - len(X) / 10).max() <= len(X) / 10 * 0.02 + 1
    assert drawn.std() < sizes.std() / 5


def test_quality_on_digits_images(digits):
    """DeepCluster on 8×8 digit images beats k-means on the same pixels by >= 5 points.

    The configuration of the DeepClusterer Notes ("Small data"): a small CNN after the Sobel
    filter, 10 whitened components, batch 32, 25 epochs, and the small-image affine
    augmentation instead of the paper's crops, and the authors' one k-means run per
    reassignment (``n_init=1``; the final clustering then also runs once). Six initialisations
    of it (seeds 0-5, the final clustering best of 10) reached 0.914, 0.801, 0.936, 0.850,
    0.960, 0.878 (k-means 0.79); this test pins seed 0. The defaults' 10 runs per reassignment
    need more epochs than a test affords: the defaults with ``max_epochs=25`` gave 0.965 / 0.772
    on seeds 0 / 1, and this configuration with 10 runs 0.785 on seed 0; the defaults are
    measured in ``doc/benchmarks.rst``.
    """
    _, pixels, y = digits
    images, _ = load_digits_images()  # rounded like the benchmark's and the example's images
    kmeans_labels = KMeans(10, n_init=10, random_state=0).fit_predict(pixels)
    kmeans_acc = clustering_accuracy_score(y, kmeans_labels)
    torch.manual_seed(0)  # the user backbone's initial weights
    backbone = SmallCNN(2, width=16, image_size=8)  # 2 input channels: the Sobel filter's output
    start = time.perf_counter()
    model = DeepClusterer(
        n_clusters=10,
        backbone=backbone,
        sobel=True,
        n_components=10,
        augmentation="affine",
        batch_size=32,
        max_epochs=25,
        n_init=1,
        random_state=0,
    ).fit(images)
    seconds = time.perf_counter() - start
    accuracy = clustering_accuracy_score(y, model.labels_)
    assert kmeans_acc == pytest.approx(0.79, abs=0.02)
    assert accuracy >= kmeans_acc + 0.05, (accuracy, kmeans_acc, seconds)


def test_auto_parameters_follow_the_data_and_give_the_papers_values_at_its_scale(
    digits, monkeypatch
):
    from skdeepcluster.methods import deepcluster as module

    calls = {"affine": 0, "crop": 0}
    for name, function in (("affine", "small_image_affine"), ("crop", "weak_augment")):
        original = getattr(module, function)

        def counting(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(module, function, counting)

    # 8x8 digits: as many components as clusters, 32+ steps per epoch, the affine warp
    model = DeepClusterer(n_clusters=10, max_epochs=1, random_state=0).fit(digits[0])
    assert (model.n_components_, model.batch_size_, model.augmentation_) == (10, 56, "affine")
    assert model.cluster_centers_.shape == (10, 10)
    assert calls["affine"] == -(-1797 // 56) and calls["crop"] == 0

    # 32 px images: the paper's crops; explicit values are kept as given
    images = np.random.RandomState(0).randint(0, 256, (40, 3, 32, 32)).astype(np.uint8)
    model = DeepClusterer(n_clusters=3, max_epochs=1, n_components=4, random_state=0).fit(images)
    assert (model.n_components_, model.batch_size_, model.augmentation_) == (4, 16, "crop")
    assert calls["crop"] == 3
    model = DeepClusterer(n_clusters=3, max_epochs=1, batch_size=20, augmentation="none",
                          n_pseudo_labels=5, random_state=0).fit(images)
    assert (model.n_components_, model.batch_size_, model.augmentation_) == (5, 20, "none")
    # the crops from 28 px on (Fashion-MNIST's size), the affine warp below
    model = DeepClusterer(n_clusters=3)
    for side, expected in ((27, "affine"), (28, "crop")):
        grey = np.zeros((40, side, side), dtype=np.uint8)
        model._validate_input(grey, reset=True)
        model._resolve_auto(grey)
        assert model.augmentation_ == expected, side

    # the paper's scale: 256 components for many pseudo-labels (and for PIC), batch 256 from
    # 8 192 samples on
    features = np.random.RandomState(0).normal(size=(8192, 4)).astype(np.float32)
    model = DeepClusterer(n_clusters=3, n_pseudo_labels=300, max_epochs=1, n_init=1,
                          random_state=0)
    model._validate_input(features, reset=True)
    model._resolve_auto(features)
    assert (model.n_components_, model.batch_size_, model.augmentation_) == (256, 256, "none")
    model.set_params(n_pseudo_labels=None, clustering="pic")._resolve_auto(features[:8191])
    assert (model.n_components_, model.batch_size_) == (256, 255)


def test_augmentation_options(digits):
    images = digits[0][:120]
    seen = []

    def record(batch, generator):
        seen.append(batch.shape)
        return batch.flip(3)

    for augmentation in ("affine", "none", record):
        model = _small(augmentation=augmentation, max_epochs=1).fit(images)
        assert model.labels_.shape == (120,)
    assert seen and all(shape[1:] == (1, 8, 8) for shape in seen)  # the images, before Sobel
    with pytest.raises(ValueError, match="shape of its input batch"):
        _small(augmentation=lambda batch, generator: batch[:1], max_epochs=1).fit(images)
