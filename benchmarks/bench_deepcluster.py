"""Benchmark DeepClusterer (k-means and PIC variants) against KMeans on pixels.

Datasets: sklearn digits (1 797 8×8 images) and a 10 000-image Fashion-MNIST subset (the first
10 000 training images). Reports ACC / NMI / ARI (mean ± std over seeds), the number of clusters
used, total fit time and the time per epoch split into feature extraction, clustering and
training; and faiss k-means vs sklearn KMeans at equal iterations on 256-d PCA-whitened
features.

    python benchmarks/bench_deepcluster.py            # full run
    python benchmarks/bench_deepcluster.py --quick    # smoke run (1 seed, few epochs)
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from _common import fashion_mnist
from _common import scores as common_scores
from sklearn.cluster import KMeans

from skdeepcluster import DeepClusterer, load_digits_images
from skdeepcluster.kmeans import kmeans, pca_whiten, train_pca_whitening
from skdeepcluster.metrics import overclustering_accuracy_score
from skdeepcluster.nn.backbones import SmallCNN

RESULTS = os.path.join(os.path.dirname(__file__), "results", "deepcluster.json")


def load_fashion(n):
    """The first ``n`` Fashion-MNIST training images and their labels."""
    images, labels = fashion_mnist("train")
    return images[:n].copy(), labels[:n]


def scores(y, labels):
    """The shared ACC / NMI / ARI plus what PIC's many clusters need."""
    return {
        **common_scores(y, labels),
        "overclustering_acc": overclustering_accuracy_score(y, labels),
        "n_clusters_used": int(np.unique(labels).size),
    }


def run_kmeans(X, y, seed):
    start = time.perf_counter()
    labels = KMeans(10, n_init=10, random_state=seed).fit_predict(X.reshape(len(X), -1) / 255.0)
    return {**scores(y, labels), "fit_seconds": time.perf_counter() - start}


def run_deepcluster(X, y, seed, params):
    params = dict(params)
    torch.manual_seed(seed)  # the backbone's initial weights differ between seeds
    params["backbone"] = params["backbone"]()
    model = DeepClusterer(random_state=seed, device="cpu", **params)
    start = time.perf_counter()
    model.fit(X)
    seconds = time.perf_counter() - start
    epochs = [h for h in model.history_ if h["stage"] == "deepcluster"]
    result = {**scores(y, model.labels_), "fit_seconds": seconds}
    for key in ("seconds_features", "seconds_clustering", "seconds_training"):
        result["epoch_" + key] = float(np.mean([h[key] for h in epochs]))
    result["final_nmi_previous"] = float(model.history_[-2]["nmi_previous"])
    return result, model


def time_kmeans(features, n_clusters, n_iter, seed=0):
    """faiss k-means vs sklearn KMeans (Lloyd, one init, tol=0) at the same iterations."""
    start = time.perf_counter()
    kmeans(features, n_clusters, n_iter=n_iter, seed=seed)
    faiss_seconds = time.perf_counter() - start
    start = time.perf_counter()
    model = KMeans(n_clusters, n_init=1, max_iter=n_iter, tol=0.0, init="random",
                   random_state=seed, algorithm="lloyd").fit(features)
    sklearn_seconds = time.perf_counter() - start
    return {"n_clusters": n_clusters, "n_iter": n_iter, "sklearn_n_iter_run": int(model.n_iter_),
            "faiss_seconds": faiss_seconds, "sklearn_seconds": sklearn_seconds,
            "n_samples": int(features.shape[0]), "dim": int(features.shape[1])}


def mean_std(runs, key):
    values = np.array([r[key] for r in runs], dtype=float)
    return float(values.mean()), float(values.std())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, few epochs, small subset")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-epochs", type=int, default=25)
    parser.add_argument("--fashion-epochs", type=int, default=3)
    parser.add_argument("--fashion-n", type=int, default=10_000)
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion"])
    parser.add_argument("--methods", nargs="*",
                        default=["kmeans", "deepcluster", "deepcluster_pic"],
                        help="none: only the k-means timing")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.digits_epochs, args.fashion_epochs, args.fashion_n = 1, 3, 1, 2000

    datasets = {}
    if "digits" in args.datasets:
        X, y = load_digits_images()
        datasets["digits"] = (X, y, args.digits_epochs, 8)
    if "fashion" in args.datasets:
        X, y = load_fashion(args.fashion_n)
        datasets["fashion"] = (X, y, args.fashion_epochs, 28)

    results = {"command": "python benchmarks/bench_deepcluster.py " + " ".join(
        a for a in os.sys.argv[1:]), "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "runs": {}, "kmeans_timing": []}
    rows = []
    for name, (X, y, epochs, size) in datasets.items():
        # The quality test's configuration: a small CNN after Sobel (2 channels), 10 whitened
        # components, small-image affine augmentation, batch 32.
        def backbone(size=size):
            return SmallCNN(2, width=16, image_size=size)

        common = dict(n_clusters=10, backbone=backbone, max_epochs=epochs, batch_size=32,
                      n_components=10, augmentation="affine", sobel=True)
        configs = {
            "kmeans": None,
            "deepcluster": common,
            "deepcluster_pic": {**common, "clustering": "pic"},
        }
        for method in args.methods:
            runs, last_model = [], None
            for seed in range(args.seeds):
                if configs[method] is None:
                    run = run_kmeans(X, y, seed)
                else:
                    run, last_model = run_deepcluster(X, y, seed, configs[method])
                runs.append(run)
                print(name, method, seed, {k: round(v, 4) for k, v in run.items()}, flush=True)
            results["runs"][f"{name}/{method}"] = runs
            row = {"dataset": name, "method": method}
            for key in runs[0]:
                row[key] = mean_std(runs, key)
            rows.append(row)
            if method == "deepcluster" and last_model is not None:
                results["config_" + name] = {k: (repr(v()) if k == "backbone" else v)
                                             for k, v in configs[method].items()}
        # k-means timing on 256-d whitened features: the PCA-whitened pixels (DeepCluster's
        # preprocessing; the pixel dimension is >= 256 only for Fashion-MNIST).
        flat = X.reshape(len(X), -1).astype(np.float32) / 255.0
        # (The regularised whitening: constant pixels would divide by a zero eigenvalue.)
        whitened, _ = pca_whiten(flat, matrix=train_pca_whitening(flat, 256))
        for n_clusters in (10, 100):
            timing = time_kmeans(whitened, n_clusters, 20)
            timing["dataset"] = name
            results["kmeans_timing"].append(timing)
            print("kmeans timing", timing, flush=True)

    results["table"] = rows
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)

    def fmt(row, key, digits=3):
        mean, std = row[key]
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    print("\n| dataset | method | ACC | NMI | ARI | clusters used | fit s | epoch: features s "
          "| clustering s | training s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        split = (" | ".join(fmt(row, "epoch_" + k, 2) for k in
                            ("seconds_features", "seconds_clustering", "seconds_training"))
                 if "epoch_seconds_features" in row else "– | – | –")
        print(f"| {row['dataset']} | {row['method']} | {fmt(row, 'acc')} | {fmt(row, 'nmi')} | "
              f"{fmt(row, 'ari')} | {row['n_clusters_used'][0]:.1f} | "
              f"{fmt(row, 'fit_seconds', 1)} | "
              f"{split} |")
    print("\n| dataset | n × d | K | iterations | faiss s | sklearn s |")
    print("|---|---|---|---|---|---|")
    for t in results["kmeans_timing"]:
        print(f"| {t['dataset']} | {t['n_samples']} × {t['dim']} | {t['n_clusters']} | "
              f"{t['n_iter']} (sklearn ran {t['sklearn_n_iter_run']}) | {t['faiss_seconds']:.3f} | "
              f"{t['sklearn_seconds']:.3f} |")


if __name__ == "__main__":
    main()
