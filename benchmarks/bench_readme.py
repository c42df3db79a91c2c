"""Time the commands a new user runs first, as the README gives them.

::

    python benchmarks/bench_readme.py demo snippet cli

* ``demo``: ``python -m skdeepcluster demo`` (TEMI on sklearn's digits, then the picture);
* ``snippet``: the README's Python snippet (``fit_predict`` and a 5-fold ``cross_validate`` of
  ``TEMIClusterer(n_clusters=10, n_heads=4)``);
* ``cli``: ``python -m skdeepcluster cluster FOLDER --n-clusters 3`` on 220 Fashion-MNIST test
  images of three classes (t-shirt, trouser, sneaker) written as PNG files, with the default
  EfficientNet-Lite0 embedder (the ``pretrained`` extra), scored against the true classes.

Each command runs in a child process; its wall and CPU seconds (user + system, from
``getrusage``) are printed and written to ``benchmarks/results/readme_times.json``.
"""

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from _common import RESULTS_DIR
from PIL import Image

from skdeepcluster import clustering_accuracy_score, load_fashion_mnist

SNIPPET = """
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_validate
from skdeepcluster import TEMIClusterer, clustering_accuracy

X, y = load_digits(return_X_y=True)
model = TEMIClusterer(n_clusters=10, n_heads=4, random_state=0)
labels = model.fit_predict(X / 16)
scores = cross_validate(model, X / 16, y,
                        scoring={"acc": clustering_accuracy,
                                 "nmi": "normalized_mutual_info_score"})
print("fit_predict n_iter_", model.n_iter_)
print({k: v.round(3).tolist() for k, v in scores.items()})
"""

#: Fashion-MNIST classes of the ``cli`` folder: t-shirt/top, trouser, sneaker.
CLI_CLASSES = (0, 1, 7)
CLI_IMAGES = 220


def timed(name, command):
    """Run ``command``; return its record (wall and CPU seconds, exit status)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"== {name}: exit status {out.returncode}, wall {wall:.1f} s, CPU {cpu:.1f} s")
    print("\n".join(out.stdout.strip().splitlines()[-8:]), flush=True)
    if out.returncode:
        print(out.stderr[-3000:])
    return {"name": name, "returncode": out.returncode, "wall": wall, "cpu": cpu}


def cli(work):
    """Write the image folder, cluster it with the command line, score the labels."""
    images, labels = load_fashion_mnist("test")
    folder = os.path.join(work, "photos")
    os.makedirs(folder)
    chosen = np.flatnonzero(np.isin(labels, CLI_CLASSES))[:CLI_IMAGES]
    names = {}
    for index in chosen:
        name = f"img_{index:05d}.png"
        Image.fromarray(images[index]).save(os.path.join(folder, name))
        names[name] = labels[index]
    output = os.path.join(work, "results")
    row = timed(f"cli, {len(chosen)} images of {len(CLI_CLASSES)} classes",
                [sys.executable, "-m", "skdeepcluster", "cluster", folder,
                 "--n-clusters", str(len(CLI_CLASSES)), "--output", output])
    with open(os.path.join(output, "labels.csv")) as handle:
        predicted = {os.path.basename(r["file"]): int(r["cluster"]) for r in csv.DictReader(handle)}
    files = sorted(predicted)
    row["acc"] = clustering_accuracy_score([names[f] for f in files], [predicted[f] for f in files])
    print(f"ACC of the folder's clusters: {row['acc']:.3f}")
    return row


def main():
    parts = sys.argv[1:] or ["demo", "snippet", "cli"]
    unknown = set(parts) - {"demo", "snippet", "cli"}
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; choose from demo, snippet, cli")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        if "demo" in parts:
            rows.append(timed("demo", [sys.executable, "-m", "skdeepcluster", "demo",
                                       "--output", os.path.join(work, "demo")]))
        if "snippet" in parts:
            rows.append(timed("snippet", [sys.executable, "-c", SNIPPET]))
        if "cli" in parts:
            rows.append(cli(work))
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "readme_times.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
