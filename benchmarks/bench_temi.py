"""TEMIClusterer benchmarks: accuracy against KMeans, the paper's ablations, kNN mining cost, and
batched versus looped heads.

    python benchmarks/bench_temi.py accuracy --dataset digits --seeds 0 1 2
    python benchmarks/bench_temi.py accuracy --dataset fashion --seeds 0 1 2 --epochs 10 \
        --batch-size 512
    python benchmarks/bench_temi.py ablation --seeds 0 1 2
    python benchmarks/bench_temi.py rules --seeds 0
    python benchmarks/bench_temi.py mining --n 10000 60000
    python benchmarks/bench_temi.py heads --heads 50 --dim 784 --batch 512

Results print as tables and are written to benchmarks/results/temi_<part>.json.
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch
from _common import (
    digits_features,
    fashion_mnist,
    kmeans_run,
    print_table,
    save,
    scores,
    summarize,
)

from skdeepcluster import TEMIClusterer
from skdeepcluster.nn.heads import TEMIHeads
from skdeepcluster.nn.losses import temi_pair_loss, update_cluster_prior

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))

#: The small-data configuration of the test suite and of the demo: 4 heads, batches of 128
#: (14 steps per epoch of the digits, so 200 epochs = 2 800 steps), the stopping rule.
DIGITS_CONFIG = dict(n_heads=4, batch_size=128)


def load(dataset):
    if dataset == "digits":
        X, y = digits_features()
        return X, y, X, y  # full-dataset protocol on digits (train = test)
    X_train, y_train = fashion_mnist("train")
    X_test, y_test = fashion_mnist("test")
    flat = lambda a: (a.reshape(len(a), -1) / 255).astype(np.float32)  # noqa: E731
    return flat(X_train), y_train, flat(X_test), y_test


def temi_run(params, X_train, X_test, y_test, seed):
    start = time.perf_counter()
    model = TEMIClusterer(n_clusters=10, random_state=seed, **params).fit(X_train)
    seconds = time.perf_counter() - start
    return {**scores(y_test, model.predict(X_test)), "seconds": seconds}


def accuracy(args):
    X_train, y_train, X_test, y_test = load(args.dataset)
    params = dict(DIGITS_CONFIG)
    if args.heads:
        params["n_heads"] = args.heads
    if args.epochs:
        params.update(max_epochs=args.epochs)
    if args.batch_size:
        params["batch_size"] = args.batch_size
    if args.default:
        params = {}
    rows = [("KMeans (sklearn, n_init=10)",
             summarize([kmeans_run(X_train, X_test, y_test, 10, s) for s in args.seeds]))]
    name = "TEMI defaults" if args.default else f"TEMI {params}"
    rows.append((name, summarize([temi_run(params, X_train, X_test, y_test, s)
                                  for s in args.seeds])))
    print_table(rows, f"{args.dataset}: seeds {args.seeds}")
    save(f"temi_accuracy_{args.dataset}{'_default' if args.default else ''}",
         {"params": params, "seeds": args.seeds, "rows": rows})


def ablation(args):
    X, y, _, _ = load("digits")
    rows = []
    for loss, heads in [("pmi", 1), ("pmi", 16), ("wpmi", 16), ("temi", 16), ("temi", 50)]:
        if heads > args.max_heads:
            continue
        params = {**DIGITS_CONFIG, "loss": loss, "n_heads": heads}
        runs = [temi_run(params, X, X, y, s) for s in args.seeds]
        rows.append((f"{loss.upper()} {heads} head(s)", summarize(runs)))
        print_table(rows[-1:], "")
    print_table(rows, f"digits ablation (config {DIGITS_CONFIG}), seeds {args.seeds}")
    save("temi_ablation", {"config": DIGITS_CONFIG, "seeds": args.seeds, "rows": rows})


#: The small-data rule study (doc/benchmarks.rst): 4 heads, digits, seed 0, fixed schedules
#: (tol=None). 1 797 // 512 = 3 steps per epoch, // 128 = 14, // 112 = 16.
RULE_CONFIGS = [
    dict(batch_size=512, max_epochs=667, tol=None, teacher_momentum=0.996),
    dict(batch_size=512, max_epochs=667, tol=None, teacher_momentum=0.996, lr=1e-3),
    dict(batch_size=128, max_epochs=215, tol=None, teacher_momentum=0.996, lr=1e-3),
    dict(batch_size=512, max_epochs=667, tol=None, teacher_momentum=0.99),
    dict(batch_size=512, max_epochs=667, tol=None),  # "auto" momentum → 0.985
    dict(batch_size=128, max_epochs=215, tol=None),  # "auto" → 0.99
    dict(batch_size=112, max_epochs=125, tol=None, teacher_momentum=0.985),
    dict(batch_size=512, tol=None),  # the paper's 200 epochs, "auto" → 0.95
]


def rules(args):
    X, y, _, _ = load("digits")
    rows = []
    for config in RULE_CONFIGS:
        params = {"n_heads": 4, **config}
        rows.append((str(config), summarize([temi_run(params, X, X, y, s) for s in args.seeds])))
        print_table(rows[-1:], "")
    print_table(rows, f"digits, 4 heads, seeds {args.seeds}")
    save("temi_rules", {"seeds": args.seeds, "rows": rows})


MINING_CHILD = """
import resource, sys, time, numpy as np
sys.path.insert(0, {bench_dir!r})
from _common import fashion_mnist
images = np.concatenate([fashion_mnist("train")[0], fashion_mnist("test")[0]])
X = (images[:{n}].reshape({n}, -1) / 255).astype(np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if "{method}" == "faiss":
    from skdeepcluster import mine_neighbors
    mine_neighbors(X, 50)
else:
    from sklearn.neighbors import NearestNeighbors
    NearestNeighbors(n_neighbors=51, metric="cosine").fit(X).kneighbors(X)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(seconds, (peak - base) / 1024)
"""


def mining(args):
    rows = []
    for n in args.n:
        for method in ("faiss", "sklearn"):
            child = MINING_CHILD.format(n=n, method=method, bench_dir=BENCH_DIR)
            out = subprocess.run([sys.executable, "-c", child],
                                 capture_output=True, text=True, check=True).stdout.split()
            seconds, extra_mb = float(out[0]), float(out[1])
            rows.append({"n": n, "method": method, "seconds": seconds,
                         "peak_extra_mb": extra_mb})
            print(f"n={n:6d} {method:8s} {seconds:8.1f} s  peak memory above the data "
                  f"{extra_mb:8.0f} MB", flush=True)
    save("temi_mining", rows)


def heads(args):
    """One TEMI optimisation step of H heads: one batched module vs a loop over H modules.

    The step is the training step of ``TEMIClusterer`` (student forward on anchor/neighbour
    pairs, teacher forward, prior update, TEMI loss, fused AdamW, teacher EMA). The loop variant
    has the reference code's shape, ``[head(x) for head in heads]``; both variants share the
    optimiser and the EMA, so only the heads' layout differs. Epoch time = step time × steps per
    epoch (Fashion-MNIST: 60 000 // 512 = 117 steps). ``ops`` counts the ATen operators one step
    dispatches (leaves of the profiler's tree): on a GPU each is at least one kernel launch.
    """
    torch.manual_seed(0)
    d, k, batch = args.dim, 10, args.batch
    x = torch.randn(2 * batch, d)

    class Loop(torch.nn.Module):
        def __init__(self, heads):
            super().__init__()
            self.heads = torch.nn.ModuleList(heads)

        def forward(self, x):
            return torch.cat([head(x) for head in self.heads])

    def make(name):
        if name == "batched":
            return TEMIHeads(args.heads, d, k)
        return Loop([TEMIHeads(1, d, k) for _ in range(args.heads)])

    variants = {}
    for name in ("batched", "loop"):
        student = make(name)
        teacher = make(name).requires_grad_(False)
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4, fused=True)
        variants[name] = [student, teacher, optimizer, torch.full((args.heads, k), 1 / k)]

    def step(name):
        student, teacher, optimizer, prior = variants[name]
        s = student(x)
        with torch.no_grad():
            t = teacher(x)
            prior = update_cluster_prior(prior, torch.softmax(t / 0.1, -1), 0.9)
        variants[name][3] = prior
        loss = temi_pair_loss(s.chunk(2, 1), t.chunk(2, 1), prior.log(), beta=0.6, tau=0.1)
        optimizer.zero_grad()
        loss.mean().backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 0.004)

    def count_ops(name):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(name)
        return sum(
            event.name.startswith("aten::")
            and not any(child.name.startswith("aten::") for child in event.cpu_children)
            for event in prof.events()
        )

    ops = {name: count_ops(name) for name in variants}  # also the warm-up step
    # Interleaved (batched, loop, batched, ...) so that a change of machine load hits both
    # variants alike; the median step time is reported.
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name in variants:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    results = {name: float(np.median(values)) for name, values in times.items()}
    threads = torch.get_num_threads()
    for name, seconds in results.items():
        print(f"{name:8s} {args.heads} heads, d={d}, batch {batch} pairs, {threads} thread(s): "
              f"{seconds * 1000:.0f} ms per step (median of {args.steps}), "
              f"{seconds * args.steps_per_epoch:.0f} s per epoch of {args.steps_per_epoch} steps, "
              f"{ops[name]} ops per step", flush=True)
    save(f"temi_heads_d{d}_b{batch}_t{threads}",
         {"heads": args.heads, "dim": d, "batch": batch, "steps_per_epoch": args.steps_per_epoch,
          "s_per_step": results, "ops_per_step": ops, "threads": threads})


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("accuracy")
    p.add_argument("--dataset", choices=["digits", "fashion"], default="digits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--heads", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--default", action="store_true", help="TEMIClusterer() defaults")
    p = sub.add_parser("ablation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-heads", type=int, default=50)
    p = sub.add_parser("rules")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p = sub.add_parser("mining")
    p.add_argument("--n", type=int, nargs="+", default=[10000, 60000])
    p = sub.add_parser("heads")
    p.add_argument("--heads", type=int, default=50)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dim", type=int, default=784, help="input features (Fashion pixels: 784)")
    p.add_argument("--batch", type=int, default=512, help="anchors per step (the paper's 512)")
    p.add_argument("--steps-per-epoch", type=int, default=117)
    args = parser.parse_args()
    parts = {"accuracy": accuracy, "ablation": ablation, "rules": rules, "mining": mining,
             "heads": heads}
    parts[args.part](args)


if __name__ == "__main__":
    main()
