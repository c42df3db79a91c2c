"""k-nearest-neighbour mining by cosine similarity with faiss, out of core.

The input is read in chunks of ``batch_size`` rows, each chunk converted to float32 and
L2-normalised on the fly (the inner product of unit vectors is the cosine similarity), both
when the index is filled and when it is searched: an ``np.memmap`` is never loaded whole and
never modified. Memory is the faiss index, plus O(batch_size * d) for a chunk, plus the output
arrays; never O(n^2), and no normalised copy of the input.
"""

import numpy as np

__all__ = ["mine_neighbors", "neighbor_recall"]

#: Above this many samples ``index="auto"`` switches from the exact to the approximate index.
#: Measured at d = 384, k = 50, 2 threads: exact 112 CPU s at 100 000 and 474 at 200 000,
#: approximate 20 (recall 0.993) and 59 (recall 0.962) (doc/benchmarks.rst, "Scale").
APPROXIMATE_INDEX_THRESHOLD = 100_000

#: The approximate index: an inverted file of ``nlist`` k-means cells, each vector stored as 8-bit
#: scalar-quantised codes (one byte per feature, 4x smaller than float32), ``nprobe`` cells
#: scanned per query. Chosen by measurement at 1 M x 384 (doc/benchmarks.rst, "Scale").
_MAX_NLIST = 4096  # nlist: the power of two nearest 4 sqrt(n), at most n / 39 and _MAX_NLIST
_NPROBE_FRACTION = 1 / 128  # cells scanned per query, at least _MIN_NPROBE
_MIN_NPROBE = 16
_TRAIN_POINTS_PER_CELL = 40  # k-means training sample: 40 rows per cell (faiss asks >= 39)
_SEED = 1234  # the training sample and faiss' k-means


def _as_2d(X, name="X"):
    """``X`` as an array without copying an ndarray (a memmap stays a memmap)."""
    if not isinstance(X, np.ndarray):
        X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-dimensional, got shape {X.shape}.")
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise ValueError(f"{name} must hold numbers, got dtype {X.dtype}.")
    return X


def _unit(rows):
    """A float32 copy of ``rows`` with unit L2 norm (the caller's array is never written)."""
    chunk = np.array(rows, dtype=np.float32)  # np.array copies: the in-place division is safe
    norms = np.linalg.norm(chunk, axis=1, keepdims=True)
    chunk /= np.maximum(norms, 1e-12)
    return chunk


def _unit_chunks(X, batch_size):
    """Yields ``(start, stop, unit float32 rows start:stop)``."""
    for start in range(0, X.shape[0], batch_size):
        stop = min(start + batch_size, X.shape[0])
        yield start, stop, _unit(X[start:stop])


def _unit_rows(X, rows, batch_size):
    """Unit float32 rows ``rows`` (sorted indices) of ``X``, gathered chunk by chunk."""
    out = np.empty((len(rows), X.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        out[start : start + batch_size] = _unit(X[rows[start : start + batch_size]])
    return out


def _ivf_shape(n):
    """``(nlist, nprobe)`` of the approximate index for ``n`` vectors."""
    nlist = 1 << int(round(np.log2(4 * np.sqrt(max(n, 1)))))
    while nlist > 1 and (nlist > _MAX_NLIST or nlist * 39 > n):
        nlist //= 2
    nprobe = min(nlist, max(_MIN_NPROBE, int(nlist * _NPROBE_FRACTION)))
    return nlist, nprobe


def _resolve_use_gpu(use_gpu, faiss):
    if use_gpu not in ("auto", True, False):
        raise ValueError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}.")
    # CPU builds of faiss have get_num_gpus too (it returns 0); very old ones may lack it
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is True and n_gpus == 0:
        raise ValueError("use_gpu=True, but faiss sees no GPU (is faiss-gpu installed?).")
    return use_gpu is True or (use_gpu == "auto" and n_gpus > 0)


def _build_index(X, index, n_neighbors, batch_size, use_gpu):
    """The filled faiss index of the unit rows of ``X`` and the kind chosen."""
    import faiss  # here, not at module level: importing skdeepcluster stays fast (issue 15)

    n, d = X.shape
    if index not in ("auto", "exact", "approximate"):
        raise ValueError(f"index must be 'auto', 'exact' or 'approximate', got {index!r}.")
    if index == "auto":
        index = "approximate" if n > APPROXIMATE_INDEX_THRESHOLD else "exact"
    gpu = _resolve_use_gpu(use_gpu, faiss)
    if index == "exact":
        faiss_index = faiss.IndexFlatIP(d)
    else:
        nlist, nprobe = _ivf_shape(n)
        faiss_index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit,
            faiss.METRIC_INNER_PRODUCT,
        )
        faiss_index.nprobe = nprobe
        faiss_index.cp.seed = _SEED
        n_train = min(n, _TRAIN_POINTS_PER_CELL * nlist)
        rows = np.sort(np.random.default_rng(_SEED).choice(n, n_train, replace=False))
        faiss_index.train(_unit_rows(X, rows, batch_size))  # the sample is freed on return
    if gpu:
        faiss_index = faiss.index_cpu_to_all_gpus(faiss_index)  # keeps nprobe
    for _, _, chunk in _unit_chunks(X, batch_size):
        faiss_index.add(chunk)
    return faiss_index, index


def _search(faiss_index, queries, n_search):
    """``faiss_index.search``; rows an inverted file leaves short (fewer than ``n_search`` vectors
    in the cells it scanned: -1 ids) are searched again with 4x more cells, up to all cells."""
    sims, found = faiss_index.search(queries, n_search)
    short = (found < 0).any(axis=1)
    if short.any() and hasattr(faiss_index, "nprobe"):
        nprobe, nlist = faiss_index.nprobe, faiss_index.nlist
        try:
            while short.any() and faiss_index.nprobe < nlist:
                faiss_index.nprobe = min(nlist, 4 * faiss_index.nprobe)
                sims[short], found[short] = faiss_index.search(queries[short], n_search)
                short = (found < 0).any(axis=1)
        finally:
            faiss_index.nprobe = nprobe
    return sims, found


def mine_neighbors(
    X,
    n_neighbors,
    *,
    include_self=False,
    index="auto",
    batch_size=4096,
    return_similarity=False,
    use_gpu="auto",
):
    """Find the ``n_neighbors`` most cosine-similar samples of every sample.

    The input is read ``batch_size`` rows at a time, each chunk converted to float32 and
    L2-normalised on the fly, when the index is filled and again when it is searched: a
    memory-mapped ``X`` (``np.memmap`` or ``np.load(..., mmap_mode="r")``, any float dtype) is
    never loaded whole, and ``X`` is never modified. Peak memory is the faiss index (exact:
    ``4 * n * d`` bytes; approximate: ``n * d`` bytes and ``8 * n`` bytes of ids), a few chunks
    of ``batch_size * d`` float32 (the approximate index's training sample: at most
    ``40 * 4096`` rows), and the output arrays (``12 * n * n_neighbors`` bytes; 8 without
    similarities). The pages of a memmap that were read count in the process' resident memory
    until the system needs them back.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The vectors, float of any precision (or integer); an ``np.memmap`` is read in chunks.
        Not modified.
    n_neighbors : int
        Number of neighbours returned per sample.
    include_self : bool, default=False
        If False, the sample itself is removed from its own list (even when duplicates tie
        with it). If True, the list is the plain top-``n_neighbors`` search, which normally
        starts with the sample itself.
    index : {"auto", "exact", "approximate"}, default="auto"
        ``"exact"``: faiss ``IndexFlatIP``, brute force, O(n^2 d) time. ``"approximate"``:
        faiss ``IndexIVFScalarQuantizer``, an inverted file of ``nlist`` k-means cells (the
        power of two nearest ``4 sqrt(n)``, at most 4 096 and ``n / 39``) of 8-bit
        scalar-quantised vectors, ``nprobe = max(16, nlist / 128)`` cells scanned per query;
        on 1 M x 384 synthetic embeddings its recall@50 was 0.979, against 0.77-0.80 for HNSW
        graphs of the same cost (doc/benchmarks.rst, "Scale"). ``"auto"``: exact up to
        ``APPROXIMATE_INDEX_THRESHOLD`` (100 000) samples, approximate above.
    batch_size : int, default=4096
        Rows normalised and added, and queries searched, at once; bounds the memory of the
        chunks.
    return_similarity : bool, default=False
        Also return the cosine similarities (with the approximate index: of the quantised
        vectors, within about 1e-2 of the exact ones).
    use_gpu : {"auto", True, False}, default="auto"
        Run the faiss index on the GPUs (``faiss.index_cpu_to_all_gpus``). ``"auto"``: when
        faiss-gpu is installed and sees a GPU (``faiss.get_num_gpus() > 0``). faiss-gpu is
        never required.

    Returns
    -------
    indices : ndarray of shape (n_samples, n_neighbors), int64
        Row ``i`` holds the neighbours of sample ``i``, most similar first.
    similarities : ndarray of shape (n_samples, n_neighbors), float32
        Only with ``return_similarity=True``.

    Notes
    -----
    The exact index is deterministic. The approximate one is trained on a fixed random sample
    of the rows (seed 1234) by faiss' k-means with a fixed seed, and fills and searches its
    cells in a fixed order: for a given input, faiss version and number of threads, the
    neighbours are the same from run to run (a different number of BLAS threads may round
    the k-means sums differently and so move a few vectors to another cell).

    See Also
    --------
    neighbor_recall : The recall of neighbour lists against exact search, on a sample.
    """
    X = _as_2d(X)
    n = X.shape[0]
    n_available = n - 1 if not include_self else n
    if not 1 <= n_neighbors <= n_available:
        raise ValueError(
            f"n_neighbors={n_neighbors} must be between 1 and {n_available} for "
            f"n_samples={n} (include_self={include_self})."
        )
    faiss_index, _ = _build_index(X, index, n_neighbors, batch_size, use_gpu)
    n_search = n_neighbors if include_self else n_neighbors + 1
    indices = np.empty((n, n_neighbors), dtype=np.int64)
    similarities = np.empty((n, n_neighbors), dtype=np.float32) if return_similarity else None
    for start, stop, queries in _unit_chunks(X, batch_size):
        sims, found = _search(faiss_index, queries, n_search)
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
        if return_similarity:
            similarities[start:stop] = sims
    if (indices < 0).any():
        raise RuntimeError(
            "The approximate index returned fewer neighbours than asked; use index='exact'."
        )
    if return_similarity:
        return indices, similarities
    return indices


def _exact_top_k(X, queries, k, include_self, batch_size):
    """Similarities of the exact top-``k`` of the rows ``queries`` over all rows of ``X``,
    by chunks of ``batch_size`` rows: shape (len(queries), k), descending."""
    Q = _unit_rows(X, queries, batch_size)
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start, stop, chunk in _unit_chunks(X, batch_size):
        sims = Q @ chunk.T
        if not include_self:
            mine = (queries >= start) & (queries < stop)
            sims[np.flatnonzero(mine), queries[mine] - start] = -np.inf
        both = np.concatenate([best, sims], axis=1)
        best = -np.partition(-both, k - 1, axis=1)[:, :k]
    return -np.sort(-best, axis=1)


def neighbor_recall(
    X,
    indices,
    *,
    queries=None,
    n_queries=1000,
    include_self=False,
    random_state=None,
    batch_size=4096,
):
    """Recall@k of neighbour lists against exact cosine search, on a sample of queries.

    For each query ``i`` the exact top-``k`` similarities over all of ``X`` are computed by
    brute force (in chunks of ``batch_size`` rows: memory O(n_queries * (k + batch_size)), never
    n x n), and the recall is the fraction of the ``k`` listed neighbours that belong to the exact
    top ``k``. A listed neighbour counts when its similarity to the query reaches the exact
    ``k``-th similarity (up to 1e-5), so that ties at the boundary are never misses; a repeated,
    negative (missing) or, with ``include_self=False``, self entry is a miss.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        The vectors the neighbours were mined from (an ``np.memmap`` is read in chunks).
    indices : array-like of int of shape (n_samples, k) or (len(queries), k)
        Neighbour lists, e.g. from :func:`mine_neighbors`.
    queries : array-like of int of shape (len(indices),), default=None
        The samples whose lists ``indices`` holds, when these are not all of them (e.g. the
        neighbours of a sample of queries only); every listed query is then scored.
    n_queries : int, default=1000
        Without ``queries``: how many rows of ``indices`` are drawn at random and scored (all
        when there are fewer).
    include_self : bool, default=False
        Whether the lists may contain the query itself (as :func:`mine_neighbors`).
    random_state : int, RandomState instance or None, default=None
        Draws the queries.
    batch_size : int, default=4096
        Rows of ``X`` compared with the queries at once.

    Returns
    -------
    recall : float
        Mean recall@k over the scored queries, in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from skdeepcluster import mine_neighbors, neighbor_recall
    >>> X = np.random.default_rng(0).normal(size=(500, 16))
    >>> neighbors = mine_neighbors(X, 10)
    >>> float(neighbor_recall(X, neighbors, n_queries=100, random_state=0))
    1.0
    """
    from sklearn.utils import check_random_state

    X = _as_2d(X)
    indices = np.asarray(indices)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"indices must be a 2-d integer array, got {indices.dtype} "
                         f"of shape {indices.shape}.")
    n, k = X.shape[0], indices.shape[1]
    if queries is None:
        if indices.shape[0] != n:
            raise ValueError(f"indices has {indices.shape[0]} rows for {n} samples; pass "
                             f"queries= when it lists the neighbours of some samples only.")
        rows = np.arange(n)
        if n_queries < n:
            rows = np.sort(check_random_state(random_state).choice(n, n_queries, replace=False))
        queries = rows
    else:
        queries = np.asarray(queries)
        if queries.shape != (indices.shape[0],):
            raise ValueError(f"queries has shape {queries.shape}; indices has "
                             f"{indices.shape[0]} rows.")
        rows = np.arange(len(queries))
        order = np.argsort(queries, kind="stable")
        queries, rows = queries[order], rows[order]
    n_available = n if include_self else n - 1
    if not 1 <= k <= n_available:
        raise ValueError(f"indices lists k={k} neighbours; at most {n_available} exist.")
    if len(queries) and (queries.min() < 0 or queries.max() >= n):
        raise ValueError("queries must be row numbers of X.")

    kth = _exact_top_k(X, queries, k, include_self, batch_size)[:, -1]
    return _recall_at_kth(X, indices[rows], queries, kth, include_self, batch_size)


def _recall_at_kth(X, listed, queries, kth, include_self, batch_size):
    """Mean fraction of the lists ``listed`` (one row per query) whose entries are distinct,
    valid, and at least as similar to the query as its exact ``k``-th neighbour ``kth``."""
    n, k = X.shape[0], listed.shape[1]
    valid = (listed >= 0) & (listed < n)
    if not include_self:
        valid &= listed != queries[:, None]
    ids = np.sort(np.where(valid, listed, -1), axis=1)
    valid = ids >= 0
    valid[:, 1:] &= ids[:, 1:] != ids[:, :-1]  # a repeated entry counts once
    Q = _unit_rows(X, queries, batch_size)
    hits = 0
    step = max(1, batch_size // k)
    for start in range(0, len(queries), step):
        block, mask = ids[start : start + step], valid[start : start + step]
        flat = np.unique(block[mask])
        if not len(flat):
            continue
        position = np.searchsorted(flat, np.where(mask, block, flat[0]))
        neighbours = _unit_rows(X, flat, batch_size)[position]  # (queries, k, d)
        sims = np.einsum("qkd,qd->qk", neighbours, Q[start : start + step])
        hits += int((mask & (sims >= kth[start : start + step, None] - 1e-5)).sum())
    return hits / (len(queries) * k)
