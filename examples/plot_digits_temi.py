"""
==================================
Clustering digits with TEMI
==================================

TEMI trains clustering heads on a fixed representation. Here the representation is simply the
pixels of scikit-learn's 8x8 digits; we compare with k-means on the same data and look at the
clusters.
"""

# %%
# Fit TEMI and k-means on the same features
# -----------------------------------------
import matplotlib.pyplot as plt
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from skdeepcluster import (
    ClusterConfusionDisplay,
    ClusterGridDisplay,
    TEMIClusterer,
    clustering_accuracy_score,
    load_digits_images,
)
from skdeepcluster.cli import CLI_TEMI_PARAMS

images, y = load_digits_images()
X = images.reshape(len(images), -1) / 255.0

# The command line's settings for small data on a CPU: few heads, a larger learning rate and
# enough optimiser steps (``skdeepcluster demo`` uses the same).
print(CLI_TEMI_PARAMS)
temi = TEMIClusterer(n_clusters=10, random_state=0, **CLI_TEMI_PARAMS).fit(X)
kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit(X)

for name, labels in [("TEMI", temi.labels_), ("KMeans", kmeans.labels_)]:
    print(f"{name:7s} ACC {clustering_accuracy_score(y, labels):.3f}  "
          f"NMI {normalized_mutual_info_score(y, labels):.3f}")

# %%
# The most confident digits of each cluster
# -----------------------------------------
# ``predict_proba`` gives a confidence for every assignment; each row shows a cluster's most
# confident members.
ClusterGridDisplay.from_estimator(temi, X, images=images, n_per_cluster=10)
plt.show()

# %%
# Clusters against the true digits
# --------------------------------
# Columns are clusters, ordered by the digit they are matched to (Hungarian matching); the
# diagonal holds the correctly clustered digits.
ClusterConfusionDisplay.from_estimator(temi, X, y)
plt.show()

# %%
# Training history
# ----------------
# ``history_`` holds one record per epoch.
losses = [record["loss"] for record in temi.history_]
plt.plot(losses)
plt.xlabel("epoch")
plt.ylabel("mean TEMI loss over heads")
plt.show()
