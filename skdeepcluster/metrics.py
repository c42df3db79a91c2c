"""Clustering scores that compare a partition with ground-truth classes.

Cluster ids are arbitrary, so a cluster must first be mapped to a class. Two mappings are
standard in the deep clustering literature:

* one-to-one (Hungarian matching): each cluster is matched to at most one class and each class to
  at most one cluster, maximising the number of matched samples. Used when the number of clusters
  equals the number of classes. Samples of unmatched clusters count as errors.
* many-to-one (overclustering): every cluster is mapped to its majority class. Used when there are
  more clusters than classes.
"""

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import make_scorer
from sklearn.metrics.cluster import contingency_matrix

__all__ = [
    "clustering_accuracy_score",
    "overclustering_accuracy_score",
    "cluster_to_class_mapping",
    "clustering_accuracy",
    "overclustering_accuracy",
]


def _check_labelings(y_true, y_pred):
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-d arrays of labels, got shapes {y_true.shape} and "
            f"{y_pred.shape}."
        )
    if y_true.shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"y_true and y_pred have different lengths: {y_true.shape[0]} != {y_pred.shape[0]}."
        )
    if y_true.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty: cannot score an empty clustering.")
    classes, true_idx = np.unique(y_true, return_inverse=True)
    clusters, pred_idx = np.unique(y_pred, return_inverse=True)
    return classes, true_idx, clusters, pred_idx


def cluster_to_class_mapping(y_true, y_pred, *, method="hungarian"):
    """Map each cluster id of ``y_pred`` to a class of ``y_true``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth classes.
    y_pred : array-like of shape (n_samples,)
        Cluster assignments.
    method : {"hungarian", "majority"}, default="hungarian"
        ``"hungarian"``: the best one-to-one matching (scipy's ``linear_sum_assignment`` on the
        contingency matrix); clusters left unmatched (more clusters than classes) are absent
        from the mapping. ``"majority"``: every cluster maps to its most frequent class
        (many-to-one, for overclustering).

    Returns
    -------
    mapping : dict
        ``{cluster_id: class}``.

    Examples
    --------
    >>> cluster_to_class_mapping([0, 0, 1, 1], [5, 5, 7, 7])
    {5: 0, 7: 1}
    """
    classes, true_idx, clusters, pred_idx = _check_labelings(y_true, y_pred)
    # rows: clusters, columns: classes
    table = contingency_matrix(pred_idx, true_idx, sparse=False)
    if method == "hungarian":
        rows, cols = linear_sum_assignment(table, maximize=True)
    elif method == "majority":
        rows = np.arange(table.shape[0])
        cols = table.argmax(axis=1)
    else:
        raise ValueError(f"method must be 'hungarian' or 'majority', got {method!r}.")
    return {clusters[r].item(): classes[c].item() for r, c in zip(rows, cols, strict=True)}


def _matched_accuracy(y_true, y_pred, method):
    classes, true_idx, clusters, pred_idx = _check_labelings(y_true, y_pred)
    table = contingency_matrix(pred_idx, true_idx, sparse=False)
    if method == "hungarian":
        rows, cols = linear_sum_assignment(table, maximize=True)
        correct = table[rows, cols].sum()
    else:
        correct = table.max(axis=1).sum()
    return float(correct) / true_idx.shape[0]


def clustering_accuracy_score(y_true, y_pred):
    """Clustering accuracy with the best one-to-one cluster to class matching.

    The contingency matrix of clusters and classes is solved as an assignment problem (Hungarian
    method, scipy's ``linear_sum_assignment``). When there are more clusters than classes, the
    samples of unmatched clusters count as errors; when there are fewer, the unmatched classes
    are errors. The score is invariant to renaming clusters and equals 1.0 exactly for identical
    partitions.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth classes.
    y_pred : array-like of shape (n_samples,)
        Cluster assignments.

    Returns
    -------
    score : float
        Fraction of samples whose matched cluster is their class, in [0, 1].

    See Also
    --------
    overclustering_accuracy_score : many-to-one mapping for more clusters than classes.

    Examples
    --------
    >>> clustering_accuracy_score([0, 0, 1, 1, 2], [1, 1, 0, 0, 0])
    0.8
    """
    return _matched_accuracy(y_true, y_pred, "hungarian")


def overclustering_accuracy_score(y_true, y_pred):
    """Many-to-one clustering accuracy: each cluster is mapped to its majority class.

    The usual score for overclustering (more clusters than classes). Note that it rewards
    fragmentation: with one cluster per sample it is 1.0, so compare it only between clusterings
    with the same number of clusters.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth classes.
    y_pred : array-like of shape (n_samples,)
        Cluster assignments.

    Returns
    -------
    score : float
        In [0, 1].

    Examples
    --------
    >>> overclustering_accuracy_score([0, 0, 1, 1], [0, 1, 2, 2])
    1.0
    """
    return _matched_accuracy(y_true, y_pred, "majority")


#: Scorer for ``cross_validate`` / ``GridSearchCV``: ``scoring=clustering_accuracy``.
#: It calls ``estimator.predict(X)`` on the held-out fold and compares with its labels.
clustering_accuracy = make_scorer(clustering_accuracy_score)

#: Scorer for the many-to-one (overclustering) accuracy.
overclustering_accuracy = make_scorer(overclustering_accuracy_score)
