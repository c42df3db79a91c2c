import numpy as np
import pytest

from skdeepcluster import mine_neighbors


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
