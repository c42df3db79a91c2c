"""ADC on Fashion-MNIST, scored after every epoch: the test accuracy of its logits (what
``predict`` returns) and of the nearest centroid of each embedding, with the logit layer's
weight norm and the spread of its bias. Labels only score; nothing feeds back into the fit.

The measurement behind ``ADCClusterer(logits_weight_decay=...)``: without a penalty on the
logit layer, the logits of a long fit fall into a few clusters while the embeddings and
centroids stay good. ::

    OMP_NUM_THREADS=1 python benchmarks/bench_adc_trajectory.py --set logits_weight_decay=0 \
        --tag nodecay
    OMP_NUM_THREADS=1 python benchmarks/bench_adc_trajectory.py --tag defaults

Defaults: ``ADCClusterer(n_clusters=10, random_state=seed, max_epochs=20)`` on a seeded random
10 000 of the training images, scored on the first 2 000 test images; one JSON file per run,
``benchmarks/results/adc_trajectory_<tag>.json``, rewritten after every epoch.
"""

import argparse
import time

import numpy as np
import torch
from _common import fashion_mnist, fashion_mnist_subset, overrides, save, scores

from skdeepcluster import ADCClusterer, engine


def trace(model, X_test, y_test, rows, path):
    """Wrap every stage's epoch of the fits started from now on so that each epoch ends by
    scoring ``model`` on the test images."""
    run = engine.Trainer.run

    def traced_run(trainer, stage):
        epoch = stage.run_epoch

        def scored_epoch(stage):
            record = epoch(stage)
            rows.append({"stage": stage.name, "epoch": stage.epoch + 1,
                         **{key: record[key] for key in ("classification", "changed")
                            if key in record},
                         **snapshot(model, X_test, y_test)})
            print(rows[-1], flush=True)
            save(path, {"rows": rows})
            return record

        stage.run_epoch = scored_epoch
        return run(trainer, stage)

    engine.Trainer.run = traced_run


def snapshot(model, X_test, y_test):
    network = model.module_
    network.eval()
    embeddings = torch.from_numpy(model.transform(X_test)).float()
    network.train()
    weight = network.logits.weight.detach().float()
    bias = network.logits.bias.detach().float()
    by_logits = (embeddings @ weight.T + bias).argmax(dim=1).numpy()
    centroids = network.centroids.detach().float()
    by_centroid = torch.cdist(embeddings, centroids).argmin(dim=1).numpy()
    by_centroid //= model.n_centroids_per_cluster
    return {"logits_acc": scores(y_test, by_logits)["acc"],
            "logits_clusters": int(len(np.unique(by_logits))),
            "centroid_acc": scores(y_test, by_centroid)["acc"],
            "weight_norm": float(weight.norm()), "bias_spread": float(bias.max() - bias.min()),
            "embedding_norm": float(embeddings.norm(dim=1).mean()),
            "centroid_norm": float(centroids.norm(dim=1).mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-n", type=int, default=10_000)
    parser.add_argument("--test-n", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="parameters besides the defaults, e.g. logits_weight_decay=0")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()
    X_train, _ = fashion_mnist_subset(args.train_n, in_file_order=True)
    X_test, y_test = fashion_mnist("test")
    X_test, y_test = X_test[: args.test_n], y_test[: args.test_n]
    params = {"max_epochs": 20, **overrides(args.set)}
    model = ADCClusterer(n_clusters=10, random_state=args.seed, **params)
    rows = []
    trace(model, X_test, y_test, rows, f"adc_trajectory_{args.tag}")
    wall = time.perf_counter()
    model.fit(X_train)
    save(f"adc_trajectory_{args.tag}", {"params": params, "seed": args.seed,
                                        "train_n": args.train_n, "test_n": args.test_n,
                                        "wall": time.perf_counter() - wall, "rows": rows})


if __name__ == "__main__":
    main()
