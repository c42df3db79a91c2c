"""Image estimators with their defaults on Fashion-MNIST, trained on the 60 000 training images
and scored on the 10 000 test images (``predict``), against KMeans on the same pixels.

Each fit is ``Estimator(n_clusters=10, random_state=seed, verbose=1)`` on the uint8
(n, 28, 28) training images plus any ``--set`` overrides: the estimator's own stopping rule
ends it, its paper's epoch count is the cap. One JSON file per run under
``benchmarks/results/fashion_<tag>.json``, rewritten after every fit (and the history after
every epoch is in the fit's log when ``--verbose`` is set).

    OMP_NUM_THREADS=1 python benchmarks/bench_fashion.py --estimators DeepClusterer --seeds 0 \
        --tag dc_seed0_t1
    python benchmarks/bench_fashion.py --estimators ADCClusterer --seeds 0 --train-n 10000 \
        --tag adc_10k   # a random training subset (seeded), the same test images
    python benchmarks/bench_fashion.py --estimators MMDCClusterer --seeds 0 --all-data \
        --tag mmdc_alldata   # the full-data protocol: fit and score on all 70 000 images

A fit longer than one sitting: ``--checkpoint-dir DIR`` gives each fit the file
``DIR/<tag>_<estimator>_seed<seed>.ckpt`` (the estimators' ``checkpoint`` parameter). Stop the
run at any time; the same command, with the same ``OMP_NUM_THREADS``, resumes every fit where
its file left it and ends it as one uninterrupted run would, and skips the fits that the
tag's JSON file already holds. ``wall`` and ``cpu`` are then this process's share;
``epochs_wall`` and ``epochs_cpu`` sum the epochs of every sitting.

``--peek`` with the same tag and directory scores the fits still in progress, as their files
hold them (a copy of each file is resumed with no epoch left to train, so the fit ends at the
saved epoch; later stages are not trained), on the test images; rows go to
``fashion_<tag>_peek.json``, one per call and fit. It reads the files only: the fits in
progress are not touched. Scores during a stage that a later stage builds on (SCAN's pretext)
say little.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

import numpy as np
import torch
from _common import (
    RESULTS_DIR,
    fashion_mnist,
    fashion_mnist_subset,
    kmeans_run,
    overrides,
    save,
    scores,
    stage_epochs,
)

import skdeepcluster
from skdeepcluster.checkpoint import Checkpoint

IMAGE_ESTIMATORS = ("DeepClusterer", "SCANClusterer", "MMDCClusterer", "ADCClusterer")


def fit_as_saved(model, path, X):
    """Fit ``model`` from a copy of the checkpoint ``path`` without training any further: every
    stage the file does not hold finished stops at the epoch it saved (0 for one not begun)."""
    restore = Checkpoint.restore

    def restore_without_training(self, trainer, stage, index):
        outcome = restore(self, trainer, stage, index)
        if outcome != "finished":
            stage.max_epochs = stage.n_epochs
        return outcome

    with tempfile.TemporaryDirectory() as directory:
        copy = os.path.join(directory, os.path.basename(path))
        shutil.copyfile(path, copy)
        model.set_params(checkpoint=copy, verbose=0)
        Checkpoint.restore = restore_without_training
        try:
            model.fit(X)
        finally:
            Checkpoint.restore = restore
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--estimators", nargs="+", default=list(IMAGE_ESTIMATORS),
                        choices=IMAGE_ESTIMATORS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-n", type=int, default=60_000,
                        help="training images (a seeded random subset below 60 000)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="parameters to set besides the defaults, e.g. max_epochs=5")
    parser.add_argument("--no-kmeans", action="store_true", help="skip the KMeans baseline")
    parser.add_argument("--verbose", type=int, default=1)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--checkpoint-dir", default=None,
                        help="save each fit's training state here and resume from it")
    parser.add_argument("--peek", action="store_true",
                        help="score the fits in progress in --checkpoint-dir as saved")
    parser.add_argument("--all-data", action="store_true",
                        help="the full-data protocol: train and score on all 70 000 images "
                             "(training and test images together), as MMDC's paper does")
    args = parser.parse_args()
    if args.peek and args.checkpoint_dir is None:
        parser.error("--peek needs --checkpoint-dir")
    if args.all_data and args.train_n < 60_000:
        parser.error("--all-data uses every image: it takes no --train-n")

    if args.train_n < 60_000:
        X_train, y_train = fashion_mnist_subset(args.train_n, in_file_order=True)
    else:
        X_train, y_train = fashion_mnist("train")
    X_test, y_test = fashion_mnist("test")
    protocol = "train -> test"
    if args.all_data:  # one set, trained and scored on (the "test" scores are those of X_train)
        X_train, y_train = np.concatenate([X_train, X_test]), np.concatenate([y_train, y_test])
        X_test, y_test = X_train, y_train
        protocol = "all data"
    params = overrides(args.set)
    result = {"protocol": protocol, "train_n": len(X_train), "test_n": len(X_test), "set": params,
              "threads": torch.get_num_threads(), "machine": platform.processor(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": []}
    if args.peek:
        return peek(args, X_train, y_train, X_test, y_test, params, result)
    earlier = RESULTS_DIR / f"fashion_{args.tag}.json"
    if args.checkpoint_dir is not None and earlier.exists():  # a run across sittings
        result["rows"] = json.loads(earlier.read_text())["rows"]
    done = {(row["estimator"], row["seed"]) for row in result["rows"]}
    for seed in args.seeds:
        if not args.no_kmeans and ("KMeans (pixels)", seed) not in done:
            pixels = X_train.reshape(len(X_train), -1) / np.float32(255)
            row = kmeans_run(pixels, X_test.reshape(len(X_test), -1) / np.float32(255), y_test,
                             10, seed)
            result["rows"].append({"estimator": "KMeans (pixels)", "seed": seed, **row})
            print(result["rows"][-1], flush=True)
        for name in args.estimators:
            if (name, seed) in done:
                continue
            model = getattr(skdeepcluster, name)(n_clusters=10, random_state=seed,
                                                 verbose=args.verbose, **params)
            resumed = False
            if args.checkpoint_dir is not None:
                path = os.path.join(args.checkpoint_dir, f"{args.tag}_{name}_seed{seed}.ckpt")
                resumed = os.path.exists(path)
                model.set_params(checkpoint=path)
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(X_train)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = {"estimator": name, "seed": seed, **scores(y_test, model.predict(X_test)),
                   "train": scores(y_train, model.labels_), "wall": wall, "cpu": cpu,
                   "n_iter": model.n_iter_, "epochs": stage_epochs(model.history_),
                   "resumed": resumed,
                   "epochs_wall": sum(entry["seconds"] for entry in model.history_),
                   "epochs_cpu": sum(entry["cpu_seconds"] for entry in model.history_),
                   "precision": model.precision_, "history": model.history_,
                   "score": float(model.score(X_train))}  # the method's label-free criterion
            if getattr(model, "init_losses_", None) is not None:  # SCAN's n_init fits
                row["init_losses"] = model.init_losses_.tolist()
            if getattr(model, "kmeans_labels_", None) is not None:  # ADC's k-means init
                row["kmeans_init_train_acc"] = scores(y_train, model.kmeans_labels_)["acc"]
            result["rows"].append(row)
            print({k: v for k, v in row.items() if k != "history"}, flush=True)
            save(f"fashion_{args.tag}", result)
    save(f"fashion_{args.tag}", result)


def peek(args, X_train, y_train, X_test, y_test, params, result):
    """One row per fit in progress: its saved network's scores and epochs."""
    path = RESULTS_DIR / f"fashion_{args.tag}_peek.json"
    if path.exists():
        result["rows"] = json.loads(path.read_text())["rows"]
    for seed in args.seeds:
        for name in args.estimators:
            checkpoint = os.path.join(args.checkpoint_dir, f"{args.tag}_{name}_seed{seed}.ckpt")
            if not os.path.exists(checkpoint):
                continue
            model = getattr(skdeepcluster, name)(n_clusters=10, random_state=seed, **params)
            wall = time.perf_counter()
            fit_as_saved(model, checkpoint, X_train)
            row = {"estimator": name, "seed": seed, "epochs": stage_epochs(model.history_),
                   **scores(y_test, model.predict(X_test)),
                   "train": scores(y_train, model.labels_),
                   "saved": time.strftime("%Y-%m-%d %H:%M",
                                          time.gmtime(os.path.getmtime(checkpoint))),
                   "peek_wall": time.perf_counter() - wall}
            result["rows"].append(row)
            print(row, flush=True)
            save(f"fashion_{args.tag}_peek", result)


if __name__ == "__main__":
    main()
