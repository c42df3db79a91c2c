"""Power Iteration Clustering on a sparse k-nearest-neighbour graph (DeepCluster's PIC variant).

Caron et al., ECCV 2018, supplementary Sec. 2.1 (after Lin & Cohen, ICML 2010): a kNN graph with
Gaussian weights, a regularised power iteration, then every node points to the neighbour that
most increases ``v``; clusters are the basins of the local maxima. The graph holds at most
``2 · n · n_neighbors`` entries (a ``scipy.sparse`` matrix): memory is O(n · k), never O(n²).
"""

import numpy as np
from scipy import sparse

from .neighbors import mine_neighbors

__all__ = ["knn_graph", "pic_power_iteration", "pic_basins", "power_iteration_clustering"]


def knn_graph(features, n_neighbors=5, sigma=0.2, *, index="auto"):
    """Symmetric sparse kNN graph ``G + Gᵀ`` with weights ``exp(−‖xᵢ − xⱼ‖² / σ²)``.

    ``G`` links every sample to its ``n_neighbors`` nearest neighbours (itself excluded, so the
    diagonal is 0). The rows of ``features`` are L2-normalised first (DeepCluster's features
    already are), so the Euclidean neighbours are the cosine neighbours that
    :func:`~skdeepcluster.mine_neighbors` finds with faiss, in batches, and
    ``‖xᵢ − xⱼ‖² = 2 − 2 cos(xᵢ, xⱼ)``.

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
    n_neighbors : int, default=5
    sigma : float, default=0.2
        Bandwidth σ of the Gaussian weights.
    index : {"auto", "exact", "approximate"}, default="auto"
        faiss index of the neighbour search.

    Returns
    -------
    graph : scipy.sparse.csr_matrix of shape (n_samples, n_samples), float64
        At most ``2 · n_samples · n_neighbors`` stored entries.
    """
    n = features.shape[0]
    neighbors, similarity = mine_neighbors(
        features, n_neighbors, include_self=False, index=index, return_similarity=True
    )
    squared_distance = np.clip(2.0 - 2.0 * similarity.astype(np.float64), 0.0, None)
    weights = np.exp(-squared_distance / sigma**2)
    rows = np.repeat(np.arange(n), n_neighbors)
    directed = sparse.csr_matrix((weights.ravel(), (rows, neighbors.ravel())), shape=(n, n))
    return (directed + directed.T).tocsr()


def pic_power_iteration(graph, alpha=1e-3, n_iter=200):
    """``v ← N1(α (G + Gᵀ) v + (1 − α) v)`` from ``v = 1/n``, ``n_iter`` times.

    ``graph`` is the symmetric ``G + Gᵀ`` of :func:`knn_graph`; ``N1`` is L1 normalisation.
    Each step is one sparse matrix-vector product, O(nnz).

    Returns
    -------
    v : ndarray of shape (n_samples,), float64
    """
    n = graph.shape[0]
    v = np.full(n, 1.0 / n)
    for _ in range(n_iter):
        v = alpha * (graph @ v) + (1.0 - alpha) * v
        v /= v.sum()
    return v


def pic_basins(graph, v):
    """Clusters as basins of the local maxima of ``v`` on the graph.

    Node ``i`` points to ``argmax_j w_ij (v_j − v_i)`` over its neighbours when that value is
    positive; a node with no such neighbour is a local maximum and starts no edge. Following the
    pointers (a forest, since ``v`` strictly increases along them) leads every node to one local
    maximum; its cluster is that maximum's. Vectorised: per-row argmax on the CSR arrays, then
    pointer jumping (O(log depth) rounds).

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
        Clusters numbered 0..n_found−1 in the order of their maxima's index.
    """
    graph = sparse.csr_matrix(graph)
    n = graph.shape[0]
    row_of_entry = np.repeat(np.arange(n), np.diff(graph.indptr))
    gain = graph.data * (v[graph.indices] - v[row_of_entry])
    best = np.full(n, 0.0)
    np.maximum.at(best, row_of_entry, gain)
    is_best = (gain > 0) & (gain == best[row_of_entry])
    pointer = np.arange(n)
    # Several neighbours may tie for the best gain: the last one written wins, deterministically.
    pointer[row_of_entry[is_best]] = graph.indices[is_best]
    while True:
        jumped = pointer[pointer]
        if np.array_equal(jumped, pointer):
            break
        pointer = jumped
    _, labels = np.unique(pointer, return_inverse=True)
    return labels.astype(np.int64)


def power_iteration_clustering(
    features, *, n_neighbors=5, sigma=0.2, alpha=1e-3, n_iter=200, index="auto"
):
    """Power Iteration Clustering of DeepCluster (Caron et al. 2018, suppl. Sec. 2.1).

    The number of clusters is found, not given: it is the number of local maxima of the power
    iteration vector on the kNN graph (larger ``sigma`` → more uniform weights → fewer clusters).

    Parameters
    ----------
    features : ndarray of shape (n_samples, n_features)
        Rows are L2-normalised before the neighbour search.
    n_neighbors : int, default=5
    sigma : float, default=0.2
    alpha : float, default=1e-3
    n_iter : int, default=200
    index : {"auto", "exact", "approximate"}, default="auto"

    Returns
    -------
    labels : ndarray of shape (n_samples,), int64
        Cluster of every sample, 0..n_found−1.
    """
    graph = knn_graph(features, n_neighbors, sigma, index=index)
    return pic_basins(graph, pic_power_iteration(graph, alpha, n_iter))
