"""skdeepcluster: scikit-learn compatible deep clustering estimators."""

from .metrics import (
    cluster_to_class_mapping,
    clustering_accuracy,
    clustering_accuracy_score,
    overclustering_accuracy,
    overclustering_accuracy_score,
)
from .methods.temi import TEMIClusterer
from .neighbors import mine_neighbors

__version__ = "0.1.0"

__all__ = [
    "TEMIClusterer",
    "cluster_to_class_mapping",
    "clustering_accuracy",
    "clustering_accuracy_score",
    "mine_neighbors",
    "overclustering_accuracy",
    "overclustering_accuracy_score",
]
