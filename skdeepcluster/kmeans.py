"""faiss k-means and the PCA-whitening + L2 preprocessing of DeepCluster."""

import warnings

import numpy as np

__all__ = ["train_pca_whitening", "pca_whiten", "kmeans", "warn_if_few_points"]

#: Regulariser of the whitening, relative to the largest eigenvalue.
WHITENING_EPSILON = 1e-6

#: faiss' guideline for k-means: at least this many training points per centroid. Below it
#: faiss itself prints a warning from C++ (to stderr, whatever ``verbose`` says); :func:`kmeans`
#: silences that and the estimators warn once per fit instead (:func:`warn_if_few_points`).
MIN_POINTS_PER_CENTROID = 39


def warn_if_few_points(n_samples, n_clusters, who, *, stacklevel=2):
    """One ``UserWarning`` when ``n_samples`` points are few for a k-means into ``n_clusters``
    (fewer than :data:`MIN_POINTS_PER_CENTROID` per cluster); ``who`` names the estimator."""
    needed = MIN_POINTS_PER_CENTROID * n_clusters
    if n_samples < needed:
        warnings.warn(
            f"{who}'s k-means clusters {n_samples} points into {n_clusters} clusters: fewer "
            f"than {MIN_POINTS_PER_CENTROID} points per cluster (at least {needed} points), "
            "faiss' guideline; its centroids may be poor.",
            UserWarning,
            stacklevel=stacklevel + 1,
        )


def train_pca_whitening(features, n_components=256):
    """Train a faiss ``PCAMatrix`` (whitening: eigenvalue power −0.5) on ``features``.

    Two numerical guards around faiss' float32 training, which change nothing for
    well-conditioned data: the features are centred in float64 first (faiss' own centring in
    float32 loses the variance of features whose mean is large against their spread, e.g.
    pooled ReLU activations), and the eigenvalues are clipped at 0 and get ``1e-6 ×`` the
    largest one added before the power (faiss' ``epsilon``), so that directions without variance
    (dead units, rank < ``n_components``) are not divided by zero.

    Returns
    -------
    matrix : faiss.PCAMatrix
        Trained, mapping the raw features; apply it with
        :func:`pca_whiten` (``matrix=``).
    """
    features = np.asarray(features)
    mean = features.mean(axis=0, dtype=np.float64)
    centred = np.ascontiguousarray(features - mean, dtype=np.float32)
    n_components = min(n_components, *features.shape)
    import faiss  # here, not at module level: importing skdeepcluster stays fast (issue 15)

    matrix = faiss.PCAMatrix(features.shape[1], n_components, -0.5)
    matrix.train(centred)
    eigenvalues = np.clip(faiss.vector_to_array(matrix.eigenvalues), 0.0, None)
    faiss.copy_array_to_vector(eigenvalues.astype(np.float32), matrix.eigenvalues)
    faiss.copy_array_to_vector(mean.astype(np.float32), matrix.mean)
    matrix.epsilon = float(max(eigenvalues.max(), 1e-30) * WHITENING_EPSILON)
    matrix.prepare_Ab()  # the whitened projection, with the regulariser and the true mean
    return matrix


def pca_whiten(features, n_components=256, *, matrix=None):
    """PCA to ``n_components`` with whitening (eigenvalue power −0.5), then L2-normalised rows.

    Parameters
    ----------
    features : ndarray (n, d)
    n_components : int
        Capped at ``min(n, d)``.
    matrix : faiss.PCAMatrix or None
        A trained matrix to apply; None trains a new one on ``features``.

    Returns
    -------
    reduced : ndarray (n, n_components), float32
    matrix : faiss.PCAMatrix
    """
    features = np.ascontiguousarray(features, dtype=np.float32)
    if matrix is None:
        matrix = train_pca_whitening(features, n_components)
    reduced = matrix.apply(features)
    reduced /= np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
    return reduced, matrix


def kmeans(features, n_clusters, *, n_iter=20, n_init=1, seed=0, spherical=False,
           verbose=False):
    """faiss k-means on all points (no subsampling).

    faiss splits a non-empty cluster when one goes empty during training; the final assignment
    can still leave clusters empty, which the caller must handle (DeepCluster remaps labels).
    ``n_init`` runs from different random centroids (faiss' ``nredo``) keep the one with the
    lowest objective, like scikit-learn's ``KMeans(n_init=...)``.
    Nothing is printed unless ``verbose``: faiss' own warning about few points per centroid is
    switched off (callers warn once with :func:`warn_if_few_points`).

    Returns
    -------
    labels : ndarray (n,), int64
    centroids : ndarray (n_clusters, d), float32
    objective : float
        Sum of squared distances of the final assignment.
    """
    import faiss  # here, not at module level: importing skdeepcluster stays fast (issue 15)

    features = np.ascontiguousarray(features, dtype=np.float32)
    n, d = features.shape
    model = faiss.Kmeans(
        d,
        n_clusters,
        niter=n_iter,
        nredo=int(n_init),
        seed=int(seed) % (2**31 - 1),
        spherical=spherical,
        max_points_per_centroid=max(256, n // n_clusters + 1),  # never subsample
        min_points_per_centroid=1,  # faiss' C++ warning below 39 per centroid: not printed
        verbose=verbose,
    )
    model.train(features)
    distances, labels = model.index.search(features, 1)
    return labels.ravel().astype(np.int64), model.centroids.copy(), float(distances.sum())
