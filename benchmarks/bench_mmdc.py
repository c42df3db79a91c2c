"""Benchmark MMDCClusterer against k-means on digits and a Fashion-MNIST subset.

Four MMDC variants (rotation task on/off × refinement stage on/off) and scikit-learn's KMeans
on the raw pixels, ACC / NMI / ARI mean ± std over seeds and the fit time. Protocol: trained and
scored on the same images (the paper's full-dataset protocol); labels only score.

    python benchmarks/bench_mmdc.py            # full run
    python benchmarks/bench_mmdc.py --quick    # one seed, fewer epochs, digits only
"""

import argparse
import json
import os
import time

import numpy as np
from _common import add_seed_stats, digits_images, fashion_mnist_subset, scores
from joblib import Parallel, delayed
from sklearn.cluster import KMeans

from skdeepcluster import MMDCClusterer

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mmdc.json")


def mmdc_params(epochs, rotation, refine, augmentation):
    """The benchmark configuration: an MLP on the pixels (a CNN does not fit the CPU budget),
    the authors' MNIST schedule shape (lr ÷10 at 80 % of the epochs, refinement from 40 %)."""
    return dict(
        backbone="mlp",  # MLP(n_pixels → 512 → 512), built inside fit under random_state
        augmentation=augmentation,
        rotation_task=rotation,
        refine_epoch=int(0.4 * epochs) if refine else None,
        max_epochs=epochs,
        lr_decay_epochs=(int(0.8 * epochs),),
        lr_decay_gamma=0.1,
    )


METHODS = {"KMeans (pixels)": None}
for _rotation in (True, False):
    for _refine in (False, True):
        METHODS[f"MMDC rot={'on' if _rotation else 'off'} refine={'on' if _refine else 'off'}"] = (
            _rotation, _refine)


def fit_one(name, images, y, method, seed, epochs, augmentation):
    """One fit, in its own process with one torch thread (fits run side by side)."""
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    variant = METHODS[method]
    if variant is None:
        labels = KMeans(10, n_init=10, random_state=seed).fit_predict(
            images.reshape(len(y), -1) / 255.0)
    else:
        params = mmdc_params(epochs, *variant, augmentation)
        labels = MMDCClusterer(10, random_state=seed, **params).fit(images).labels_
    seconds = time.perf_counter() - start
    result = scores(y, labels)
    print(f"{name:12s} {method:26s} seed={seed} "
          + " ".join(f"{k}={v:.3f}" for k, v in result.items()) + f" {seconds:.0f}s", flush=True)
    return result, seconds


def run(datasets, seeds, epochs, augmentations, methods, jobs):
    tasks = [(name, method, seed) for name in datasets for method in methods for seed in seeds]
    outputs = Parallel(n_jobs=jobs)(
        delayed(fit_one)(name, *datasets[name], method, seed, epochs[name], augmentations[name])
        for name, method, seed in tasks
    )
    done = dict(zip(tasks, outputs, strict=True))
    rows = []
    for name in datasets:
        for method in methods:
            per_seed = [done[name, method, seed][0] for seed in seeds]
            times = [done[name, method, seed][1] for seed in seeds]
            row = {"dataset": name, "method": method, "n_samples": len(datasets[name][1]),
                   "epochs": None if METHODS[method] is None else epochs[name],
                   "augmentation": None if METHODS[method] is None else augmentations[name],
                   "seeds": list(seeds), "seconds_mean": float(np.mean(times))}
            rows.append(add_seed_stats(row, per_seed))
    return rows


def markdown(rows):
    lines = ["| dataset | method | epochs | ACC | NMI | ARI | time (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k + '_mean']:.3f} ± {r[k + '_std']:.3f}" for k in ("acc", "nmi", "ari")]
        lines.append(f"| {r['dataset']} | {r['method']} | {r['epochs'] or '-'} | "
                     + " | ".join(cells) + f" | {r['seconds_mean']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, digits only, 10 epochs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--digits-epochs", type=int, default=50)
    parser.add_argument("--fashion-epochs", type=int, default=20)
    parser.add_argument("--fashion-size", type=int, default=10_000)
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-10k"],
                        choices=["digits", "fashion-10k"])
    parser.add_argument("--digits-augmentation", default="affine")
    parser.add_argument("--fashion-augmentation", default="crop_flip_jitter")
    parser.add_argument("--methods", nargs="*", help="subset of: " + ", ".join(METHODS))
    parser.add_argument("--jobs", type=int, default=1, help="fits run side by side")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()

    epochs = {"digits": args.digits_epochs, "fashion-10k": args.fashion_epochs}
    augmentations = {"digits": args.digits_augmentation, "fashion-10k": args.fashion_augmentation}
    seeds = list(range(args.seeds))
    names = ["digits"] if args.quick else args.datasets
    if args.quick:
        seeds, epochs["digits"] = [0], 10
    loaders = {"digits": digits_images,
               "fashion-10k": lambda: fashion_mnist_subset(args.fashion_size)}
    datasets = {name: loaders[name]() for name in names}
    methods = [m for m in METHODS if not args.methods or m in args.methods]
    rows = run(datasets, seeds, epochs, augmentations, methods, args.jobs)
    command = "python benchmarks/bench_mmdc.py " + " ".join(os.sys.argv[1:])
    for row in rows:
        row["command"] = command
    # rows of datasets or methods not run now are kept from an earlier run
    previous = []
    if os.path.exists(args.output):
        with open(args.output) as handle:
            previous = json.load(handle)["results"]
    done = {(r["dataset"], r["method"]) for r in rows}
    rows = [r for r in previous if (r["dataset"], r["method"]) not in done] + rows
    order = {name: i for i, name in enumerate(loaders)}
    rows.sort(key=lambda r: (order[r["dataset"]], list(METHODS).index(r["method"])))
    table = markdown(rows)
    print(table)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump({"protocol": "train and score on the same images; labels only score",
                   "results": rows, "table": table}, handle, indent=2)


if __name__ == "__main__":
    main()
