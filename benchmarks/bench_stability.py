"""Where a method's seed spread on the digits comes from (issue 16, stability).

For each seed, ``Estimator(n_clusters=10, random_state=seed).fit(X)`` on the 8×8 digits (the
defaults, plus ``--set`` overrides), then three label-using diagnostics of the fitted model —
for the benchmark only, nothing here feeds back into a fit:

* the clustering itself: ACC / NMI, the clusters used, and how many true classes share their
  majority cluster with another class (merged classes) or spread over two clusters;
* the learned representation (``transform``): the share of each sample's 20 nearest neighbours
  with its class (neighbour purity), which bounds any clustering of that space;
* k-means on that representation with many restarts (``KMeans(n_init=100)``): its ACC and
  objective, against the fit's own ACC — a fit whose space is good but whose partition is poor
  gains here, a fit whose space is poor does not;
* spectral clustering of the same representation's 20-nearest-neighbour graph: whether the
  classes are separable in that space by its neighbourhoods where k-means' round clusters are
  not.

``--trace`` (DeepClusterer) also records the ACC of every reassignment's pseudo-labels, to
see whether they settle or wander from epoch to epoch, beside the ``changed`` share of each
epoch's ``history_``.

    OMP_NUM_THREADS=1 python benchmarks/bench_stability.py --estimator DeepClusterer \
        --seeds 0 1 2 3 4 5 6 7 8 9 --tag dc
"""

import argparse
import time

import numpy as np
import torch
from _common import digits_features, digits_images, overrides, save, scores
from sklearn.cluster import KMeans, SpectralClustering
from sklearn.metrics.cluster import contingency_matrix
from sklearn.neighbors import NearestNeighbors

import skdeepcluster


def neighbour_purity(Z, y, k=20):
    """Mean share of each sample's ``k`` nearest neighbours (itself excluded) with its class."""
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    return float((y[index[:, 1:]] == y[:, None]).mean())


def partition_faults(y, labels):
    """(classes merged: classes whose majority cluster is also another class's majority,
    classes split: classes with at least 25 % of their samples outside their majority cluster)."""
    table = contingency_matrix(y, labels)  # classes × clusters
    majority = table.argmax(axis=1)
    shared = np.bincount(majority)[majority] > 1
    split = table.max(axis=1) < 0.75 * table.sum(axis=1)
    return int(shared.sum()), int(split.sum())


def trace_reassignments(model, y):
    """Wrap a DeepClusterer's clustering so that the ACC of every training reassignment's
    pseudo-labels is appended to the returned list (the labels are read, never fed back)."""
    trace, cluster = [], model._cluster

    def traced(features, generator, n_clusters, final=False):
        result = cluster(features, generator, n_clusters, final)
        if not final:
            trace.append(scores(y, result[1])["acc"])
        return result

    model._cluster = traced  # an instance attribute: the fit calls it, get_params ignores it
    return trace


def diagnose(estimator, X, y, seed, params, trace=False):
    model = getattr(skdeepcluster, estimator)(n_clusters=10, random_state=seed, **params)
    pseudo_label_acc = trace_reassignments(model, y) if trace else None
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(X)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    Z = model.transform(X)
    merged, split = partition_faults(y, model.labels_)
    restarts = KMeans(10, n_init=100, random_state=seed).fit(Z)
    used, index = np.unique(model.labels_, return_inverse=True)
    means = np.stack([Z[index == c].mean(axis=0) for c in range(used.size)])
    own_objective = float(np.square(Z - means[index]).sum())  # the fit's partition, k-means cost
    return {
        "seed": seed,
        **scores(y, model.labels_),
        "clusters_used": int(np.unique(model.labels_).size),
        "classes_merged": merged,
        "classes_split": split,
        "purity20": neighbour_purity(Z, y),
        "kmeans100": scores(y, restarts.labels_),
        "kmeans100_objective": float(restarts.inertia_),
        "spectral_knn20": scores(y, SpectralClustering(
            10, affinity="nearest_neighbors", n_neighbors=20, random_state=seed).fit_predict(Z)),
        "own_partition_objective": own_objective,
        "label_free_score": float(model.score(X)),
        "n_iter": int(model.n_iter_),
        "kmeans_init_acc": (None if getattr(model, "kmeans_labels_", None) is None  # ADC
                            else scores(y, model.kmeans_labels_)["acc"]),
        "wall": wall,
        "cpu": cpu,
        **({"pseudo_label_acc": pseudo_label_acc,
            "changed": [h.get("changed") for h in model.history_[:-1]]} if trace else {}),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimator", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tag", required=True)
    parser.add_argument("--trace", action="store_true",
                        help="DeepClusterer: the ACC of every reassignment's pseudo-labels")
    args = parser.parse_args()
    # TEMI clusters features (pixels / 16); the other four learn from the 8×8 images
    X, y = digits_features() if args.estimator == "TEMIClusterer" else digits_images()
    params = overrides(args.set)
    payload = {"command": "python benchmarks/bench_stability.py " + " ".join(__import__(
        "sys").argv[1:]), "torch_threads": torch.get_num_threads(), "params": params, "runs": []}
    for seed in args.seeds:
        row = diagnose(args.estimator, X, y, seed, params, trace=args.trace)
        payload["runs"].append(row)
        print(f"seed {seed}: acc {row['acc']:.3f} purity {row['purity20']:.3f} "
              f"kmeans100 {row['kmeans100']['acc']:.3f} "
              f"spectral {row['spectral_knn20']['acc']:.3f} merged {row['classes_merged']} "
              f"split {row['classes_split']} used {row['clusters_used']} "
              f"objective own/best {row['own_partition_objective']:.1f}/"
              f"{row['kmeans100_objective']:.1f} cpu {row['cpu']:.0f}", flush=True)
        if args.trace:
            late = row["pseudo_label_acc"][5:]
            print(f"  pseudo-labels after epoch 5: ACC {min(late):.3f}-{max(late):.3f}, "
                  f"last 10 {np.mean(late[-10:]):.3f}", flush=True)
        save(f"stability_{args.tag}", payload)  # after every seed: a stopped run keeps its rows
    runs = payload["runs"]
    acc = np.array([r["acc"] for r in runs])
    purity = np.array([r["purity20"] for r in runs])
    best = np.array([r["kmeans100"]["acc"] for r in runs])
    print(f"\nACC {acc.mean():.3f} ± {acc.std():.3f}; k-means x100 on transform "
          f"{best.mean():.3f} ± {best.std():.3f}; purity {purity.mean():.3f} ± {purity.std():.3f}")
    if len(runs) > 2:
        print(f"correlation ACC-purity {np.corrcoef(acc, purity)[0, 1]:.2f}")


if __name__ == "__main__":
    main()
