"""k-nearest-neighbour mining by cosine similarity with faiss, in bounded memory.

The vectors are L2-normalised, so the inner product is the cosine similarity. Queries run in
chunks of ``batch_size`` rows: memory is O(n * d + batch_size * k), never O(n^2).
"""

import numpy as np

__all__ = ["mine_neighbors"]

#: Above this many samples ``index="auto"`` switches from the exact to the approximate index.
APPROXIMATE_INDEX_THRESHOLD = 200_000


def _normalized_float32(X, batch_size):
    X = np.asarray(X)
    out = np.empty(X.shape, dtype=np.float32)
    for start in range(0, X.shape[0], batch_size):
        chunk = np.asarray(X[start : start + batch_size], dtype=np.float32)
        norms = np.linalg.norm(chunk, axis=1, keepdims=True)
        out[start : start + batch_size] = chunk / np.maximum(norms, 1e-12)
    return out


def _build_index(vectors, index, n_neighbors):
    import faiss  # here, not at module level: importing skdeepcluster stays fast (issue 15)

    n, d = vectors.shape
    if index == "auto":
        index = "approximate" if n > APPROXIMATE_INDEX_THRESHOLD else "exact"
    if index == "exact":
        faiss_index = faiss.IndexFlatIP(d)
    elif index == "approximate":
        # HNSW graph on inner products: no training step, good recall at k <= 100.
        faiss_index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        faiss_index.hnsw.efConstruction = 80
        faiss_index.hnsw.efSearch = max(64, 2 * n_neighbors)
    else:
        raise ValueError(f"index must be 'auto', 'exact' or 'approximate', got {index!r}.")
    faiss_index.add(vectors)
    return faiss_index


def mine_neighbors(
    X,
    n_neighbors,
    *,
    include_self=False,
    index="auto",
    batch_size=4096,
    return_similarity=False,
):
    """Find the ``n_neighbors`` most cosine-similar samples of every sample.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The vectors (not modified; a normalised float32 copy is indexed).
    n_neighbors : int
        Number of neighbours returned per sample.
    include_self : bool, default=False
        If False, the sample itself is removed from its own list (even when duplicates tie
        with it). If True, the list is the plain top-``n_neighbors`` search, which normally
        starts with the sample itself.
    index : {"auto", "exact", "approximate"}, default="auto"
        ``"exact"``: faiss ``IndexFlatIP``. ``"approximate"``: faiss HNSW graph on inner
        products. ``"auto"``: exact up to 200 000 samples, approximate above.
    batch_size : int, default=4096
        Number of queries searched at once; bounds the memory of the search.
    return_similarity : bool, default=False
        Also return the cosine similarities.

    Returns
    -------
    indices : ndarray of shape (n_samples, n_neighbors), int64
        Row ``i`` holds the neighbours of sample ``i``, most similar first.
    similarities : ndarray of shape (n_samples, n_neighbors), float32
        Only with ``return_similarity=True``.
    """
    vectors = _normalized_float32(X, batch_size)
    n = vectors.shape[0]
    n_available = n - 1 if not include_self else n
    if not 1 <= n_neighbors <= n_available:
        raise ValueError(
            f"n_neighbors={n_neighbors} must be between 1 and {n_available} for "
            f"n_samples={n} (include_self={include_self})."
        )
    faiss_index = _build_index(vectors, index, n_neighbors)
    n_search = n_neighbors if include_self else n_neighbors + 1
    indices = np.empty((n, n_neighbors), dtype=np.int64)
    similarities = np.empty((n, n_neighbors), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        sims, found = faiss_index.search(vectors[start:stop], n_search)
        if not include_self:
            # Drop exactly one entry per row: the query itself when it was found, else the last
            # (the query tied with duplicates beyond the list).
            drop = found == np.arange(start, stop)[:, None]
            first = drop.argmax(axis=1)
            has_self = drop.any(axis=1)
            drop[:] = False
            drop[np.arange(stop - start), np.where(has_self, first, n_search - 1)] = True
            found = found[~drop].reshape(stop - start, n_neighbors)
            sims = sims[~drop].reshape(stop - start, n_neighbors)
        indices[start:stop] = found
        similarities[start:stop] = sims
    if (indices < 0).any():
        raise RuntimeError(
            "The approximate index returned fewer neighbours than asked; use index='exact'."
        )
    if return_similarity:
        return indices, similarities
    return indices
