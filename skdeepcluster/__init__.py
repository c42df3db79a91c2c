"""skdeepcluster: scikit-learn compatible deep clustering estimators.

The public names are loaded on first access (PEP 562 module ``__getattr__``): ``import
skdeepcluster`` and the command line's ``--help`` load neither torch nor scikit-learn;
``from skdeepcluster import TEMIClusterer`` loads torch and scikit-learn, but not torchvision,
faiss, matplotlib or Pillow, which are imported by the functions that first need them.
"""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: Public name → the submodule defining it.
_EXPORTS = {
    "DeepClusterer": ".methods.deepcluster",
    "ADCClusterer": ".methods.adc",
    "MMDCClusterer": ".methods.mmdc",
    "SCANClusterer": ".methods.scan",
    "TEMIClusterer": ".methods.temi",
    "ClusterConfusionDisplay": ".display",
    "ClusterGridDisplay": ".display",
    "ImageEmbedder": ".embedders",
    "list_image_files": ".datasets",
    "load_digits_images": ".datasets",
    "load_fashion_mnist": ".datasets",
    "cluster_to_class_mapping": ".metrics",
    "clustering_accuracy": ".metrics",
    "clustering_accuracy_score": ".metrics",
    "mine_neighbors": ".neighbors",
    "neighbor_recall": ".neighbors",
    "overclustering_accuracy": ".metrics",
    "overclustering_accuracy_score": ".metrics",
}

__all__ = [  # = list(_EXPORTS), spelled out for static analysers
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
    "neighbor_recall",
    "overclustering_accuracy",
    "overclustering_accuracy_score",
]

if TYPE_CHECKING:  # static analysers and IDEs see ordinary imports
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
    from .neighbors import mine_neighbors, neighbor_recall


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'skdeepcluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
