"""
==================================
Clustering digits with ADC
==================================

Associative deep clustering (ADC) learns by association, without labels. Trainable centroids
live in the embedding space next to the images' embeddings; an "association" is a round trip
of random walks between two sets (embedding to centroid and back, or augmented image to plain
image and back), and its loss asks the walk to come back to where it started and to visit every
member of the other set. Walks through centroids separate the clusters, walks through augmented
copies make the embedding invariant to augmentation, and a linear layer trained on the
centroids' labels makes the network a classifier: ``predict`` needs no clustering step. See
:doc:`/methods/adc` for the details.

Here ADC learns from the raw 8x8 images of scikit-learn's digits; we compare with k-means on the
same pixels.
"""

# %%
# Fit ADC and k-means on the same images
# --------------------------------------
# The configuration of the library's quality test and benchmark: a small MLP backbone, which is
# fast on a CPU, a warm-up of 10 epochs on the augmentation association alone, after which
# k-means on the embeddings initialises the centroids, then 10 epochs of clustering (the
# authors train for hundreds of MNIST epochs). Flips are off: a mirrored digit is another
# symbol.
import matplotlib.pyplot as plt
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepcluster import (
    ADCClusterer,
    ClusterGridDisplay,
    clustering_accuracy_score,
    load_digits_images,
)

images, y = load_digits_images()
pixels = images.reshape(len(images), -1) / 255.0

adc = ADCClusterer(
    n_clusters=10,
    backbone="mlp",
    warmup_epochs=10,
    max_epochs=10,
    flip=False,
    random_state=0,
).fit(images)
kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit(pixels)

print(f"{'':22s}  ACC    NMI    ARI")
for name, labels in [("ADC", adc.labels_),
                     ("k-means after warm-up", adc.kmeans_labels_),
                     ("KMeans on pixels", kmeans.labels_)]:
    print(f"{name:22s} {clustering_accuracy_score(y, labels):.3f}  "
          f"{normalized_mutual_info_score(y, labels):.3f}  {adjusted_rand_score(y, labels):.3f}")

# %%
# ADC never sees a label; the labels above only score it. The middle row is the k-means
# clustering of the warm-up embeddings that initialised the centroids (``kmeans_labels_``): it
# shows how much of the result comes from the augmentation-invariant embedding alone and how
# much from the clustering stage that follows. The outcome varies with the seed (see
# :doc:`/benchmarks`).

# %%
# Training history
# ----------------
# ``history_`` holds one record per epoch with the unweighted loss terms. The association
# between augmented and plain images trains throughout; the association with the centroids
# starts after the warm-up (dashed line), once k-means has placed the centroids.
stages = [record["stage"] for record in adc.history_]
epochs = range(1, len(adc.history_) + 1)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(epochs, [record["assoc_aug"] for record in adc.history_],
        label="augmented / plain association")
ax.plot(epochs, [record["assoc_centroid"] if record["stage"] == "clustering" else float("nan")
                for record in adc.history_], label="centroid / sample association")
ax.axvline(stages.count("warmup") + 0.5, color="grey", linestyle="--")
ax.set_xlabel("epoch")
ax.set_ylabel("loss")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# The most confident digits of each cluster
# -----------------------------------------
# ``predict_proba`` is the softmax of the logit layer; each row shows a cluster's most
# confident members.
ClusterGridDisplay.from_estimator(adc, images, n_per_cluster=10)
plt.show()
