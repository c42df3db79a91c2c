import numpy as np
import pytest

from skdeepcluster import mine_neighbors, neighbor_recall


def brute_force(X, k, include_self):
    unit = X / np.linalg.norm(X, axis=1, keepdims=True)
    similarity = unit @ unit.T
    if not include_self:
        np.fill_diagonal(similarity, -np.inf)
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.sort(similarity, axis=1)[:, ::-1][:, :k]


@pytest.mark.parametrize("include_self", [False, True])
@pytest.mark.parametrize("batch_size", [7, 64, 4096])  # one chunk and several chunks
def test_matches_numpy_brute_force(include_self, batch_size):
    X = np.random.default_rng(0).normal(size=(150, 12))
    indices, sims = mine_neighbors(
        X, 5, include_self=include_self, batch_size=batch_size, return_similarity=True
    )
    expected, expected_sims = brute_force(X, 5, include_self)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(sims, expected_sims, atol=1e-5)


def test_self_is_excluded_in_every_chunk():
    # the reference code masked the wrong diagonal after the first chunk
    X = np.random.default_rng(1).normal(size=(1000, 8))
    indices = mine_neighbors(X, 10, batch_size=128)
    assert not (indices == np.arange(1000)[:, None]).any()
    with_self = mine_neighbors(X, 10, include_self=True, batch_size=128)
    np.testing.assert_array_equal(with_self[:, 0], np.arange(1000))


def test_duplicates_never_return_self():
    X = np.repeat(np.random.default_rng(2).normal(size=(20, 4)), 5, axis=0)
    indices = mine_neighbors(X, 6, batch_size=16)
    assert not (indices == np.arange(100)[:, None]).any()
    assert indices.shape == (100, 6)


def test_approximate_index_recall_and_input_untouched():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2000, 16)).astype(np.float32)
    X_copy = X.copy()
    exact = mine_neighbors(X, 10, index="exact")
    approximate = mine_neighbors(X, 10, index="approximate")
    recall = np.mean(
        [len(np.intersect1d(a, b)) / 10 for a, b in zip(exact, approximate, strict=True)]
    )
    assert recall > 0.9
    assert not (approximate == np.arange(2000)[:, None]).any()
    np.testing.assert_array_equal(X, X_copy)


def test_errors():
    X = np.ones((5, 2))
    with pytest.raises(ValueError, match="n_neighbors=5 must be between 1 and 4"):
        mine_neighbors(X, 5)
    with pytest.raises(ValueError, match="index must be"):
        mine_neighbors(X, 2, index="ivf")


# ----------------------------------------------------------------------------- out of core


def mixture(n, d=64, n_clusters=10, seed=0):
    """Clustered vectors like benchmarks/bench_scale.py's: centres on the sphere, a 8-d
    Gaussian per cluster and isotropic noise, random norms."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = np.linalg.qr(rng.normal(size=(n_clusters, d, 8)))[0]
    labels = rng.integers(n_clusters, size=n)
    local = np.einsum("ndi,ni->nd", bases[labels], 0.2 * rng.normal(size=(n, 8)))
    X = centres[labels] + local + 0.03 * rng.normal(size=(n, d))
    return (X * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_memmap_input_gives_the_in_memory_neighbours_and_is_not_modified(tmp_path, dtype):
    X = mixture(3000).astype(dtype)
    path = tmp_path / "X.npy"
    np.save(path, X)
    before = path.read_bytes()
    memmap = np.load(path, mmap_mode="r")  # read-only: any write would raise
    assert isinstance(memmap, np.memmap)
    expected, expected_sims = mine_neighbors(X, 10, batch_size=256, return_similarity=True)
    found, sims = mine_neighbors(memmap, 10, batch_size=256, return_similarity=True)
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_array_equal(sims, expected_sims)
    writable = np.load(path, mmap_mode="r+")
    mine_neighbors(writable, 10, batch_size=256)
    del writable
    assert path.read_bytes() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_no_full_size_copy_of_the_input(tmp_path, dtype):
    # numpy reports its allocations to tracemalloc (faiss' own C++ index is not seen): a
    # normalised float32 copy of X would show as a peak of at least 4 * n * d bytes.
    import tracemalloc

    n, d = 5000, 256
    np.save(tmp_path / "X.npy", mixture(n, d).astype(dtype))
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        neighbors = mine_neighbors(X, 10, index="exact", batch_size=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < n * d * X.itemsize / 2, peak  # output 0.4 MB + chunks; X is 2.6 or 5.1 MB
    assert neighbors.shape == (n, 10)


def test_approximate_index_recall_on_clusters_and_deterministic():
    from skdeepcluster.neighbors import _ivf_shape

    X = mixture(20_000)
    assert _ivf_shape(len(X))[0] > 1  # an inverted file with several cells, not a flat scan
    approximate = mine_neighbors(X, 20, index="approximate")
    recall = neighbor_recall(X, approximate, n_queries=500, random_state=0)
    assert recall >= 0.95, recall  # measured 0.977 (nlist 512, nprobe 16)
    assert not (approximate == np.arange(len(X))[:, None]).any()
    np.testing.assert_array_equal(mine_neighbors(X, 20, index="approximate"), approximate)


def test_short_inverted_lists_are_searched_again(monkeypatch):
    # 16 cells of ~25 vectors, 1 scanned: most queries would get fewer than 51 candidates
    import skdeepcluster.neighbors as neighbors_module

    monkeypatch.setattr(neighbors_module, "_ivf_shape", lambda n: (16, 1))
    X = mixture(400)
    found = mine_neighbors(X, 50, index="approximate")
    assert (found >= 0).all()
    assert neighbor_recall(X, found, n_queries=400) >= 0.95


def test_neighbor_recall():
    X = mixture(2000)
    exact = mine_neighbors(X, 10, index="exact")
    assert neighbor_recall(X, exact, n_queries=300, random_state=0) == 1.0
    shuffled = exact[np.random.default_rng(0).permutation(len(X))]
    assert neighbor_recall(X, shuffled, n_queries=300, random_state=0) < 0.1
    half = exact.copy()
    half[:, 5:] = shuffled[:, 5:]
    assert 0.45 <= neighbor_recall(X, half, n_queries=300, random_state=0) <= 0.55
    # repeated, missing and self entries are misses
    bad = exact.copy()
    bad[:, 1] = bad[:, 0]
    bad[:, 2] = -1
    bad[:, 3] = np.arange(len(X))
    assert neighbor_recall(X, bad, n_queries=300, random_state=0) == pytest.approx(0.7)
    # include_self: the plain top-k, self first
    with_self = mine_neighbors(X, 10, include_self=True)
    assert neighbor_recall(X, with_self, include_self=True) == 1.0
    # lists of some queries only
    queries = np.array([5, 1999, 0, 700])
    assert neighbor_recall(X, exact[queries], queries=queries) == 1.0
    assert neighbor_recall(X, exact[queries[::-1]], queries=queries) < 0.2
    with pytest.raises(ValueError, match="pass queries="):
        neighbor_recall(X, exact[:10])


def test_neighbor_recall_counts_ties_as_hits():
    # every sample has 4 exact duplicates: any 4 of them (or their order) is a correct list
    X = np.repeat(np.random.default_rng(4).normal(size=(50, 8)), 5, axis=0)
    found = mine_neighbors(X, 4)
    swapped = found[:, ::-1]
    assert neighbor_recall(X, swapped) == 1.0


class _GpuRecorder:
    def __init__(self):
        self.moved = []

    def __call__(self, index):
        self.moved.append((type(index).__name__, index.is_trained, index.ntotal))
        return index  # the CPU index stands in for the GPU one


@pytest.mark.parametrize("index", ["exact", "approximate"])
def test_gpu_is_used_when_faiss_sees_one(monkeypatch, index):
    import faiss

    X = mixture(3000)
    expected = mine_neighbors(X, 5, index=index)
    recorder = _GpuRecorder()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", recorder)
    np.testing.assert_array_equal(mine_neighbors(X, 5, index=index), expected)
    # moved once, trained and still empty: the GPU fills and searches it
    name = "IndexFlatIP" if index == "exact" else "IndexIVFScalarQuantizer"
    assert recorder.moved == [(name, True, 0)]
    mine_neighbors(X, 5, index=index, use_gpu=False)
    assert len(recorder.moved) == 1


def test_no_gpu(monkeypatch):
    import faiss

    def fail(index):
        raise AssertionError("moved to a GPU")

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fail)
    X = mixture(100)
    assert mine_neighbors(X, 3).shape == (100, 3)  # "auto": the CPU
    with pytest.raises(ValueError, match="faiss sees no GPU"):
        mine_neighbors(X, 3, use_gpu=True)
    with pytest.raises(ValueError, match="use_gpu must be"):
        mine_neighbors(X, 3, use_gpu="cuda")
