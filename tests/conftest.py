"""Test-session settings and the shared table of small estimator configurations.

One torch and one faiss thread: the seeded quality results were measured this way, and OpenMP
threads that spin-wait make small models many times slower when the CPU is shared.
"""

import faiss
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skdeepcluster import (
    ADCClusterer,
    DeepClusterer,
    MMDCClusterer,
    SCANClusterer,
    TEMIClusterer,
    engine,
)

torch.set_num_threads(1)
faiss.omp_set_num_threads(1)

#: name → (class, parameters, data kind): the one table of small, fast configurations that
#: tests/test_common.py runs scikit-learn's checks and the shared contract over. Each trains a
#: few seconds at most on 240 digits of three classes (``digits3``) and passes sklearn's
#: ``check_clustering`` (ARI > 0.4 on blobs). The data kind is the input the contract tests
#: fit on ("features": the 64 pixels in [0, 1]; "images": 8 × 8 uint8 images); sklearn's
#: checks always use feature matrices. TEMI needs a backbone for images, so it gets features.
ESTIMATORS = {
    "TEMIClusterer": (
        TEMIClusterer,
        # the paper's lr 1e-4 and a fixed 40 epochs (tol=None): lr 1e-3, or the stopping rule
        # after a few epochs, collapse these 240 digits into one or two clusters
        dict(n_clusters=3, n_heads=2, n_neighbors=5, hidden_dim=32, bottleneck_dim=16,
             max_epochs=40, tol=None, batch_size=64, random_state=0),
        "features",
    ),
    "SCANClusterer": (
        SCANClusterer,
        dict(n_clusters=3, n_neighbors=3, pretext_epochs=1, pretext_batch_size=64, max_epochs=2,
             batch_size=16, self_labeling_epochs=1, self_labeling_batch_size=16, random_state=0),
        "images",
    ),
    # n_components=2: whitening more directions than the 2-d blobs of check_clustering have
    # would give noise directions the same weight as the blobs' (see n_components' docs)
    "DeepClusterer": (
        DeepClusterer,
        dict(n_clusters=3, max_epochs=2, batch_size=16, n_components=2, random_state=0),
        "images",
    ),
    "MMDCClusterer": (
        MMDCClusterer,
        dict(n_clusters=3, max_epochs=10, batch_size=16, backbone="mlp", random_state=0),
        "images",
    ),
    "ADCClusterer": (
        ADCClusterer,
        # 3 + 2 epochs: with 1 + 1 the 240 digit images collapse into one cluster; with the
        # paper's one centroid per cluster, 2 + 2 leaves a cluster of check_clustering's blobs
        # empty (3 + 2 and 2 + 5 do not; with the authors' 4 centroids 2 + 2 sufficed)
        dict(n_clusters=3, warmup_epochs=3, max_epochs=2, batch_size=32, embedding_dim=8,
             n_augmentations=2, random_state=0),
        "images",
    ),
}


#: The same five estimators on feature input (MLP backbones), one or two epochs per stage (every
#: estimator trains at least two epochs in all): for tests of the mechanics (the engine, failure
#: behaviour) rather than of the results.
FEATURE_ESTIMATORS = [
    TEMIClusterer(n_clusters=3, n_heads=2, n_neighbors=5, hidden_dim=16, bottleneck_dim=8,
                  batch_size=32, max_epochs=2),
    SCANClusterer(n_clusters=3, n_neighbors=5, max_epochs=2, self_labeling_epochs=2,
                  self_labeling_batch_size=32, batch_size=32),
    DeepClusterer(n_clusters=3, n_components=4, max_epochs=2, batch_size=32),
    MMDCClusterer(n_clusters=3, max_epochs=2, batch_size=32),
    ADCClusterer(n_clusters=3, warmup_epochs=1, max_epochs=2, batch_size=32),
]


def make_estimator(name, **params):
    """A fresh estimator of the table, with ``params`` overriding its configuration."""
    cls, defaults, _ = ESTIMATORS[name]
    return cls(**{**defaults, **params})


@pytest.fixture(scope="session")
def digits3():
    """240 digits of classes 0, 1 and 2 (80 of each): ``features``
    (240, 64) float32 in [0, 1], ``images`` (240, 8, 8) uint8 and the labels ``y``. 240
    samples: two cross-validation folds of 120 keep faiss' 39 points per centroid for 3
    clusters."""
    data = load_digits()
    keep = np.flatnonzero(data.target < 3)[:240]
    return {
        "features": (data.data[keep] / 16).astype(np.float32),
        "images": (data.images[keep] * 255 / 16).round().astype(np.uint8),
        "y": data.target[keep],
    }


def count_epochs(patch, interrupt_at=None):
    """Count the epochs that fits train from now on (their stages and their ``n_init`` fits
    together); with ``interrupt_at``, epoch number ``interrupt_at`` raises KeyboardInterrupt
    when it starts, as Ctrl-C would. ``patch``: pytest's ``monkeypatch`` (or a context of it).
    Returns the count (a one-element list)."""
    run = engine.Trainer.run
    count = [0]

    def counting_run(trainer, stage):
        epoch = stage.run_epoch

        def counted(stage):
            count[0] += 1
            if count[0] == interrupt_at:
                raise KeyboardInterrupt
            return epoch(stage)

        stage.run_epoch = counted
        return run(trainer, stage)

    patch.setattr(engine.Trainer, "run", counting_run)
    return count
