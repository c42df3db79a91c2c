"""Clustering pretrained embeddings, the way TEMI is meant to be used (issue 16, item 3).

Fashion-MNIST through ``ImageEmbedder("efficientnet-lite0")`` (offline ImageNet weights), then
the documented recipe ``ImageEmbedder → Normalizer → clusterer`` with KMeans, TEMI and SCAN's
clustering step (feature input: no pretext task, neighbours mined on the embeddings, then the
SCAN loss and self-labelling). Fit on the 60 000 training images (``--train-n``: a random
subset of them), score on the 10 000 test images (labels used for scoring only). Parts::

    python benchmarks/bench_embeddings.py resolution --n 2000 --sizes 96 128 224
    python benchmarks/bench_embeddings.py resolution --sizes 224 --precisions float32 bfloat16
    python benchmarks/bench_embeddings.py embed --size 224 --train-n 10000
    python benchmarks/bench_embeddings.py neighbors --size 224 --train-n 10000
    python benchmarks/bench_embeddings.py cluster --size 224 --train-n 10000 --seeds 0 1 2
    python benchmarks/bench_embeddings.py cluster ... --checkpoint-dir DIR   # resumable fits

``resolution`` measures what a smaller network input costs in accuracy (KMeans on the
embeddings of ``n`` test images per side); ``embed`` writes the embeddings to ``--cache``
(default ``$TMPDIR/skdc_embeddings``) with their time; ``neighbors`` measures how often the
mined neighbours share a class; ``cluster`` reads the embeddings. Results go to
``benchmarks/results/embeddings_<part>*.json``.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import fashion_mnist, fashion_mnist_subset, save, scores
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.preprocessing import normalize

from skdeepcluster import ImageEmbedder, SCANClusterer, TEMIClusterer
from skdeepcluster.neighbors import mine_neighbors

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "skdc_embeddings"


def embed(images, size, batch_size=256, precision="auto"):
    """(embeddings, wall seconds, CPU seconds, precision used) of ``images`` at network input
    side ``size``."""
    embedder = ImageEmbedder("efficientnet-lite0", image_size=size, batch_size=batch_size,
                             precision=precision, verbose=1).fit()
    wall, cpu = time.perf_counter(), time.process_time()
    features = embedder.transform(images)
    return features, time.perf_counter() - wall, time.process_time() - cpu, embedder.precision_


def cache_path(cache, size, split, train_n=None):
    part = split if split == "test" or train_n is None else f"train{train_n}"
    return Path(cache) / f"fashion_efficientnet-lite0_{size}px_{part}.npy"


def load_split(split, train_n=None):
    """Fashion-MNIST images and labels: the test set, the training set or ``train_n`` random
    training images (seed 0)."""
    if split == "train" and train_n is not None:
        return fashion_mnist_subset(train_n)
    return fashion_mnist(split)


def tag(args):
    return f"{args.size}px" + ("" if args.train_n is None else f"_train{args.train_n}")


def resolution(args):
    images, labels = fashion_mnist("test")
    chosen = np.random.RandomState(0).permutation(len(labels))[: args.n]
    images, labels = images[chosen], labels[chosen]
    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            features, wall, cpu, used = embed(images, size, precision=precision)
            features = normalize(features)
            runs = [scores(labels, KMeans(10, n_init=10, random_state=s).fit_predict(features))
                    for s in args.seeds]
            row = {"size": size, "precision": used, "n": args.n, "embed_wall": wall,
                   "embed_cpu": cpu, "images_per_s": args.n / wall,
                   **{m: [float(np.mean([r[m] for r in runs])),
                          float(np.std([r[m] for r in runs]))] for m in ("acc", "nmi", "ari")}}
            rows.append(row)
            print(f"{size:4d} px, {used}: KMeans ACC {row['acc'][0]:.3f} ± {row['acc'][1]:.3f}, "
                  f"NMI {row['nmi'][0]:.3f}; embedding {wall:.0f} s wall / {cpu:.0f} s CPU "
                  f"({row['images_per_s']:.1f} img/s)", flush=True)
    suffix = "" if args.precisions == ["auto"] else "_" + "_".join(args.precisions)
    save(f"embeddings_resolution{suffix}", {"threads": torch.get_num_threads(),
                                            "seeds": args.seeds, "rows": rows})


def embed_part(args):
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    timing = {}
    for split in ("test", "train"):
        images, _ = load_split(split, args.train_n)
        features, wall, cpu, used = embed(images, args.size, precision=args.precision)
        np.save(cache_path(args.cache, args.size, split, args.train_n),
                features.astype(np.float32))
        timing[split] = {"n": len(images), "wall": wall, "cpu": cpu, "precision": used,
                         "images_per_s": len(images) / wall}
        print(f"{split}: {len(images)} images in {wall:.0f} s wall / {cpu:.0f} s CPU "
              f"({len(images) / wall:.1f} img/s)", flush=True)
    save(f"embeddings_embed_{tag(args)}{args.tag}",
         {"size": args.size, "train_n": args.train_n, "threads": torch.get_num_threads(),
          "timing": timing})


def neighbors(args):
    """How often a training sample's nearest neighbours (cosine, the pairs TEMI and SCAN train
    on) share its class, overall and per class, on the embeddings and on the digits' pixels."""
    X = normalize(np.load(cache_path(args.cache, args.size, "train", args.train_n)))
    _, y = load_split("train", args.train_n)
    digits, y_digits = load_digits(return_X_y=True)
    rows = {}
    for name, (features, labels) in {"embeddings": (X, y),
                                     "digits pixels": (digits / 16.0, y_digits)}.items():
        same = labels[mine_neighbors(features, n_neighbors=max(args.k))] == labels[:, None]
        rows[name] = {"purity": {k: float(same[:, :k].mean()) for k in args.k},
                      "per_class": [float(same[labels == c].mean()) for c in range(10)]}
        print(f"{name}: purity " + ", ".join(f"k={k} {v:.3f}"
                                             for k, v in rows[name]["purity"].items())
              + f"; per class (k={max(args.k)}) "
              + " ".join(f"{v:.2f}" for v in rows[name]["per_class"]), flush=True)
    save(f"embeddings_neighbors_{tag(args)}{args.tag}", {"k": args.k, "rows": rows})


def estimators(args, seed):
    """The clusterers compared, built for one seed; with ``--checkpoint-dir`` TEMI and SCAN
    write their training state there and the same command resumes them (:ref:`checkpoints`)."""

    def checkpoint(short):
        if args.checkpoint_dir is None:
            return None
        return os.path.join(args.checkpoint_dir,
                            f"embeddings_{tag(args)}{args.tag}_{short}_seed{seed}.ckpt")

    return {
        "KMeans (n_init=10)": lambda: KMeans(10, n_init=10, random_state=seed),
        f"TEMI, {args.temi_heads} heads": lambda: TEMIClusterer(
            n_clusters=10, n_heads=args.temi_heads, max_epochs=args.temi_epochs,
            verbose=args.verbose, random_state=seed,
            checkpoint=checkpoint(f"temi{args.temi_heads}")),
        "SCAN step + self-labelling": lambda: SCANClusterer(
            n_clusters=10, random_state=seed, checkpoint=checkpoint("scan")),
    }


def cluster(args):
    X_train = normalize(np.load(cache_path(args.cache, args.size, "train", args.train_n)))
    X_test = normalize(np.load(cache_path(args.cache, args.size, "test")))
    _, y_train = load_split("train", args.train_n)
    _, y_test = load_split("test")
    results = {}
    for seed in args.seeds:
        for name, build in estimators(args, seed).items():
            if not any(name.lower().startswith(m) for m in args.methods):
                continue
            model = build()
            checkpoint = getattr(model, "checkpoint", None)
            # a resumed fit's wall and cpu are this process's share of it
            resumed = checkpoint is not None and os.path.exists(checkpoint)
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(X_train)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = {"seed": seed, **scores(y_test, model.predict(X_test)),
                   "train_acc": scores(y_train, model.predict(X_train))["acc"],
                   "wall": wall, "cpu": cpu, "n_iter": int(getattr(model, "n_iter_", 0)),
                   "resumed": resumed, "precision": getattr(model, "precision_", None)}
            results.setdefault(name, []).append(row)
            print(f"[seed {seed}] {name}: test ACC {row['acc']:.3f} NMI {row['nmi']:.3f} ARI "
                  f"{row['ari']:.3f} (train ACC {row['train_acc']:.3f}), {wall:.0f} s wall / "
                  f"{cpu:.0f} s CPU, n_iter {row['n_iter']}", flush=True)
            settings = {k: str(v) for k, v in vars(args).items()}
            save(f"embeddings_cluster_{tag(args)}{args.tag}",
                 {"size": args.size, "threads": torch.get_num_threads(), "args": settings,
                  "runs": results})
    print(f"\nFashion-MNIST, EfficientNet-Lite0 at {args.size} px, train "
          f"{len(y_train)} -> test {len(y_test)}")
    for name, runs in results.items():
        cells = "  ".join(f"{m} {np.mean([r[m] for r in runs]):.3f} ± "
                          f"{np.std([r[m] for r in runs]):.3f}" for m in ("acc", "nmi", "ari"))
        print(f"{name:32s} {cells}  fit {np.mean([r['wall'] for r in runs]):.0f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=os.environ.get("SKDC_EMBEDDINGS", DEFAULT_CACHE))
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("resolution")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--sizes", type=int, nargs="+", default=[96, 128, 224])
    p.add_argument("--precisions", nargs="+", default=["auto"],
                   help="ImageEmbedder precisions to compare, e.g. float32 bfloat16")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    for part in ("embed", "neighbors", "cluster"):
        p = sub.add_parser(part)
        p.add_argument("--size", type=int, default=224, help="ImageEmbedder's default: 224")
        p.add_argument("--train-n", type=int, default=None, help="training subset (seed 0)")
        p.add_argument("--tag", default="", help="suffix of the result file's name")
        if part == "embed":
            p.add_argument("--precision", default="auto", help="ImageEmbedder's precision")
        if part == "neighbors":
            p.add_argument("--k", type=int, nargs="+", default=[1, 10, 20, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["kmeans", "temi", "scan"])
    p.add_argument("--temi-heads", type=int, default=4)
    p.add_argument("--temi-epochs", type=int, default=200, help="cap (paper: 200)")
    p.add_argument("--verbose", type=int, default=0, help="TEMI progress lines")
    p.add_argument("--checkpoint-dir", default=None,
                   help="TEMI's and SCAN's checkpoints: a fit stopped midway resumes there")
    args = parser.parse_args()
    parts = {"resolution": resolution, "embed": embed_part, "neighbors": neighbors,
             "cluster": cluster}
    parts[args.part](args)


if __name__ == "__main__":
    main()
