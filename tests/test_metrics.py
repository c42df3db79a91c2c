import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score

from skdeepcluster import (
    cluster_to_class_mapping,
    clustering_accuracy_score,
    overclustering_accuracy_score,
)

labelings = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5), min_size=n, max_size=n),
        st.lists(st.integers(0, 8), min_size=n, max_size=n),
    )
)


@settings(max_examples=200, deadline=None)
@given(labelings, st.randoms(use_true_random=False))
def test_accuracy_invariant_to_relabelling_clusters(pair, random):
    y_true, y_pred = map(np.asarray, pair)
    permutation = list(range(9))
    random.shuffle(permutation)
    renamed = np.asarray(permutation)[y_pred] + 100  # arbitrary new ids
    assert clustering_accuracy_score(y_true, renamed) == clustering_accuracy_score(y_true, y_pred)
    assert overclustering_accuracy_score(y_true, renamed) == overclustering_accuracy_score(
        y_true, y_pred
    )


@settings(max_examples=200, deadline=None)
@given(labelings)
def test_accuracy_bounds_and_ordering(pair):
    y_true, y_pred = map(np.asarray, pair)
    one_to_one = clustering_accuracy_score(y_true, y_pred)
    many_to_one = overclustering_accuracy_score(y_true, y_pred)
    # aligned labels give at least plain accuracy; many-to-one is never below one-to-one
    assert accuracy_score(y_true, y_pred) <= one_to_one + 1e-12
    assert 0.0 < one_to_one <= many_to_one <= 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=80))
def test_identical_partitions_score_exactly_one(labels):
    assert clustering_accuracy_score(labels, labels) == 1.0
    assert overclustering_accuracy_score(labels, labels) == 1.0


def test_equals_plain_accuracy_when_labels_align():
    y_true = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 0])
    assert clustering_accuracy_score(y_true, y_pred) == accuracy_score(y_true, y_pred) == 0.8


def test_more_clusters_than_classes_counts_unmatched_as_errors():
    y_true = [0, 0, 0, 0, 1, 1, 1, 1]
    y_pred = [0, 0, 1, 1, 2, 2, 3, 3]
    # one-to-one: only one of {0, 1} and one of {2, 3} can be matched
    assert clustering_accuracy_score(y_true, y_pred) == 0.5
    assert overclustering_accuracy_score(y_true, y_pred) == 1.0


def test_fewer_clusters_than_classes():
    assert clustering_accuracy_score([0, 1, 2, 2], [0, 0, 0, 0]) == 0.5


def test_mapping_hungarian_and_majority():
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [7, 7, 3, 3, 9, 9]
    assert cluster_to_class_mapping(y_true, y_pred) == {3: 1, 7: 0, 9: 2}
    assert cluster_to_class_mapping(y_true, y_pred, method="majority") == {3: 1, 7: 0, 9: 1}
    with pytest.raises(ValueError, match="method"):
        cluster_to_class_mapping(y_true, y_pred, method="best")


def test_string_labels():
    assert clustering_accuracy_score(["a", "a", "b"], ["x", "x", "y"]) == 1.0


@pytest.mark.parametrize("score", [clustering_accuracy_score, overclustering_accuracy_score])
def test_clear_errors(score):
    with pytest.raises(ValueError, match="different lengths: 3 != 2"):
        score([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        score([], [])
    with pytest.raises(ValueError, match="1-d"):
        score([[0, 1]], [[0, 1]])
