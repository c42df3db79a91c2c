"""Benchmark of SCANClusterer: the paper's ablation order on small real data.

For each data set and seed: SimCLR pretext once, then
  * KMeans (sklearn, n_init=10) on the pixels,
  * KMeans on the pretext features (``transform``: 128-d L2-normalised projection),
  * SCAN loss only (``self_labeling=False``) on the neighbours of that pretext model,
  * SCAN + self-labelling,
the last two reuse the fitted pretext model (``backbone=pretext_model_, pretext=None``).
Reports ACC (Hungarian) / NMI / ARI mean ± std over seeds, the neighbour purity (fraction of the
k mined neighbours, self excluded, that share the sample's class) and the seconds of each step.
Labels are used for scoring only.

Usage::

    python benchmarks/bench_scan.py            # digits + Fashion-MNIST 10k subset, 3 seeds
    python benchmarks/bench_scan.py --quick    # digits only, 1 seed, short schedules
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from _common import digits_images, fashion_mnist_subset, scores
from sklearn.cluster import KMeans

from skdeepcluster import SCANClusterer

#: Per data set: the pretext configuration and the clustering configuration (CPU budget).
CONFIGS = {
    "digits": dict(
        pretext=dict(backbone="mlp", pretext_epochs=40, pretext_batch_size=256, flip=False),
        scan=dict(
            max_epochs=20, batch_size=128, lr=1e-3, n_heads=3, augmentation="simclr", flip=False
        ),
        selflabel=dict(
            self_labeling_epochs=20, self_labeling_batch_size=1000, self_labeling_lr=1e-4
        ),
    ),
    "fashion10k": dict(
        pretext=dict(backbone="mlp", pretext_epochs=15, pretext_batch_size=256),
        scan=dict(max_epochs=10, batch_size=256, lr=1e-3, n_heads=3, augmentation="simclr"),
        selflabel=dict(
            self_labeling_epochs=5, self_labeling_batch_size=1000, self_labeling_lr=1e-4
        ),
    ),
}


def stage_seconds(model, stage):
    return float(sum(e["seconds"] for e in model.history_ if e["stage"] == stage))


def run_seed(images, y, config, seed):
    rows, times = {}, {}
    flat = images.reshape(len(images), -1).astype(np.float32) / 255
    start = time.perf_counter()
    rows["KMeans (pixels)"] = scores(
        y, KMeans(10, n_init=10, random_state=seed).fit_predict(flat)
    )
    times["KMeans (pixels)"] = time.perf_counter() - start

    start = time.perf_counter()
    pretext = SCANClusterer(
        10, **config["pretext"], self_labeling=False, max_epochs=1, n_heads=1, random_state=seed
    ).fit(images)
    times["pretext"] = stage_seconds(pretext, "pretext")
    features = pretext.transform(images)
    rows["KMeans (pretext features)"] = scores(
        y, KMeans(10, n_init=10, random_state=seed).fit_predict(features)
    )
    purity = float((y[pretext.neighbors_[:, 1:]] == y[:, None]).mean())

    common = dict(backbone=pretext.pretext_model_, pretext=None, random_state=seed)
    scan_params = {k: v for k, v in config["scan"].items()}
    start = time.perf_counter()
    scan = SCANClusterer(10, **common, **scan_params, self_labeling=False).fit(images)
    times["mining+scan"] = time.perf_counter() - start
    rows["SCAN loss"] = scores(y, scan.labels_)

    full = SCANClusterer(10, **common, **scan_params, **config["selflabel"]).fit(images)
    times["selflabel"] = stage_seconds(full, "selflabel")
    rows["SCAN + self-labelling"] = scores(y, full.labels_)
    rows["SCAN + self-labelling"]["n_confident"] = full.n_confident_
    return rows, times, purity


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, 1 seed, short runs")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion10k"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    default_out = os.path.join(os.path.dirname(__file__), "results", "scan.json")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets = args.datasets
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.quick:
        datasets, seeds = ["digits"], [0]
        for part, key, value in [
            ("pretext", "pretext_epochs", 5),
            ("scan", "max_epochs", 5),
            ("selflabel", "self_labeling_epochs", 5),
        ]:
            CONFIGS["digits"][part][key] = value

    results = {"command": "python benchmarks/bench_scan.py " + " ".join(
        a for a in os.sys.argv[1:]), "torch_threads": torch.get_num_threads(), "datasets": {}}
    for name in datasets:
        images, y = digits_images() if name == "digits" else fashion_mnist_subset(10_000)
        per_seed, all_times, purities = [], [], []
        for seed in seeds:
            rows, times, purity = run_seed(images, y, CONFIGS[name], seed)
            per_seed.append(rows)
            all_times.append(times)
            purities.append(purity)
            print(f"[{name} seed {seed}] purity={purity:.3f} " + "  ".join(
                f"{method}: acc={row['acc']:.3f}" for method, row in rows.items()), flush=True)
        summary = {}
        for method in per_seed[0]:
            summary[method] = {
                metric: {
                    "mean": float(np.mean([r[method][metric] for r in per_seed])),
                    "std": float(np.std([r[method][metric] for r in per_seed])),
                }
                for metric in ("acc", "nmi", "ari")
            }
        results["datasets"][name] = {
            "n_samples": int(len(images)),
            "image_shape": list(images.shape[1:]),
            "seeds": seeds,
            "config": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in CONFIGS[name].items()},
            "neighbour_purity": {"mean": float(np.mean(purities)), "std": float(np.std(purities))},
            "seconds": {k: float(np.mean([t[k] for t in all_times])) for k in all_times[0]},
            "summary": summary,
            "per_seed": per_seed,
        }

    lines = []
    for name, result in results["datasets"].items():
        purity = result["neighbour_purity"]
        lines.append(
            f"\n{name} (n={result['n_samples']}, seeds={result['seeds']}, neighbour purity "
            f"k=20: {purity['mean']:.3f} ± {purity['std']:.3f})\n"
        )
        lines.append("| method | ACC | NMI | ARI |")
        lines.append("|---|---|---|---|")
        for method, metrics in result["summary"].items():
            cells = " | ".join(
                f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}"
                for m in ("acc", "nmi", "ari")
            )
            lines.append(f"| {method} | {cells} |")
        lines.append(
            "\nseconds (mean per seed): "
            + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items())
        )
    table = "\n".join(lines)
    print(table)
    results["table"] = table
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
