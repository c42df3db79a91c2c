"""Benchmark ADCClusterer against k-means on digits and a Fashion-MNIST subset.

ADC with its defaults' schedule, and the two ablations of the paper's direction: without the
k-means initialisation of the centroids (``kmeans_init=False``) and without the augmentation
association (``beta=0``); scikit-learn's KMeans (10 inits) on the raw pixels. ACC / NMI / ARI
mean ± std over seeds and the fit time. Protocol: trained and scored on the same images (the
paper's full-dataset protocol); labels only score.

    python benchmarks/bench_adc.py            # full run
    python benchmarks/bench_adc.py --quick    # one seed, digits only
    python benchmarks/bench_adc.py --datasets fashion --methods ADC --seeds 1
        # a part: rows of other (dataset, method) pairs already in the JSON are kept
"""

import argparse
import json
import os
import time

import numpy as np
from _common import add_seed_stats, digits_images, fashion_mnist_subset, scores
from sklearn.cluster import KMeans

from skdeepcluster import ADCClusterer

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "adc.json")

VARIANTS = {
    "KMeans (pixels)": None,
    "ADC": {},
    "ADC without k-means init": {"kmeans_init": False},
    "ADC without aug. association": {"beta": 0.0},
}


def adc_params(dataset, warmup_epochs, epochs):
    """The benchmark configuration: an MLP (512, 512) backbone on the pixels (the paper's
    convnets cost seconds per step on 2 CPU cores), the paper's loss weights and schedule shape;
    flips only for Fashion-MNIST (a flipped digit is another symbol)."""
    return dict(
        backbone="mlp",
        warmup_epochs=warmup_epochs,
        max_epochs=epochs,
        flip=dataset != "digits",
    )


def run(datasets, methods, seeds, schedule):
    rows = []
    for name, (images, y) in datasets.items():
        warmup_epochs, epochs = schedule[name]
        for method in methods:
            variant = VARIANTS[method]
            per_seed, times = [], []
            for seed in seeds:
                start = time.perf_counter()
                if variant is None:
                    labels = KMeans(10, n_init=10, random_state=seed).fit_predict(
                        images.reshape(len(y), -1) / 255.0
                    )
                else:
                    params = {**adc_params(name, warmup_epochs, epochs), **variant}
                    labels = ADCClusterer(10, random_state=seed, **params).fit(images).labels_
                times.append(time.perf_counter() - start)
                per_seed.append(scores(y, labels))
                print(f"{name:8s} {method:30s} seed={seed} "
                      + " ".join(f"{k}={v:.3f}" for k, v in per_seed[-1].items())
                      + f" {times[-1]:.0f}s", flush=True)
            row = {"dataset": name, "method": method, "n_samples": len(y),
                   "epochs": None if variant is None else f"{warmup_epochs}+{epochs}",
                   "seeds": list(seeds), "seconds_mean": float(np.mean(times))}
            rows.append(add_seed_stats(row, per_seed))
    return rows


def markdown(rows):
    lines = [
        "| dataset | method | epochs (warm-up+clustering) | ACC | NMI | ARI | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r[k + '_mean']:.3f} ± {r[k + '_std']:.3f}" for k in ("acc", "nmi", "ari")]
        lines.append(f"| {r['dataset']} | {r['method']} | {r['epochs'] or '-'} | "
                     + " | ".join(cells) + f" | {r['seconds_mean']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, digits only")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-epochs", type=int, nargs=2, default=(10, 10),
                        metavar=("WARMUP", "CLUSTERING"))
    parser.add_argument("--fashion-epochs", type=int, nargs=2, default=(2, 6),
                        metavar=("WARMUP", "CLUSTERING"))
    parser.add_argument("--fashion-size", type=int, default=10_000)
    parser.add_argument("--datasets", nargs="+", choices=("digits", "fashion"),
                        default=("digits", "fashion"))
    parser.add_argument("--methods", nargs="+", choices=tuple(VARIANTS), default=tuple(VARIANTS))
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()

    seeds = range(1 if args.quick else args.seeds)
    names = ("digits",) if args.quick else args.datasets
    loaders = {
        "digits": digits_images,
        "fashion": lambda: fashion_mnist_subset(args.fashion_size),
    }
    datasets = {name: loaders[name]() for name in names}
    schedule = {"digits": tuple(args.digits_epochs), "fashion": tuple(args.fashion_epochs)}
    rows = run(datasets, args.methods, seeds, schedule)
    print(markdown(rows))
    # Keep the rows of (dataset, method) pairs not run this time: parts can run as separate jobs.
    if os.path.exists(args.output):
        with open(args.output) as handle:
            previous = json.load(handle)["rows"]
        done = {(r["dataset"], r["method"]) for r in rows}
        rows = [r for r in previous if (r["dataset"], r["method"]) not in done] + rows
        order = {(d, m): i for i, (d, m) in enumerate(
            (d, m) for d in ("digits", "fashion") for m in VARIANTS)}
        rows.sort(key=lambda r: order[(r["dataset"], r["method"])])
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump({"command": "python benchmarks/bench_adc.py", "rows": rows,
                   "table": markdown(rows)}, handle, indent=2)


if __name__ == "__main__":
    main()
