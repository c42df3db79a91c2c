"""
==================================
Clustering digits with SCAN
==================================

SCAN separates learning a representation from clustering. A self-supervised pretext task
(SimCLR: two augmented views of an image should be recognised as the same image) first learns
features; the nearest neighbours of every image in that space, mostly of the same digit, are
mined; clustering heads are then trained so that an image and its neighbours get the same
confident prediction, with an entropy term that keeps all clusters in use. A last
self-labelling step fine-tunes the network on its own most confident predictions. See
:doc:`/methods/scan` for the details.

Here SCAN learns everything from the raw 8x8 images of scikit-learn's digits; we compare with
k-means on the same pixels.
"""

# %%
# Fit SCAN and k-means on the same images
# ---------------------------------------
# The paper's schedules (500 + 50 + 200 epochs of a ResNet-18) assume a GPU. This is the short
# CPU configuration of the library's quality test and benchmark: a small MLP backbone, 40 SimCLR
# epochs, 20 SCAN epochs with three heads (the one with the lowest loss is kept, without labels)
# and 20 self-labelling epochs. Flips are off: a mirrored digit is another symbol.
import matplotlib.pyplot as plt
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepcluster import (
    ClusterGridDisplay,
    SCANClusterer,
    clustering_accuracy_score,
    load_digits_images,
)

images, y = load_digits_images()
pixels = images.reshape(len(images), -1) / 255.0

scan = SCANClusterer(
    n_clusters=10,
    backbone="mlp",
    flip=False,
    pretext_epochs=40,
    pretext_batch_size=256,
    max_epochs=20,
    lr=1e-3,
    n_heads=3,
    augmentation="simclr",
    self_labeling_epochs=20,
    self_labeling_batch_size=1000,
    self_labeling_lr=1e-4,
    random_state=0,
).fit(images)
kmeans = KMeans(n_clusters=10, n_init=10, random_state=0).fit(pixels)

print(f"{'':7s}  ACC    NMI    ARI")
for name, labels in [("SCAN", scan.labels_), ("KMeans", kmeans.labels_)]:
    print(f"{name:7s} {clustering_accuracy_score(y, labels):.3f}  "
          f"{normalized_mutual_info_score(y, labels):.3f}  {adjusted_rand_score(y, labels):.3f}")

# %%
# SCAN never sees a label; the labels above only score it. The pretext features make the mined
# neighbours pure enough for the SCAN loss to produce a clearly better partition than k-means
# on the pixels. The exact scores vary with the seed (see :doc:`/benchmarks`).

# %%
# The three training stages
# -------------------------
# ``history_`` holds one record per epoch, tagged with its ``stage``. The losses of the three
# stages are on different scales, so each gets its own panel.
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
for ax, stage, title in zip(axes, ["pretext", "scan", "selflabel"],
                            ["SimCLR pretext", "SCAN loss", "self-labelling"], strict=True):
    losses = [record["loss"] for record in scan.history_ if record["stage"] == stage]
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_title(title)
    ax.set_xlabel("epoch")
axes[0].set_ylabel("training loss")
fig.tight_layout()
plt.show()

# %%
# Self-labelling trains only on the images predicted with a probability above 0.99;
# ``n_confident_`` counts them at the end. After this short SCAN stage they are a fraction of the
# data, and on these small digits self-labelling adds little (see :doc:`/benchmarks`): its loss
# above stays noisy rather than falling.
print(f"confident samples: {scan.n_confident_} of {len(images)}; kept head {scan.best_head_}")

# %%
# The most confident digits of each cluster
# -----------------------------------------
# Each row shows a cluster's members with the highest ``predict_proba``.
ClusterGridDisplay.from_estimator(scan, images, n_per_cluster=10)
plt.show()
