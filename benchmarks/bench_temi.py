"""TEMIClusterer benchmarks: accuracy against KMeans, the paper's ablations, kNN mining cost, and
batched versus looped heads.

    python benchmarks/bench_temi.py accuracy --dataset digits --seeds 0 1 2
    python benchmarks/bench_temi.py accuracy --dataset fashion --seeds 0 1 2 --epochs 10 \
        --batch-size 512
    python benchmarks/bench_temi.py ablation --seeds 0 1 2
    python benchmarks/bench_temi.py rules --seeds 0
    python benchmarks/bench_temi.py selection --seeds 0 2
    python benchmarks/bench_temi.py trajectory --seeds 0 1 2
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
from skdeepcluster.engine import StoppingRule
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


def temi_run(params, X_train, X_test, y_test, seed, verbose=0):
    start, cpu = time.perf_counter(), time.process_time()
    model = TEMIClusterer(n_clusters=10, random_state=seed, verbose=verbose, **params)
    model.fit(X_train)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {**scores(y_test, model.predict(X_test)), "seconds": seconds, "cpu_seconds": cpu,
            "epochs": model.n_iter_}


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
    rows = []
    if not args.no_kmeans:
        rows.append(("KMeans (sklearn, n_init=10)",
                     summarize([kmeans_run(X_train, X_test, y_test, 10, s) for s in args.seeds])))
    name = "TEMI defaults" if args.default else f"TEMI {params}"
    runs = [temi_run(params, X_train, X_test, y_test, s, args.verbose) for s in args.seeds]
    rows.append((name, summarize(runs)))
    print_table(rows, f"{args.dataset}: seeds {args.seeds}")
    save(f"temi_accuracy_{args.dataset}{'_default' if args.default else ''}{args.tag}",
         {"params": params, "seeds": args.seeds, "rows": rows, "per_seed": runs,
          "threads": torch.get_num_threads()})


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


def mixed_clusters(y, labels, share=0.15):
    """Clusters holding more than ``share`` of two or more classes, as {cluster: classes}."""
    mixed = {}
    for cluster in np.unique(labels):
        counts = np.bincount(y[labels == cluster], minlength=y.max() + 1)
        classes = np.flatnonzero(counts > share * counts.sum())
        if len(classes) > 1:
            mixed[int(cluster)] = classes.tolist()
    return mixed


def selection(args):
    """The paper's selection rule (the head with the lowest loss) against each head's accuracy:
    the defaults on the digits, every head of the fit scored."""
    X, y, _, _ = load("digits")
    runs = []
    for seed in args.seeds:
        model = TEMIClusterer(n_clusters=10, random_state=seed).fit(X)
        chosen, heads = model.best_head_, []
        for head in range(model.n_heads):
            model.best_head_ = head  # predict with this head's teacher
            labels = model.predict(X)
            heads.append({"head": head, "loss": float(model.head_losses_[head]),
                          **scores(y, labels), "mixed": mixed_clusters(y, labels)})
        model.best_head_ = chosen
        heads.sort(key=lambda row: row["loss"])
        acc = np.array([row["acc"] for row in heads])
        loss = np.array([row["loss"] for row in heads])
        best = heads[int(np.argmax(acc))]
        run = {"seed": seed, "chosen_acc": heads[0]["acc"], "mean_acc": float(acc.mean()),
               "max_acc": float(acc.max()), "corr_loss_acc": float(np.corrcoef(loss, acc)[0, 1]),
               "heads_above_0.9": int((acc > 0.9).sum()), "heads": heads}
        runs.append(run)
        first = heads[0]
        print(f"seed {seed}: lowest-loss head ACC {first['acc']:.3f} (loss {first['loss']:.5f}"
              f", mixed clusters {first['mixed']}); best head ACC {best['acc']:.3f} (loss "
              f"{best['loss']:.5f}, mixed {best['mixed']}); mean over heads {acc.mean():.3f}, "
              f"{run['heads_above_0.9']} of {len(heads)} heads above 0.9, corr(loss, ACC) "
              f"{run['corr_loss_acc']:.2f}", flush=True)
        for row in heads[:12]:
            print(f"  head {row['head']:2d} loss {row['loss']:.5f} ACC {row['acc']:.3f}")
    save("temi_selection", {"seeds": args.seeds, "runs": runs})


class _TrackedTEMI(TEMIClusterer):
    """TEMIClusterer that scores, after every epoch, the head the fit would keep if it ended
    there (the lowest loss of the epoch). Prediction draws no random numbers, so the training
    is the plain estimator's."""

    def _temi_epoch(self, pairs, stage):
        record = super()._temi_epoch(pairs, stage)
        self.best_head_ = int(np.argmin(self.head_losses_))
        labels = self._apply_batched(self._X, lambda batch: self._proba_tensor(batch).argmax(1))
        self.trajectory_.append({"epoch": stage.epoch + 1, "changed": record["changed"],
                                 **scores(self._y, labels)})
        return record

    def fit(self, X, y):
        """Train on X as the plain estimator does; y only scores the epochs."""
        self._X, self._y, self.trajectory_ = X, y, []
        return super().fit(X)


def stop_epoch(changed, tol, n_iter_no_change):
    """The epoch at which ``StoppingRule`` ends training on the recorded ``changed`` values."""
    rule = StoppingRule(tol, n_iter_no_change)
    for epoch, value in enumerate(changed, start=1):
        if rule.update(value):
            return epoch
    return len(changed)


def trajectory(args):
    """The defaults trained for their full 200 epochs (``tol=None``), the kept head scored after
    every epoch: where the stopping rule (``tol``, ``n_iter_no_change``) would end training and
    the accuracy there, for the default rule and looser ones."""
    X, y, _, _ = load("digits")
    runs, table = [], {}
    for seed in args.seeds:
        model = _TrackedTEMI(n_clusters=10, random_state=seed, tol=None)
        cpu = time.process_time()
        model.fit(X, y)
        cpu = time.process_time() - cpu
        path = model.trajectory_
        changed = [row["changed"] for row in path]
        seconds = np.cumsum([e["cpu_seconds"] for e in model.history_])
        runs.append({"seed": seed, "cpu": cpu, "trajectory": path})
        print(f"seed {seed}: " + ", ".join(
            f"epoch {row['epoch']} ACC {row['acc']:.3f} changed {row['changed']:.4f}"
            for row in path if row["epoch"] in (10, 25, 50, 75, 100, 125, 150, 200)), flush=True)
        for tol in args.tols:
            for patience in args.patience:
                epoch = stop_epoch(changed, tol, patience)
                table.setdefault((tol, patience), []).append(
                    (epoch, path[epoch - 1]["acc"], float(seconds[epoch - 1])))
    print(f"\n{'tol':>8} {'patience':>8}  epochs (seeds {args.seeds})  ACC mean  CPU s mean")
    for (tol, patience), cells in table.items():
        epochs = "/".join(str(c[0]) for c in cells)
        print(f"{tol:8g} {patience:8d}  {epochs:>24}  {np.mean([c[1] for c in cells]):.3f}"
              f"     {np.mean([c[2] for c in cells]):.0f}")
    save("temi_trajectory", {"seeds": args.seeds, "runs": runs, "rules": [
        {"tol": tol, "n_iter_no_change": patience, "epochs": [c[0] for c in cells],
         "acc": [c[1] for c in cells], "cpu": [c[2] for c in cells]}
        for (tol, patience), cells in table.items()]})


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
    p.add_argument("--no-kmeans", action="store_true", help="skip the KMeans baseline")
    p.add_argument("--verbose", type=int, default=0, help="the estimator's verbose")
    p.add_argument("--tag", default="", help="suffix of the result file's name")
    p = sub.add_parser("ablation")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-heads", type=int, default=50)
    p = sub.add_parser("rules")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p = sub.add_parser("selection")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 2])
    p = sub.add_parser("trajectory")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tols", type=float, nargs="+", default=[2e-3, 5e-3, 1e-2, 2e-2])
    p.add_argument("--patience", type=int, nargs="+", default=[5, 10])
    p = sub.add_parser("mining")
    p.add_argument("--n", type=int, nargs="+", default=[10000, 60000])
    p = sub.add_parser("heads")
    p.add_argument("--heads", type=int, default=50)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--dim", type=int, default=784, help="input features (Fashion pixels: 784)")
    p.add_argument("--batch", type=int, default=512, help="anchors per step (the paper's 512)")
    p.add_argument("--steps-per-epoch", type=int, default=117)
    args = parser.parse_args()
    parts = {"accuracy": accuracy, "ablation": ablation, "rules": rules, "selection": selection,
             "trajectory": trajectory, "mining": mining, "heads": heads}
    parts[args.part](args)


if __name__ == "__main__":
    main()
