"""
==============================
Overclustering
==============================

Asking for more clusters than there are classes splits the classes into sub-groups (styles of
writing a digit). Score such a clustering with the many-to-one mapping: each cluster goes to its
majority class. As the TEMI paper does for overclustering, we set ``beta=1``.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import KMeans

from skdeepcluster import (
    ClusterConfusionDisplay,
    TEMIClusterer,
    clustering_accuracy_score,
    load_digits_images,
    overclustering_accuracy_score,
)
from skdeepcluster.cli import CLI_TEMI_PARAMS

images, y = load_digits_images()
X = images.reshape(len(images), -1) / 255.0

temi = TEMIClusterer(n_clusters=30, beta=1.0, random_state=0, **CLI_TEMI_PARAMS).fit(X)
kmeans = KMeans(n_clusters=30, n_init=10, random_state=0).fit(X)

# %%
# Many-to-one accuracy rewards fragmentation (one cluster per sample scores 1.0), so compare it
# only between clusterings with the same number of clusters *used*: a clusterer that leaves
# clusters empty warns about it, and the count is printed here.
for name, labels in [("TEMI", temi.labels_), ("KMeans", kmeans.labels_)]:
    print(f"{name:7s} clusters used {len(np.unique(labels)):2d}  "
          f"many-to-one ACC {overclustering_accuracy_score(y, labels):.3f}  "
          f"one-to-one ACC {clustering_accuracy_score(y, labels):.3f} (only 10 can match)")

# %%
# Each column is a cluster, placed under the digit it is mapped to.
display = ClusterConfusionDisplay.from_predictions(y, temi.labels_, method="majority",
                                                   include_values=False)
display.figure_.set_size_inches(10, 4)
plt.show()
