"""Scaling benchmark: synthetic embeddings on disk (memmaps), mining and TEMI at 10 k - 1 M.

Subcommands (each prints a table and writes ``benchmarks/results/scale_<part>.json``)::

    python benchmarks/bench_scale.py make                    # write the memmaps (float32, float16)
    python benchmarks/bench_scale.py mining --n 10000 100000 1000000  # mine_neighbors, k=50
    python benchmarks/bench_scale.py indexes --n 1000000     # candidate faiss indexes at one n
    python benchmarks/bench_scale.py indexes --n 200000 --candidates flat  # exact, sampled
    python benchmarks/bench_scale.py temi --n 10000 100000 1000000  # TEMI fit on the memmap
    python benchmarks/bench_scale.py ddp --n 10000          # 1 process vs 2 gloo processes
    python benchmarks/bench_scale.py gpu-epoch              # 1.28 M x 768, 50 heads, one GPU

The data: ``n`` rows of ``d = 384`` features drawn from a mixture of 100 clusters. Each cluster
has a centre uniform on the unit sphere and its own random 32-dimensional subspace: a sample is
centre + (a Gaussian in that subspace, 0.1 per direction) + isotropic Gaussian noise (0.02 per
feature), times a random norm in [0.5, 2] (the mining normalises, the norm must not matter).
Embeddings of images are like that: a few dozen informative directions per class and noise,
so the nearest neighbours are meaningful (not the ties of isotropic noise). The rows are drawn in
fixed blocks of 65 536 with seeds (seed, block), so every file is a prefix of the larger ones.
Files: ``<dir>/gmm_n<n>_d384_<dtype>.npy`` (``np.load(path, mmap_mode="r")``) and
``<dir>/gmm_n<n>_labels.npy``.

Every measurement runs in a fresh Python process (:func:`measure`), which reports its peak
resident memory (``VmHWM`` of ``/proc/self/status``: anonymous memory *and* the pages of the
memmap it read), the peak of its anonymous part (``RssAnon`` sampled every 20 ms), wall seconds
and CPU seconds (``time.process_time``, all threads). Other subcommands reuse :func:`measure`:
write a function ``name(**kwargs) -> dict`` in this module and call ``measure("name", ...)``.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_DIR = Path("/tmp/skdc_scale")
SIZES = (10_000, 100_000, 1_000_000)
D, N_CLUSTERS, INTRINSIC, BLOCK = 384, 100, 32, 65_536
K = 50  # TEMI's default number of neighbours


# ----------------------------------------------------------------------------- measurement


def _status_mb(field):
    """A field of /proc/self/status (VmHWM, VmRSS, RssAnon, RssFile) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _AnonPeak(threading.Thread):
    """Samples RssAnon and RssFile every ``interval`` seconds; the kernel keeps no peak of them."""

    def __init__(self, interval=0.02):
        super().__init__(daemon=True)
        self.interval, self.anon, self.file = interval, 0.0, 0.0
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(self.interval)

    def sample(self):
        self.anon = max(self.anon, _status_mb("RssAnon"))
        self.file = max(self.file, _status_mb("RssFile"))


SAMPLER = None  # the fresh process' sampler: a target may read its peaks so far


def checkpoint(prefix):
    """The peaks so far, e.g. before a target's verification step: ``<prefix>_peak_*_mb``."""
    SAMPLER.sample()
    return {f"{prefix}_peak_rss_mb": _status_mb("VmHWM"), f"{prefix}_peak_anon_mb": SAMPLER.anon,
            f"{prefix}_peak_file_mb": SAMPLER.file}


def _child(target, kwargs_json):
    """Body of the fresh process: run ``target(**kwargs)``, print its result with the memory."""
    kwargs = json.loads(kwargs_json)
    base_rss = _status_mb("VmRSS")
    global SAMPLER
    sampler = SAMPLER = _AnonPeak()
    sampler.start()
    wall, cpu = time.perf_counter(), time.process_time()
    result = globals()[target](**kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sampler.stopped.set()
    sampler.join()
    sampler.sample()
    result.update(
        wall_s=wall,
        cpu_s=cpu,
        base_rss_mb=base_rss,  # the interpreter, numpy and this script, before the target ran
        peak_rss_mb=_status_mb("VmHWM"),
        peak_anon_mb=sampler.anon,
        peak_file_mb=sampler.file,
    )
    print("RESULT " + json.dumps(result), flush=True)


def measure(target, *, threads=2, timeout=None, **kwargs):
    """Run ``target(**kwargs)``, a function of this module, in a fresh Python process.

    Returns the dict the function returned plus ``wall_s``, ``cpu_s`` (``time.process_time`` of
    the whole process, all threads), ``base_rss_mb`` (before the function ran),
    ``peak_rss_mb`` (``VmHWM``), ``peak_anon_mb`` and ``peak_file_mb`` (sampled peaks of
    ``RssAnon`` and ``RssFile``). ``threads`` sets ``OMP_NUM_THREADS`` (faiss, numpy's BLAS
    and torch follow it). The kwargs must be JSON-serialisable.
    """
    threads = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    command = [sys.executable, os.path.abspath(__file__), "_child", target, json.dumps(kwargs)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{target}({kwargs}) failed:\n{out.stderr[-3000:]}")
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{target}({kwargs}) printed no result:\n{out.stdout[-3000:]}")


def save(part, payload):
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"scale_{part}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


def print_table(rows, columns, title=""):
    """``columns``: (header, key, format) triples."""
    if title:
        print(f"\n{title}")
    cells = [[header for header, _, _ in columns]]
    for row in rows:
        cells.append([("" if row.get(key) is None else format(row[key], fmt))
                      for _, key, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


# ----------------------------------------------------------------------------- data


def data_path(directory, n, dtype="float32"):
    return Path(directory) / f"gmm_n{n}_d{D}_{dtype}.npy"


def file_for(directory, n, dtype="float32"):
    """The smallest file of at least ``n`` rows (its first ``n`` rows are the data of size n)."""
    size = min([s for s in SIZES if s >= n] or [n])
    path = data_path(directory, size, dtype)
    if not path.exists():
        raise SystemExit(f"{path} is missing: python benchmarks/bench_scale.py make --n {size}")
    return str(path)


def _mixture(seed):
    rng = np.random.default_rng([seed, 2**31])
    centres = rng.normal(size=(N_CLUSTERS, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = np.linalg.qr(rng.normal(size=(N_CLUSTERS, D, INTRINSIC)))[0]  # orthonormal columns
    return centres, bases


def _block(seed, block, rows, centres, bases):
    rng = np.random.default_rng([seed, block])
    labels = rng.integers(N_CLUSTERS, size=rows)
    x = centres[labels] + 0.02 * rng.normal(size=(rows, D))
    z = 0.1 * rng.normal(size=(rows, INTRINSIC))
    for c in range(N_CLUSTERS):
        members = np.flatnonzero(labels == c)
        x[members] += z[members] @ bases[c].T
    x *= rng.uniform(0.5, 2.0, size=(rows, 1))
    return x, labels


def make(args):
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    centres, bases = _mixture(args.seed)
    for n in args.n:
        start = time.perf_counter()
        outputs = {dtype: np.lib.format.open_memmap(data_path(directory, n, dtype), mode="w+",
                                                    dtype=dtype, shape=(n, D))
                   for dtype in args.dtype}
        labels = np.empty(n, dtype=np.int64)
        for block, begin in enumerate(range(0, n, BLOCK)):
            stop = min(begin + BLOCK, n)
            x, block_labels = _block(args.seed, block, BLOCK, centres, bases)
            labels[begin:stop] = block_labels[: stop - begin]
            for out in outputs.values():
                out[begin:stop] = x[: stop - begin]
        for out in outputs.values():
            out.flush()
        np.save(directory / f"gmm_n{n}_labels.npy", labels)
        print(f"n={n}: {', '.join(str(data_path(directory, n, t)) for t in args.dtype)} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)


# ----------------------------------------------------------------------------- mining


def _faiss(threads):
    import faiss

    faiss.omp_set_num_threads(threads)
    return faiss


def _drop_self(found, rows):
    """Search results of ``k + 1`` per query → ``k`` without the query (else without the last)."""
    is_self = found == rows[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), found.shape[1] - 1)
    keep = np.ones(found.shape, dtype=bool)
    keep[np.arange(len(rows)), drop] = False
    return found[keep].reshape(len(rows), found.shape[1] - 1)


def _sample(n, size, seed=0):
    """``size`` random rows (in the order drawn) of ``n``."""
    return np.random.default_rng(seed).choice(n, min(size, n), replace=False)


def mining_run(path, n, k, index="auto", threads=2, n_recall=1000):
    """``mine_neighbors(X[:n], k, index=index)`` on the memmap ``path``, then its recall."""
    _faiss(threads)
    from skdeepcluster import mine_neighbors, neighbor_recall
    from skdeepcluster.neighbors import APPROXIMATE_INDEX_THRESHOLD

    X = np.load(path, mmap_mode="r")[:n]
    wall, cpu = time.perf_counter(), time.process_time()
    neighbors = mine_neighbors(X, k, index=index)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    memory = checkpoint("mining")  # the recall below imports scikit-learn
    recall_wall = time.perf_counter()
    recall = neighbor_recall(X, neighbors, n_queries=n_recall, random_state=0)
    kind = index if index != "auto" else (
        "approximate" if n > APPROXIMATE_INDEX_THRESHOLD else "exact")
    return {"n": n, "k": k, "index": kind, "mining_wall_s": wall, "mining_cpu_s": cpu,
            "recall": recall, "recall_wall_s": time.perf_counter() - recall_wall, **memory}


#: Candidate approximate indexes (faiss factory strings, inner product) and the search-time
#: parameter swept for each. nlist = 4096 ~ 4 sqrt(n) at 1 M, faiss' rule of thumb.
CANDIDATES = {
    "flat": ("Flat", None, [None]),
    "hnsw_flat": ("HNSW32,Flat", "efSearch", [64, 128, 256]),
    "hnsw_sq8": ("HNSW32_SQ8", "efSearch", [64, 128, 256]),
    "ivf_flat": ("IVF{nlist},Flat", "nprobe", [16, 32, 64, 128]),
    "ivf_sq8": ("IVF{nlist},SQ8", "nprobe", [16, 32, 64, 128]),
    "ivf_pq": ("IVF{nlist},PQ96", "nprobe", [16, 32, 64, 128]),
}
#: Measured by default; IVF-PQ is not: training its 96 product quantizers took 396 s at 10 k
#: on this machine, for a recall@50 of 0.90 (benchmarks/results/scale_indexes_n10000_t2.json).
DEFAULT_CANDIDATES = ["flat", "hnsw_flat", "hnsw_sq8", "ivf_flat", "ivf_sq8"]


def index_run(path, n, k, name, nlist=4096, values=None, threads=2, n_timing=20_000,
              n_recall=1000, ef_construction=40):
    """Build candidate ``name`` on ``X[:n]``; per search parameter, the search time of
    ``n_timing`` random queries (extrapolated to all n) and the recall@k of ``n_recall`` of them."""
    faiss = _faiss(threads)
    from skdeepcluster.neighbors import _exact_top_k, _recall_at_kth, _unit_chunks, _unit_rows

    X = np.load(path, mmap_mode="r")[:n]
    factory, parameter, default_values = CANDIDATES[name]
    values = values or default_values
    index = faiss.index_factory(D, factory.format(nlist=nlist), faiss.METRIC_INNER_PRODUCT)
    wall, cpu = time.perf_counter(), time.process_time()
    if "HNSW" in factory:
        index.hnsw.efConstruction = ef_construction
    if "IVF" in factory:
        faiss.extract_index_ivf(index).cp.seed = 1234
    if not index.is_trained:
        rows = np.sort(_sample(n, 40 * nlist if "IVF" in factory else 65_536, seed=1234))
        index.train(_unit_rows(X, rows, 4096))
    train_wall = time.perf_counter() - wall
    for _, _, chunk in _unit_chunks(X, 4096):
        index.add(chunk)
    build = {"build_wall_s": time.perf_counter() - wall, "build_cpu_s": time.process_time() - cpu,
             "train_wall_s": train_wall, "index_rss_anon_mb": _status_mb("RssAnon")}
    queries = _sample(n, n_timing if name != "flat" else min(n_timing, 2000))
    order = np.argsort(queries)
    # the exact k-th similarity of the recall queries, once (neighbor_recall's computation)
    recall_order = np.argsort(queries[:n_recall])
    recall_queries = queries[:n_recall][recall_order]
    kth = _exact_top_k(X, recall_queries, k, False, 4096)[:, -1]
    rows = []
    for value in values:
        if parameter:
            faiss.ParameterSpace().set_index_parameter(index, parameter, value)
        found = np.empty((len(queries), k + 1), dtype=np.int64)
        wall, cpu = time.perf_counter(), time.process_time()
        sorted_queries = queries[order]
        for start in range(0, len(queries), 4096):
            q = sorted_queries[start : start + 4096]
            found[order[start : start + 4096]] = index.search(_unit_rows(X, q, 4096), k + 1)[1]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        neighbors = _drop_self(found[:n_recall][recall_order], recall_queries)
        recall = _recall_at_kth(X, neighbors, recall_queries, kth, False, 4096)
        rows.append({"value": value, "search_wall_s": wall * n / len(queries),
                     "search_cpu_s": cpu * n / len(queries), "recall": recall,
                     "timed_queries": len(queries)})
    peak_before_size = _status_mb("VmHWM")
    tmp = Path(path).parent / f"_index_{name}_{os.getpid()}.faiss"
    faiss.write_index(index, str(tmp))
    size = tmp.stat().st_size / 2**20
    tmp.unlink()
    return {"n": n, "k": k, "name": name, "factory": factory.format(nlist=nlist),
            "parameter": parameter, **build, "index_file_mb": size,
            "search_peak_rss_mb": peak_before_size, "rows": rows}


def per_size(target, args, columns, **kwargs):
    """``measure(target, path=..., n=n, **kwargs)`` for every ``args.n`` on its memmap, each row
    printed as it comes, with the memmap's dtype and size."""
    rows = []
    for n in args.n:
        row = measure(target, threads=args.threads, path=file_for(args.dir, n, args.dtype), n=n,
                      **kwargs)
        row.update(dtype=args.dtype, file_mb=n * D * np.dtype(args.dtype).itemsize / 2**20)
        rows.append(row)
        print_table([row], columns)
    return rows


def mining(args):
    rows = per_size("mining_run", args, MINING_COLUMNS, k=args.k, index=args.index)
    print_table(rows, MINING_COLUMNS, f"mine_neighbors(X, {args.k}), {args.dtype} memmap, "
                f"{args.threads} threads")
    save(f"mining_{args.index}_{args.dtype}_t{args.threads}", rows)


MINING_COLUMNS = [
    ("n", "n", "d"), ("index", "index", "s"), ("file MB", "file_mb", ".0f"),
    ("mining s", "mining_wall_s", ".1f"), ("CPU s", "mining_cpu_s", ".1f"),
    ("recall@k", "recall", ".4f"), ("peak RSS MB", "mining_peak_rss_mb", ".0f"),
    ("peak anon MB", "mining_peak_anon_mb", ".0f"),
    ("peak file MB", "mining_peak_file_mb", ".0f"), ("base MB", "base_rss_mb", ".0f"),
]


def indexes(args):
    path = file_for(args.dir, args.n)
    results, flat_rows = [], []
    for name in args.candidates:
        result = measure("index_run", threads=args.threads, path=path, n=args.n, k=args.k,
                         name=name, nlist=args.nlist, n_timing=args.timing_queries)
        results.append(result)
        for row in result["rows"]:
            flat_rows.append({**{key: result[key] for key in (
                "name", "factory", "parameter", "build_wall_s", "build_cpu_s", "index_file_mb",
                "peak_rss_mb", "peak_anon_mb")}, **row})
        print_table(flat_rows[-len(result["rows"]):], INDEX_COLUMNS)
    print_table(flat_rows, INDEX_COLUMNS, f"n={args.n}, k={args.k}, {args.threads} threads; "
                f"search time extrapolated from {args.timing_queries} queries (flat: 2000)")
    save(f"indexes_n{args.n}_t{args.threads}", results)


INDEX_COLUMNS = [
    ("index", "factory", "s"), ("param", "parameter", "s"), ("value", "value", "d"),
    ("build s", "build_wall_s", ".1f"), ("build CPU s", "build_cpu_s", ".1f"),
    ("search s (all n)", "search_wall_s", ".0f"), ("search CPU s", "search_cpu_s", ".0f"),
    ("recall@k", "recall", ".4f"), ("index MB", "index_file_mb", ".0f"),
    ("peak RSS MB", "peak_rss_mb", ".0f"), ("peak anon MB", "peak_anon_mb", ".0f"),
]


# ----------------------------------------------------------------------------- TEMI


def temi_run(path, n, n_heads, epochs=1, **params):
    """One TEMI fit on the first ``n`` rows of the memmap at ``path`` (read in place)."""
    from skdeepcluster import TEMIClusterer

    X = np.load(path, mmap_mode="r")[:n]
    model = TEMIClusterer(n_clusters=N_CLUSTERS, n_heads=n_heads, max_epochs=epochs, tol=None,
                          random_state=0, device="cpu", **params)
    wall = time.perf_counter()
    model.fit(X)
    fit_s = time.perf_counter() - wall
    epochs = [entry for entry in model.history_ if entry["stage"] == "temi"]
    epoch_s = float(np.median([entry["seconds"] for entry in epochs]))
    steps = model.n_steps_ // len(epochs)
    return {"n": n, "n_heads": n_heads, "batch_size": model.batch_size_, "fit_s": fit_s,
            "epoch_s": epoch_s, "epoch_cpu_s": float(np.median([e["cpu_seconds"] for e in epochs])),
            "steps_per_epoch": steps, "step_s": epoch_s / steps, "head_groups": model.head_groups_}


def temi(args):
    rows = per_size("temi_run", args, TEMI_COLUMNS, n_heads=args.heads, epochs=args.epochs)
    for row in rows:  # the target: 1.5 x the memmap + 1 GB
        row["rss_budget_mb"] = 1.5 * row["file_mb"] + 1024
    print_table(rows, TEMI_COLUMNS, f"TEMIClusterer(n_clusters={N_CLUSTERS}, n_heads={args.heads},"
                f" max_epochs={args.epochs}, tol=None).fit(memmap), {args.dtype}, "
                f"{args.threads} threads")
    save(f"temi_h{args.heads}_{args.dtype}_t{args.threads}", _merged(
        f"temi_h{args.heads}_{args.dtype}_t{args.threads}", rows))


def _merged(part, rows):
    """``rows`` with the saved rows of other ``n`` (runs of one size at a time add up)."""
    path = RESULTS_DIR / f"scale_{part}.json"
    kept = [row for row in json.loads(path.read_text())
            if row["n"] not in {new["n"] for new in rows}] if path.exists() else []
    return sorted(kept + rows, key=lambda row: row["n"])


TEMI_COLUMNS = [
    ("n", "n", "d"), ("file MB", "file_mb", ".0f"), ("fit s", "fit_s", ".0f"),
    ("epoch s", "epoch_s", ".1f"), ("epoch CPU s", "epoch_cpu_s", ".1f"),
    ("steps", "steps_per_epoch", "d"), ("s/step", "step_s", ".3f"),
    ("peak RSS MB", "peak_rss_mb", ".0f"), ("budget MB", "rss_budget_mb", ".0f"),
    ("peak anon MB", "peak_anon_mb", ".0f"), ("peak file MB", "peak_file_mb", ".0f"),
]


# ----------------------------------------------------------------------------- DDP throughput


def ddp_worker(path, n, epochs, out):
    """A TEMI fit with its defaults but ``max_epochs=epochs`` (run alone, or under torchrun, where
    ``distributed="auto"`` makes it distributed); rank 0 writes its per-step time to ``out``."""
    import torch

    from skdeepcluster import TEMIClusterer

    if "RANK" in os.environ:
        torch.distributed.init_process_group("gloo")
    X = np.load(path, mmap_mode="r")[:n]
    model = TEMIClusterer(n_clusters=N_CLUSTERS, max_epochs=epochs, tol=None, random_state=0,
                          device="cpu").fit(X)
    if model.world_size_ == 1 or torch.distributed.get_rank() == 0:
        entries = [entry for entry in model.history_ if entry["stage"] == "temi"][1:]
        steps = model.n_steps_ // epochs
        Path(out).write_text(json.dumps({
            "world_size": model.world_size_, "threads": torch.get_num_threads(),
            "step_s": float(np.median([e["seconds"] for e in entries])) / steps,
            "step_cpu_s": float(np.median([e["cpu_seconds"] for e in entries])) / steps,
            "steps_per_epoch": steps, "batch_size": model.batch_size_,
            "labels": model.labels_[:2000].tolist()}))
    if model.world_size_ > 1:
        torch.distributed.destroy_process_group()


def ddp(args):
    """Per-step time of TEMI's defaults: 1 process (1 and 2 threads) against 2 gloo processes
    of 1 thread each, the same global batch, interleaved ``repeats`` times."""
    path = file_for(args.dir, args.n)
    configs = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
               ("2 processes (gloo), 1 thread each", 2, 1)]
    results = {name: [] for name, _, _ in configs}
    labels = {}
    for repeat in range(args.repeats):
        for name, processes, threads in configs:
            out = Path(args.dir) / f"_ddp_{processes}_{threads}.json"
            worker = [os.path.abspath(__file__), "_ddp_worker", path, str(args.n),
                      str(args.epochs), str(out)]
            command = [sys.executable, *worker] if processes == 1 else [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(processes), *worker]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            run = subprocess.run(command, capture_output=True, text=True, env=env)
            if run.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{run.stderr[-3000:]}")
            result = json.loads(out.read_text())
            out.unlink()
            labels[name] = np.array(result.pop("labels"))
            results[name].append(result)
            print(f"repeat {repeat}: {name}: {result['step_s']:.3f} s/step", flush=True)
    rows = []
    single_1 = [r["step_s"] for r in results[configs[0][0]]]
    single_2 = [r["step_s"] for r in results[configs[1][0]]]
    for name, _, _ in configs:
        steps = [r["step_s"] for r in results[name]]
        rows.append({
            "config": name, "step_s": float(np.median(steps)),
            "step_cpu_s": float(np.median([r["step_cpu_s"] for r in results[name]])),
            # throughput ratio, pair by pair (the same repeat), against one process
            "vs_1_thread": float(np.median(np.array(single_1) / np.array(steps))),
            "vs_2_threads": float(np.median(np.array(single_2) / np.array(steps))),
            "label_agreement": float(np.mean(labels[name] == labels[configs[0][0]])),
        })
    print_table(rows, DDP_COLUMNS, f"TEMI defaults (50 heads, batch 512), n={args.n}, d={D}, "
                f"median of {args.repeats} interleaved repeats, epochs 2-{args.epochs}")
    save(f"ddp_n{args.n}", {"rows": rows, "runs": results})


DDP_COLUMNS = [
    ("configuration", "config", "s"), ("s/step", "step_s", ".3f"),
    ("rank-0 CPU s/step", "step_cpu_s", ".3f"), ("throughput vs 1p1t", "vs_1_thread", ".2f"),
    ("throughput vs 1p2t", "vs_2_threads", ".2f"), ("labels = 1p1t", "label_agreement", ".3f"),
]


# ----------------------------------------------------------------------------- one GPU


def gpu_epoch(args):
    """A TEMI epoch over ``n`` × ``d`` synthetic embeddings (the paper's ImageNet: 1.28 M × 768)
    with 50 heads on one CUDA GPU; the fit's mining (faiss-gpu when installed) timed apart."""
    import torch

    from skdeepcluster import TEMIClusterer

    if not torch.cuda.is_available():
        raise SystemExit("gpu-epoch needs a CUDA device; this machine has none.")
    generator = torch.Generator(device="cuda").manual_seed(0)
    centres = torch.randn(1000, args.d, device="cuda", generator=generator)
    assignment = torch.randint(1000, (args.n,), device="cuda", generator=generator)
    X = np.empty((args.n, args.d), dtype=np.float16)
    for start in range(0, args.n, 100_000):  # a 1000-class mixture, built on the GPU in blocks
        block = assignment[start:start + 100_000]
        noise = torch.randn(block.numel(), args.d, device="cuda", generator=generator)
        X[start:start + 100_000] = (centres[block] + 0.5 * noise).half().cpu().numpy()
    model = TEMIClusterer(n_clusters=1000, max_epochs=args.epochs, tol=None, random_state=0,
                          device="cuda", verbose=1)
    wall = time.perf_counter()
    model.fit(X)
    fit_s = time.perf_counter() - wall
    epochs = [entry for entry in model.history_ if entry["stage"] == "temi"]
    row = {"device": torch.cuda.get_device_name(), "n": args.n, "d": args.d,
           "n_heads": model.n_heads, "precision": model.precision_, "fit_s": fit_s,
           "epoch_s": [entry["seconds"] for entry in epochs],
           "steps_per_epoch": model.n_steps_ // len(epochs),
           "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30}
    row["mining_and_prediction_s"] = fit_s - sum(row["epoch_s"])
    print(json.dumps(row, indent=2))
    save(f"gpu_epoch_n{args.n}_d{args.d}", row)


# ----------------------------------------------------------------------------- CLI


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)

    p = sub.add_parser("make", help="write the synthetic memmaps")
    p.add_argument("--dir", default=str(DEFAULT_DIR))
    p.add_argument("--n", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--dtype", nargs="+", default=["float32", "float16"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make)

    p = sub.add_parser("mining", help="mine_neighbors on the memmaps, in fresh processes")
    p.add_argument("--dir", default=str(DEFAULT_DIR))
    p.add_argument("--n", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--k", type=int, default=K)
    p.add_argument("--index", default="auto", choices=["auto", "exact", "approximate"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=mining)

    p = sub.add_parser("indexes", help="candidate faiss indexes at one n")
    p.add_argument("--dir", default=str(DEFAULT_DIR))
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--k", type=int, default=K)
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES, choices=list(CANDIDATES))
    p.add_argument("--timing-queries", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=indexes)

    p = sub.add_parser("temi", help="TEMI fits on the memmaps, in fresh processes")
    p.add_argument("--dir", default=str(DEFAULT_DIR))
    p.add_argument("--n", type=int, nargs="+", default=list(SIZES))
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=temi)

    p = sub.add_parser("ddp", help="TEMI steps: 1 process against 2 gloo processes (torchrun)")
    p.add_argument("--dir", default=str(DEFAULT_DIR))
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.set_defaults(func=ddp)

    p = sub.add_parser("gpu-epoch", help="a TEMI epoch, 50 heads, on one CUDA GPU")
    p.add_argument("--n", type=int, default=1_281_167)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--epochs", type=int, default=1)
    p.set_defaults(func=gpu_epoch)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "_child":
        _child(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 6 and sys.argv[1] == "_ddp_worker":
        ddp_worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
