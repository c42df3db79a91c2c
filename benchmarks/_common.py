"""Helpers shared by the benchmark scripts: data loading, scoring, table printing."""

import ast
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepcluster import clustering_accuracy_score

FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
RESULTS_DIR = Path(__file__).parent / "results"


def fashion_mnist(split):
    """Fashion-MNIST images (n, 28, 28) uint8 and labels, from Debian's dataset-fashion-mnist."""
    prefix = "train" if split == "train" else "t10k"
    images_path = FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise SystemExit(f"{images_path} is missing: apt-get install -y dataset-fashion-mnist")
    with gzip.open(images_path) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def digits_images():
    """The 1797 digits as uint8 images (n, 8, 8) in [0, 255], and their labels."""
    digits = load_digits()
    return (digits.images * 255 / 16).astype(np.uint8), digits.target


def fashion_mnist_subset(n, seed=0, in_file_order=False):
    """``n`` images drawn without replacement from the 60 000 Fashion-MNIST training images,
    in the order drawn or, with ``in_file_order``, the same images in the files' order."""
    images, labels = fashion_mnist("train")
    keep = np.random.RandomState(seed).choice(len(labels), n, replace=False)
    if in_file_order:
        keep = np.sort(keep)
    return images[keep], labels[keep]


def digits_features():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def scores(y_true, y_pred):
    return {
        "acc": clustering_accuracy_score(y_true, y_pred),
        "nmi": normalized_mutual_info_score(y_true, y_pred),
        "ari": adjusted_rand_score(y_true, y_pred),
    }


def stage_epochs(history):
    """Epochs trained per stage of a fit's ``history_``, in the order the stages ran."""
    stages = dict.fromkeys(entry["stage"] for entry in history)
    return {stage: sum(1 for e in history if e["stage"] == stage) for stage in stages}


def kmeans_run(X_train, X_test, y_test, n_clusters, seed):
    start = time.perf_counter()
    model = KMeans(n_clusters, n_init=10, random_state=seed).fit(X_train)
    return {**scores(y_test, model.predict(X_test)), "seconds": time.perf_counter() - start}


def summarize(runs):
    """Mean ± std of every numeric key over the runs (seeds)."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float))]
    return {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
            for k in keys}


def add_seed_stats(row, per_seed, keys=("acc", "nmi", "ari")):
    """Per-seed values, mean and std of each score key, written into ``row``."""
    for key in keys:
        values = [run[key] for run in per_seed]
        row[key] = values
        row[f"{key}_mean"] = float(np.mean(values))
        row[f"{key}_std"] = float(np.std(values))
    return row


def print_table(rows, title):
    """rows: list of (name, summary) → an RST grid-like simple table on stdout."""
    print(f"\n{title}\n")
    header = f"{'method':44s} {'ACC':>15s} {'NMI':>15s} {'ARI':>15s} {'fit s':>12s}"
    print(header)
    print("-" * len(header))
    for name, summary in rows:
        cells = [f"{summary[k][0]:.3f} ± {summary[k][1]:.3f}" for k in ("acc", "nmi", "ari")]
        print(f"{name:44s} {cells[0]:>15s} {cells[1]:>15s} {cells[2]:>15s} "
              f"{summary['seconds'][0]:>12.1f}")


def overrides(pairs):
    """``--set`` values: ``KEY=VALUE`` pairs, each value a Python literal (``None``, ``10``,
    ``0.5``, ``'adam'``) or else a plain string."""
    params = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def save(name, payload):
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {path}")
