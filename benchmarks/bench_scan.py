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

``--datasets digits-defaults`` runs the estimator's own defaults (no parameter set) on the 8×8
digits, and ``--heads 1 10`` trains the SCAN step once per head count on the same pretext model:
the paper's lowest-loss head selection as a remedy for the seed spread (issue 16).

``--step-seeds N`` (with ``digits-defaults``) separates the two sources of that spread: the
pretext model of each seed is trained once (and kept in ``--pretext-cache``, so that later
runs reuse it), then the SCAN step and self-labelling run N times on it with other seeds. Each
fit's row holds ACC / NMI / ARI after the SCAN step and after self-labelling, the clusters
used, the label-free ``score`` and head loss, the kept epoch and the confident samples.

Usage::

    python benchmarks/bench_scan.py            # digits + Fashion-MNIST 10k subset, 3 seeds
    python benchmarks/bench_scan.py --quick    # digits only, 1 seed, short schedules
    python benchmarks/bench_scan.py --datasets digits-defaults --heads 1 10 --first-seed 0 \
        --seeds 1 --out benchmarks/results/scan_defaults_seed0.json      # one file per seed, then
    python benchmarks/bench_scan.py --merge benchmarks/results/scan_defaults_seed*.json \
        --out benchmarks/results/scan_defaults.json
    python benchmarks/bench_scan.py --datasets digits-defaults --first-seed 0 --seeds 1 \
        --step-seeds 8 --out benchmarks/results/scan_step_seeds_pretext0.json
"""

import argparse
import json
import os
import time

import joblib
import numpy as np
import torch
from _common import digits_images, fashion_mnist_subset, overrides, scores
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
    # the estimator's defaults: nothing set (the SCAN step's heads come from --heads)
    "digits-defaults": dict(pretext={}, scan={}, selflabel={}),
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


def run_seed(images, y, config, seed, heads=None, augmentations=None):
    rows, times = {}, {}
    flat = images.reshape(len(images), -1).astype(np.float32) / 255
    start = time.perf_counter()
    rows["KMeans (pixels)"] = scores(y, KMeans(10, n_init=10, random_state=seed).fit_predict(flat))
    times["KMeans (pixels)"] = time.perf_counter() - start

    pretext = fitted_pretext(images, config, seed)
    times["pretext"] = stage_seconds(pretext, "pretext")
    rows["KMeans (pretext features)"] = kmeans_on_features(pretext, images, y, seed)
    purity = neighbour_purity(pretext, y)

    common = dict(backbone=pretext.pretext_model_, pretext=None, random_state=seed)
    head_counts = heads or [config["scan"].get("n_heads", 1)]
    views = augmentations or [config["scan"].get("augmentation")]
    for n_heads in head_counts:
        for augmentation in views:
            scan_params = {**config["scan"], "n_heads": n_heads}
            if augmentation is not None:
                scan_params["augmentation"] = augmentation
            suffix = (f", {n_heads} head(s)" if len(head_counts) > 1 else "") + (
                f", {augmentation} views" if len(views) > 1 else ""
            )
            start = time.perf_counter()
            scan = SCANClusterer(10, **common, **scan_params, self_labeling=False).fit(images)
            times["mining+scan" + suffix] = time.perf_counter() - start
            rows["SCAN loss" + suffix] = scores(y, scan.labels_)

            full = SCANClusterer(10, **common, **scan_params, **config["selflabel"]).fit(images)
            times["selflabel" + suffix] = stage_seconds(full, "selflabel")
            rows["SCAN + self-labelling" + suffix] = scores(y, full.labels_)
            rows["SCAN + self-labelling" + suffix]["n_confident"] = full.n_confident_
    return rows, times, purity


def fitted_pretext(images, config, seed, cache_dir=None):
    """The seed's fitted pretext estimator (SimCLR and mining; the SCAN step cut to one
    epoch), from ``cache_dir`` when an earlier run left it there."""
    path = os.path.join(cache_dir, f"scan_pretext_seed{seed}.joblib") if cache_dir else None
    if path and os.path.exists(path):
        return joblib.load(path)
    pretext = SCANClusterer(
        10, **config["pretext"], self_labeling=False, max_epochs=1, n_heads=1, random_state=seed
    ).fit(images)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        joblib.dump(pretext, path)
    return pretext


def neighbour_purity(model, y):
    """Share of the mined neighbours (the sample itself left out) that share its class."""
    return float((y[model.neighbors_[:, 1:]] == y[:, None]).mean())


def kmeans_on_features(model, images, y, seed):
    return scores(y, KMeans(10, n_init=10, random_state=seed).fit_predict(model.transform(images)))


def run_step_seeds(images, y, config, seed, steps, cache_dir, params=None,
                   stages=("scan", "selflabel"), save=None):
    """The SCAN step (``"scan"``: a fit without self-labelling) and the whole clustering
    (``"selflabel"``) on one seed's pretext model, once per step index in ``steps`` (the fit's
    seed is ``1000 (seed + 1) + step``), ``params`` set on both fits; ``save(result)`` after
    every fit."""
    pretext = fitted_pretext(images, config, seed, cache_dir)
    result = {
        "pretext_seed": seed,
        "pretext_epochs": sum(e["stage"] == "pretext" for e in pretext.history_),
        "pretext_seconds": stage_seconds(pretext, "pretext"),
        "purity": neighbour_purity(pretext, y),
        "kmeans_pretext": kmeans_on_features(pretext, images, y, seed),
        "fits": [],
    }
    for step in steps:
        step_seed = 1000 * (seed + 1) + step
        common = dict(
            backbone=pretext.pretext_model_, pretext=None, random_state=step_seed,
            **config["scan"], **(params or {}),
        )
        row = {"step_seed": step_seed}
        result["fits"].append(row)
        stage_params = {"scan": dict(self_labeling=False), "selflabel": config["selflabel"]}
        for name in stages:
            wall, cpu = time.perf_counter(), time.process_time()
            model = SCANClusterer(10, **common, **stage_params[name]).fit(images)
            confident = [e["n_confident"] for e in model.history_ if e["stage"] == "selflabel"]
            row[name] = {
                **scores(y, model.labels_),
                "n_used": int(len(np.unique(model.labels_))),
                "score": float(model.score(images)),
                "head_loss": float(np.min(model.head_losses_)),
                "best_epoch": int(model.best_epoch_),
                "n_confident": int(model.n_confident_),
                "selflabel_confident_per_epoch": confident,
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
            }
            if save:
                save(result)
        print(
            f"[pretext {seed} step {step_seed}] "
            + "  ".join(
                f"{k}: acc={row[k]['acc']:.3f} used={row[k]['n_used']} "
                f"score={row[k]['score']:.4f} conf={row[k]['n_confident']}"
                for k in stages
            ),
            flush=True,
        )
    return result


def summarize(name, n_samples, image_shape, seeds, per_seed, all_times, purities):
    """One data set's entry of the results: mean ± std over seeds, and the per-seed rows."""
    summary = {
        method: {
            metric: {
                "mean": float(np.mean([r[method][metric] for r in per_seed])),
                "std": float(np.std([r[method][metric] for r in per_seed])),
            }
            for metric in ("acc", "nmi", "ari")
        }
        for method in per_seed[0]
    }
    return {
        "n_samples": int(n_samples),
        "image_shape": list(image_shape),
        "seeds": seeds,
        "config": {k: {kk: str(vv) for kk, vv in v.items()} for k, v in CONFIGS[name].items()},
        "neighbour_purity": {"mean": float(np.mean(purities)), "std": float(np.std(purities))},
        "seconds": {k: float(np.mean([t[k] for t in all_times])) for k in all_times[0]},
        "summary": summary,
        "per_seed": per_seed,
        "per_seed_seconds": all_times,
        "per_seed_purity": purities,
    }


def merge(paths):
    """Results of runs over disjoint seeds (one file each) as one, data set by data set."""
    runs = [json.load(open(path)) for path in paths]
    merged = {
        "command": " ; ".join(r["command"] for r in runs),
        "datasets": {},
        "torch_threads": sorted({r["torch_threads"] for r in runs}),
    }
    for name in runs[0]["datasets"]:
        parts = [r["datasets"][name] for r in runs if name in r["datasets"]]
        merged["datasets"][name] = summarize(
            name,
            parts[0]["n_samples"],
            parts[0]["image_shape"],
            [s for p in parts for s in p["seeds"]],
            [row for p in parts for row in p["per_seed"]],
            [t for p in parts for t in p["per_seed_seconds"]],
            [q for p in parts for q in p["per_seed_purity"]],
        )
    return merged


def print_results(results):
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
                f"{metrics[m]['mean']:.3f} ± {metrics[m]['std']:.3f}" for m in ("acc", "nmi", "ari")
            )
            lines.append(f"| {method} | {cells} |")
        lines.append(
            "\nseconds (mean per seed): "
            + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items())
        )
    table = "\n".join(lines)
    print(table)
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, 1 seed, short runs")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--datasets", nargs="+", default=["digits", "fashion10k"], choices=sorted(CONFIGS)
    )
    parser.add_argument(
        "--heads",
        type=int,
        nargs="+",
        default=None,
        help="train the SCAN step once per head count (default: the config's)",
    )
    parser.add_argument(
        "--augmentations",
        nargs="+",
        default=None,
        choices=["strong", "simclr", "none"],
        help="train the SCAN step once per augmentation (default: the config's)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="merge result files of disjoint seeds into --out, run nothing",
    )
    parser.add_argument(
        "--step-seeds",
        type=int,
        default=0,
        help="run the SCAN step and self-labelling this many times on each pretext model",
    )
    parser.add_argument("--first-step", type=int, default=0,
                        help="index of the first --step-seeds fit (seed 1000 (seed + 1) + index)")
    parser.add_argument(
        "--pretext-cache",
        default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "skdc_scan_pretext"),
        help="folder of fitted pretext estimators reused by --step-seeds runs",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["scan", "selflabel"],
        choices=["scan", "selflabel"],
        help="--step-seeds fits to run: the SCAN step alone, the whole clustering, or both",
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="parameters of the --step-seeds fits, e.g. self_labeling_lr=1e-4")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    default_out = os.path.join(os.path.dirname(__file__), "results", "scan.json")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()
    if args.merge:
        results = merge(args.merge)
        results["table"] = print_results(results)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        return
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

    results = {
        "command": "python benchmarks/bench_scan.py " + " ".join(a for a in os.sys.argv[1:]),
        "torch_threads": torch.get_num_threads(),
        "datasets": {},
    }
    if args.step_seeds:
        images, y = digits_images()
        results["step_seeds"] = []
        steps = range(args.first_step, args.first_step + args.step_seeds)

        def save(result):  # the finished pretext seeds and the one in progress
            with open(args.out, "w") as f:
                json.dump({**results, "step_seeds": results["step_seeds"] + [result]}, f,
                          indent=2)

        for seed in seeds:
            results["step_seeds"].append(run_step_seeds(
                images, y, CONFIGS["digits-defaults"], seed, steps, args.pretext_cache,
                overrides(args.set), args.stages, save,
            ))
        datasets = []
    for name in datasets:
        if name.startswith("digits"):
            images, y = digits_images()
        else:
            images, y = fashion_mnist_subset(10_000)
        per_seed, all_times, purities = [], [], []
        for seed in seeds:
            rows, times, purity = run_seed(
                images, y, CONFIGS[name], seed, args.heads, args.augmentations
            )
            per_seed.append(rows)
            all_times.append(times)
            purities.append(purity)
            print(
                f"[{name} seed {seed}] purity={purity:.3f} "
                + "  ".join(f"{method}: acc={row['acc']:.3f}" for method, row in rows.items()),
                flush=True,
            )
        results["datasets"][name] = summarize(
            name, len(images), images.shape[1:], seeds, per_seed, all_times, purities
        )
    if datasets:
        results["table"] = print_results(results)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
