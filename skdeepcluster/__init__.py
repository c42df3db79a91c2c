"""skdeepcluster: scikit-learn compatible deep clustering estimators."""

from .datasets import list_image_files, load_digits_images, load_fashion_mnist
from .display import ClusterConfusionDisplay, ClusterGridDisplay
from .embedders import ImageEmbedder
from .methods.adc import ADCClusterer
from .methods.deepcluster import DeepClusterer
from .methods.mmdc import MMDCClusterer
from .methods.scan import SCANClusterer
from .methods.temi import TEMIClusterer
from .metrics import (
    cluster_to_class_mapping,
    clustering_accuracy,
    clustering_accuracy_score,
    overclustering_accuracy,
    overclustering_accuracy_score,
)
from .neighbors import mine_neighbors

__version__ = "0.1.0"

__all__ = [
    "DeepClusterer",
    "ADCClusterer",
    "MMDCClusterer",
    "SCANClusterer",
    "TEMIClusterer",
    "ClusterConfusionDisplay",
    "ClusterGridDisplay",
    "ImageEmbedder",
    "list_image_files",
    "load_digits_images",
    "load_fashion_mnist",
    "cluster_to_class_mapping",
    "clustering_accuracy",
    "clustering_accuracy_score",
    "mine_neighbors",
    "overclustering_accuracy",
    "overclustering_accuracy_score",
]
