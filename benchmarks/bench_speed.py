"""Speed of the shared training engine and of every estimator's defaults.

Parts (each prints a table and writes ``benchmarks/results/speed_<part>.json``)::

    python benchmarks/bench_speed.py machine            # CPU flags, GEMM GFLOP/s per precision
    python benchmarks/bench_speed.py heads --dim 64     # TEMI step: ours vs the authors' loop
    python benchmarks/bench_speed.py backbones          # convnet step: NCHW vs channels-last
    python benchmarks/bench_speed.py blocks             # small convnets: pool-ReLU vs ReLU-pool
    python benchmarks/bench_speed.py embedder           # EfficientNet-Lite0 forward: layouts
    python benchmarks/bench_speed.py epochs --baseline ../old  # epoch times: ../old vs this
    python benchmarks/bench_speed.py epochs --precisions float32 bfloat16  # epoch times
    python benchmarks/bench_speed.py epochs --fashion 4096 \
        --envs SKDEEPCLUSTER_KEEP_FREED_MEMORY=0 SKDEEPCLUSTER_KEEP_FREED_MEMORY=1
    python benchmarks/bench_speed.py defaults --seeds 0 1 2   # every estimator's defaults
    python benchmarks/bench_speed.py precision --seeds 0 1 2  # bfloat16 vs float32
    python benchmarks/bench_speed.py best-of FILES --n 3  # best of n fits by their score
    python benchmarks/bench_speed.py checkpoint         # cost of a checkpoint write

Comparisons are interleaved (A, B, A, B, ...) and report medians of wall and CPU seconds
(``time.process_time``) and their ratio, because the machines this runs on are shared and noisy.
``--device cuda`` runs the same measurements on a GPU (``benchmarks/bench_gpu.py`` runs them all).
"""

import argparse
import copy
import functools
import json
import sys
import time

import numpy as np
import torch
from _common import (
    RESULTS_DIR,
    digits_features,
    digits_images,
    kmeans_run,
    overrides,
    scores,
    stage_epochs,
)
from torch import nn
from torch.nn import functional as F

import skdeepcluster
from skdeepcluster.engine import native_bfloat16, resolve_device
from skdeepcluster.nn.backbones import CifarResNet18, SmallCNN, SmallVGG
from skdeepcluster.nn.losses import pmi, update_cluster_prior

ESTIMATORS = ("TEMIClusterer", "SCANClusterer", "DeepClusterer", "MMDCClusterer", "ADCClusterer")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def save(part, payload):
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"speed_{part}.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(function, device):
    """(wall seconds, CPU seconds) of one call."""
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(functions, repeats, device):
    """Medians of wall and CPU seconds of each function, run in turn ``repeats`` times."""
    samples = {name: [] for name in functions}
    for function in functions.values():  # warm-up
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            samples[name].append(timed(function, device))
    return {name: {"wall": float(np.median([s[0] for s in values])),
                   "cpu": float(np.median([s[1] for s in values]))}
            for name, values in samples.items()}


def cpu_flags():
    probes = ("_is_avx2_supported", "_is_avx512_supported", "_is_avx512_bf16_supported",
              "_is_amx_tile_supported")
    return {name.strip("_")[3:]: bool(getattr(torch.cpu, name, lambda: False)())
            for name in probes}


# ---------------------------------------------------------------------------- machine
def gemm_rate(m, k, n, dtype, device, repeats=10):
    """GFLOP/s of an (m, k) @ (k, n) product in ``dtype``."""
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def machine(args):
    device = resolve_device(args.device)
    shapes = [(1024, 64, 512), (1024, 784, 512), (1024, 512, 256), (2048, 2048, 2048)]
    rows = []
    for name, dtype in DTYPES.items():
        for shape in shapes:
            rate = gemm_rate(*shape, dtype, device, repeats=3 if name != "float32" else 10)
            rows.append({"dtype": name, "shape": shape, "gflops": rate})
            print(f"{name:9s} {str(shape):20s} {rate:8.1f} GFLOP/s", flush=True)
    info = {"device": str(device), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_flags": cpu_flags(),
            "native_bfloat16": native_bfloat16(device), "gemm": rows}
    print(json.dumps({k: v for k, v in info.items() if k != "gemm"}))
    save(f"machine_{device.type}{args.tag}_t{torch.get_num_threads()}", info)


# ---------------------------------------------------------------------------- TEMI heads
class _AuthorsHead(nn.Module):
    """One DINO/TEMI head as the authors write it: ``Linear → GELU → Linear``, L2 normalisation,
    a weight-normalised ``Linear(bottleneck, K, bias=False)`` with its gain fixed at 1 at start."""

    def __init__(self, d, k, hidden=512, bottleneck=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, k, bias=False)
        )
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class AuthorsTEMI:
    """The authors' layout of a TEMI step: a Python loop over heads for the forward passes and
    for the loss (each head's prior, PMI and the ensemble weight built head by head), AdamW over
    the heads' parameters, the teacher update looping over parameters."""

    def __init__(self, n_heads, d, k, device, beta=0.6, tau=0.1):
        self.student = nn.ModuleList(_AuthorsHead(d, k) for _ in range(n_heads)).to(device)
        self.teacher = nn.ModuleList(_AuthorsHead(d, k) for _ in range(n_heads)).to(device)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-4, weight_decay=1e-4)
        self.priors = [torch.full((k,), 1 / k, device=device) for _ in range(n_heads)]
        self.beta, self.tau = beta, tau

    def step(self, x, y):
        inputs = torch.cat([x, y])
        student = [head(inputs) for head in self.student]
        with torch.no_grad():
            teacher = [head(inputs) for head in self.teacher]
        probs = [torch.softmax(t / self.tau, dim=-1) for t in teacher]
        weight = sum((p[: len(x)] * p[len(x):]).sum(-1) for p in probs) / len(probs)
        losses = []
        for h, (s, t) in enumerate(zip(student, teacher, strict=True)):
            self.priors[h] = update_cluster_prior(
                self.priors[h][None], probs[h][None], 0.9
            )[0]
            log_prior = self.priors[h].log()[None]
            sx, sy = torch.log_softmax(s / self.tau, -1).chunk(2)
            tx, ty = torch.log_softmax(t / self.tau, -1).chunk(2)
            pair = -0.5 * (pmi(sx[None], ty[None], log_prior, self.beta)
                           + pmi(sy[None], tx[None], log_prior, self.beta))[0]
            losses.append((weight * pair).mean())
        loss = sum(losses) / len(losses)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            for teacher_param, student_param in zip(self.teacher.parameters(),
                                                    self.student.parameters(), strict=True):
                teacher_param.mul_(0.996).add_(student_param.detach(), alpha=0.004)


def temi_step_flops(n_heads, d, rows, k=10, hidden=512, bottleneck=256):
    """Multiply-adds ×2 of one TEMI step: student forward and backward (no input gradient of the
    first layer), teacher forward, on ``rows`` rows (anchors and neighbours)."""
    forward = d * hidden + hidden * bottleneck + bottleneck * k
    return 2 * rows * n_heads * (3 * forward + hidden * bottleneck + bottleneck * k)


def step_products(group_sizes, d, rows, dtype, device, k=10, hidden=512, bottleneck=256,
                  repeats=5):
    """Seconds of the batched matrix products of one TEMI step alone, as the step calls them:
    per group of heads the student's and the teacher's forward products and the student's
    weight and input gradients (none for the first layer's input), in ``dtype``."""
    def rand(*shape):
        return torch.randn(*shape, device=device).to(dtype)

    groups = []
    for g in sorted(set(group_sizes)):
        x = rand(rows, d).expand(g, rows, d)
        w1, w2, w3 = rand(g, d, hidden), rand(g, hidden, bottleneck), rand(g, bottleneck, k)
        a1, a2 = rand(g, rows, hidden), rand(g, rows, bottleneck)
        g1, g2, g3 = rand(g, rows, hidden), rand(g, rows, bottleneck), rand(g, rows, k)
        groups.append((g, x, w1, w2, w3, a1, a2, g1, g2, g3))

    def run():
        for g, x, w1, w2, w3, a1, a2, g1, g2, g3 in groups:
            for _ in range(group_sizes.count(g)):
                for _ in range(2):  # student and teacher forward
                    torch.bmm(x, w1), torch.bmm(a1, w2), torch.bmm(a2, w3)
                torch.bmm(a2.transpose(1, 2), g3), torch.bmm(g3, w3.transpose(1, 2))
                torch.bmm(a1.transpose(1, 2), g2), torch.bmm(g2, w2.transpose(1, 2))
                torch.bmm(x.transpose(1, 2), g1)

    run()
    return min(timed(run, device)[0] for _ in range(repeats))


def heads(args):
    device = resolve_device(args.device)
    torch.manual_seed(0)
    batch, d, k, steps = args.batch, args.dim, 10, args.steps_per_epoch
    X = torch.rand(batch * steps, d).numpy()
    ours = skdeepcluster.TEMIClusterer(
        n_clusters=k, n_heads=args.heads, batch_size=batch, n_neighbors=10, max_epochs=1,
        precision=args.precision, device=args.device, random_state=0,
    )
    X_checked, trainer, seed = ours._begin_fit(X)
    stage = next(ours._stages(X_checked, trainer, torch.Generator().manual_seed(seed)))
    authors = AuthorsTEMI(args.heads, d, k, device)
    features = torch.from_numpy(X).to(device)

    def authors_epoch():
        for i in range(steps):
            x = features[i * batch:(i + 1) * batch]
            authors.step(x, x.roll(1, 0))

    times = interleaved({"ours": lambda: stage.run_epoch(stage), "authors": authors_epoch},
                        args.repeats, device)
    flops = temi_step_flops(args.heads, d, 2 * batch)
    dtype = trainer.dtype
    forward_shapes = [(2 * batch, d, 512), (2 * batch, 512, 256), (2 * batch, 256, k)]
    # the floor: the step's products at this device's measured rate for their shapes
    rates = [gemm_rate(*shape, dtype, device) for shape in forward_shapes]
    per_row = [d * 512, 512 * 256, 256 * k]
    counts = [2, 3, 3]  # student fwd + weight grad + teacher fwd; + input grad for layers 2, 3
    floor = sum(2 * 2 * batch * args.heads * c * m / (r * 1e9)
                for c, m, r in zip(counts, per_row, rates, strict=True))
    group_sizes = list(ours.module_["student"].group_sizes)
    products = step_products(group_sizes, d, 2 * batch, dtype, device)
    result = {
        "heads": args.heads, "dim": d, "batch": batch, "threads": torch.get_num_threads(),
        "device": str(device), "precision": str(dtype).removeprefix("torch."),
        "head_groups": len(ours.module_["student"].groups),
        "ours_s_per_step": {key: v / steps for key, v in times["ours"].items()},
        "authors_s_per_step": {key: v / steps for key, v in times["authors"].items()},
        "speedup_cpu": times["authors"]["cpu"] / times["ours"]["cpu"],
        "speedup_wall": times["authors"]["wall"] / times["ours"]["wall"],
        "gflop_per_step": flops / 1e9, "floor_s_per_step": floor,
        "ours_over_floor": times["ours"]["wall"] / steps / floor,
        # the step's batched products alone, as the step calls them (shapes and groups)
        "products_s_per_step": products, "products_over_floor": products / floor,
    }
    print(f"TEMI step, {args.heads} heads, d={d}, batch {batch} pairs, "
          f"{result['threads']} thread(s), {result['precision']}, "
          f"{result['head_groups']} head group(s):")
    print(f"  ours    {result['ours_s_per_step']['wall']:.3f} s wall "
          f"{result['ours_s_per_step']['cpu']:.3f} s CPU per step")
    print(f"  authors {result['authors_s_per_step']['wall']:.3f} s wall "
          f"{result['authors_s_per_step']['cpu']:.3f} s CPU per step")
    print(f"  speed-up {result['speedup_cpu']:.2f}x (CPU seconds), "
          f"{result['speedup_wall']:.2f}x (wall); {result['gflop_per_step']:.1f} GFLOP per "
          f"step, GEMM floor {floor:.3f} s, ours at {result['ours_over_floor']:.2f}x the floor")
    print(f"  the step's batched products alone: {products:.3f} s "
          f"({result['products_over_floor']:.2f}x the floor)")
    save(f"heads_d{d}_b{batch}_h{args.heads}_t{result['threads']}_{result['precision']}_"
         f"{device.type}{args.tag}", result)


# ---------------------------------------------------------------------------- backbones
def backbones(args):
    device = resolve_device(args.device)
    configs = [("SmallCNN, 8 px grey (digits)", lambda: SmallCNN(1, 32, 8), (1, 8, 8), 256),
               ("SmallCNN, 28 px grey (Fashion)", lambda: SmallCNN(1, 32, 28), (1, 28, 28), 128),
               ("CIFAR ResNet-18, 32 px RGB", lambda: CifarResNet18(3), (3, 32, 32), 64)]
    precisions = ["float32"] + (["bfloat16"] if native_bfloat16(device) or args.force else [])
    rows = []
    for name, build, shape, batch in configs:
        functions = {}
        for precision in precisions:
            for layout in ("nchw", "channels_last"):
                torch.manual_seed(0)
                model = build().to(device)
                if layout == "channels_last":
                    model = model.to(memory_format=torch.channels_last)
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                x = torch.rand(batch, *shape, device=device)
                dtype = DTYPES[precision]

                def step(model=model, optimizer=optimizer, x=x, dtype=dtype):
                    with torch.autocast(device.type, dtype=dtype,
                                        enabled=dtype != torch.float32):
                        loss = model(x).float().square().mean()
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

                functions[f"{precision}/{layout}"] = step
        times = interleaved(functions, args.repeats, device)
        base = times["float32/nchw"]
        for key, value in times.items():
            rows.append({"network": name, "batch": batch, "variant": key, **value,
                         "speedup_cpu": base["cpu"] / value["cpu"],
                         "speedup_wall": base["wall"] / value["wall"]})
            print(f"{name:32s} batch {batch:4d} {key:24s} {value['wall'] * 1000:8.1f} ms wall "
                  f"{value['cpu'] * 1000:8.1f} ms CPU  x{base['cpu'] / value['cpu']:.2f} "
                  f"(CPU) vs float32/nchw", flush=True)
    save(f"backbones_{device.type}_t{torch.get_num_threads()}{args.tag}",
         {"device": str(device), "threads": torch.get_num_threads(), "rows": rows})


def relu_before_pool(network):
    """A copy of ``network`` with each block's ReLU moved back before its max pooling (the
    papers' conv-BN-ReLU-pool order; the package's blocks pool first)."""
    reference = copy.deepcopy(network)
    layers = list(reference.layers)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    reference.layers = nn.Sequential(*layers)
    return reference


def blocks(args):
    """A training step of the small convnets with the package's pool-then-ReLU blocks against
    the same weights in the conv-BN-ReLU-pool order (identical results), channels-last, in the
    precision ``"auto"`` picks; SmallVGG's batch is SCAN's pretext batch of 512 pairs."""
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if native_bfloat16(device) else torch.float32
    configs = [("SmallVGG, 28 px grey (Fashion)", lambda: SmallVGG(1, 28), (1, 28, 28), 1024),
               ("SmallCNN, 28 px grey (Fashion)", lambda: SmallCNN(1, 32, 28), (1, 28, 28), 256),
               ("SmallVGG, 8 px grey (digits)", lambda: SmallVGG(1, 8), (1, 8, 8), 1024),
               ("SmallCNN, 8 px grey (digits)", lambda: SmallCNN(1, 32, 8), (1, 8, 8), 256)]
    rows = []
    for name, build, shape, batch in configs:
        torch.manual_seed(0)
        network = build()
        x = torch.rand(batch, *shape, device=device)
        functions = {}
        for variant, model in (("pool, relu", network), ("relu, pool", relu_before_pool(network))):
            model = model.to(device, memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step(model=model, optimizer=optimizer, x=x):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    loss = model(x).float().square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            functions[variant] = step
        times = interleaved(functions, args.repeats, device)
        ratio = times["relu, pool"]["cpu"] / times["pool, relu"]["cpu"]
        rows.append({"network": name, "batch": batch, "precision": str(dtype), **times,
                     "speedup_cpu": ratio})
        print(f"{name:32s} batch {batch:5d}  relu-pool {times['relu, pool']['cpu'] * 1000:7.1f} "
              f"ms CPU  pool-relu {times['pool, relu']['cpu'] * 1000:7.1f} ms CPU  x{ratio:.2f}",
              flush=True)
    save(f"blocks_{device.type}_t{torch.get_num_threads()}{args.tag}",
         {"device": str(device), "threads": torch.get_num_threads(), "rows": rows})


def embedder(args):
    """EfficientNet-Lite0 inference on Fashion-MNIST-sized work: the package's network as it
    comes (NCHW, batch normalisations, padding modules), the same in channels-last, and
    ImageEmbedder's network (batch normalisations folded, symmetric paddings in the
    convolutions, channels-last); then ImageEmbedder.transform's images per second."""
    from skdeepcluster import ImageEmbedder
    from skdeepcluster.embedders import _build_efficientnet_lite0

    device = resolve_device(args.device)
    images = digits_images()[0]  # the content does not change the time
    rows = []
    for size in args.sizes:
        embedder_ = ImageEmbedder("efficientnet-lite0", image_size=size, batch_size=args.batch,
                                  device=device).fit()
        package = _build_efficientnet_lite0(fold=False).network.to(device)
        package_cl = copy.deepcopy(package).to(memory_format=torch.channels_last)
        ours = embedder_.model_.to(device, memory_format=torch.channels_last).eval()
        batch = torch.from_numpy(images[: args.batch]).float().div(255).unsqueeze(1)
        x = embedder_._preprocess(batch).to(device)
        x_cl = x.contiguous(memory_format=torch.channels_last)

        def forward(model, inputs):
            def run():
                with torch.inference_mode():
                    model(inputs)
            return run

        functions = {
            "package, NCHW": forward(package.extract_features, x),
            "package, channels-last": forward(package_cl.extract_features, x_cl),
            "ImageEmbedder (folded, channels-last)": forward(ours, x_cl),
        }
        times = interleaved(functions, args.repeats, device)
        base = times["package, NCHW"]
        for key, value in times.items():
            rows.append({"image_size": size, "batch": args.batch, "variant": key, **value,
                         "images_per_s": args.batch / value["wall"],
                         "speedup_cpu": base["cpu"] / value["cpu"]})
            print(f"{size:4d} px  batch {args.batch}  {key:40s} {value['wall']:7.2f} s wall "
                  f"{value['cpu']:7.2f} s CPU  {args.batch / value['wall']:6.1f} img/s  "
                  f"x{base['cpu'] / value['cpu']:.2f} (CPU)", flush=True)
        n = min(len(images), args.transform_images)
        wall, cpu = timed(functools.partial(embedder_.transform, images[:n]), device)
        rows.append({"image_size": size, "variant": "ImageEmbedder.transform", "images": n,
                     "wall": wall, "cpu": cpu, "images_per_s": n / wall})
        print(f"{size:4d} px  ImageEmbedder.transform of {n} digits: {wall:.1f} s wall, "
              f"{cpu:.1f} s CPU, {n / wall:.1f} img/s", flush=True)
    save(f"embedder_{device.type}_t{torch.get_num_threads()}",
         {"device": str(device), "threads": torch.get_num_threads(), "rows": rows})


# ---------------------------------------------------------------------------- estimators
def digits_for(name):
    """TEMI clusters features (pixels / 16); the other four learn from the 8×8 images."""
    return digits_features() if name == "TEMIClusterer" else digits_images()


def fit_once(name, params, seed):
    X, y = digits_for(name)
    model = getattr(skdeepcluster, name)(n_clusters=10, random_state=seed, **params)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(X)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = {"estimator": name, "seed": seed, **scores(y, model.labels_), "wall": wall, "cpu": cpu,
           "score": float(model.score(X)),  # the method's own label-free criterion
           "n_iter": model.n_iter_, "precision": model.precision_,
           "threads": torch.get_num_threads(),
           "epochs": stage_epochs(model.history_)}
    if getattr(model, "init_losses_", None) is not None:  # SCAN: the n_init fits' criterion
        row["init_losses"] = model.init_losses_.tolist()
    if getattr(model, "kmeans_labels_", None) is not None:  # ADC: the k-means initialisation
        row["kmeans_init_acc"] = scores(y, model.kmeans_labels_)["acc"]
    print(json.dumps(row), flush=True)
    return row


def defaults(args):
    """Every estimator with its defaults (only ``n_clusters``, ``random_state`` and
    ``device`` set, plus any ``--set`` overrides) on the 1 797 digits, trained and scored on
    all of them."""
    rows = []
    X, y = digits_features()
    for seed in args.seeds:
        rows.append({"estimator": "KMeans", "seed": seed,
                     **{k: v for k, v in kmeans_run(X, X, y, 10, seed).items()}})
    params = {"device": args.device, **overrides(args.set)}
    for name in args.estimators:
        for seed in args.seeds:
            rows.append(fit_once(name, params, seed))
            save(f"defaults_{args.tag}", rows)
    summarize_rows(rows)


def summarize_rows(rows):
    by_name = {}
    for row in rows:
        by_name.setdefault(row["estimator"], []).append(row)
    print(f"\n{'estimator':16s} {'ACC':>15s} {'NMI':>15s} {'wall s':>9s} {'CPU s':>9s} "
          f"{'epochs':>8s}")
    for name, group in by_name.items():
        def stat(key, group=group):
            values = [r[key] for r in group if key in r]
            return (np.mean(values), np.std(values)) if values else (np.nan, np.nan)
        acc, nmi = stat("acc"), stat("nmi")
        wall = stat("wall") if "wall" in group[0] else stat("seconds")
        print(f"{name:16s} {acc[0]:.3f} ± {acc[1]:.3f}   {nmi[0]:.3f} ± {nmi[1]:.3f} "
              f"{wall[0]:9.1f} {stat('cpu')[0]:9.1f} {stat('n_iter')[0]:8.1f}")


#: A few epochs of every stage, otherwise the defaults (for epoch times only).
EPOCH_PARAMS = {
    "TEMIClusterer": dict(max_epochs=3),
    "SCANClusterer": dict(pretext_epochs=2, max_epochs=2, self_labeling_epochs=2),
    "DeepClusterer": dict(max_epochs=2),
    "MMDCClusterer": dict(max_epochs=2),
    "ADCClusterer": dict(warmup_epochs=2, max_epochs=2),
    "ImageEmbedder": {},
}

EPOCH_CHILD = """
import hashlib, json, sys, time
sys.path.insert(0, {bench!r})
import numpy as np, skdeepcluster
from _common import digits_features, digits_images, fashion_mnist_subset
name, params, fashion = {name!r}, {params!r}, {fashion!r}
if fashion:
    X = fashion_mnist_subset(fashion)[0]
    X = X.reshape(len(X), -1) / np.float32(255) if name == "TEMIClusterer" else X
else:
    X = (digits_features() if name == "TEMIClusterer" else digits_images())[0]
if name == "ImageEmbedder":  # inference: 256 images through EfficientNet-Lite0 at 224 px
    embedder = skdeepcluster.ImageEmbedder("efficientnet-lite0", **params).fit()
    wall, cpu = time.perf_counter(), time.process_time()
    output = embedder.transform(X[:256])
    stages = {{"embed": [(time.perf_counter() - wall, time.process_time() - cpu)]}}
else:
    cls = getattr(skdeepcluster, name)
    if "min_steps" in cls().get_params():  # the version before the stopping rule
        params["min_steps"] = 0
    model = cls(n_clusters=10, random_state=0, **params).fit(X)
    output = model.labels_
    stages = {{}}
    for entry in model.history_:
        stages.setdefault(entry["stage"], []).append(
            (entry["seconds"], entry.get("cpu_seconds", np.nan)))
print(json.dumps({{
    "labels": hashlib.sha1(np.ascontiguousarray(output).tobytes()).hexdigest(),
    "stages": {{stage: [float(np.median([w for w, _ in v])), float(np.median([c for _, c in v]))]
               for stage, v in stages.items()}},
}}))
"""


def epochs(args):
    """Median seconds per epoch of each stage (wall and CPU), two variants run in turn in fresh
    processes (the same machine, threads and data): the checkout at ``--baseline`` against this
    one, this one in each of ``--precisions``, or this one under each of two environment
    variables (``--envs``, e.g. the library's memory setting off and on). Whether the two
    variants' fits gave the same labels (embeddings for ``ImageEmbedder``) is reported too."""
    import os
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    current = os.path.dirname(here)
    if args.precisions:
        variants = {name: (current, {"precision": name}, {}) for name in args.precisions}
    elif args.envs:
        variants = {name: (current, {}, dict([name.split("=", 1)])) for name in args.envs}
    else:
        variants = {"baseline": (os.path.abspath(args.baseline), {}, {}),
                    "current": (current, {}, {})}
    first, last = list(variants)[0], list(variants)[-1]
    rows = []
    for name in args.estimators:
        samples = {key: [] for key in variants}
        for _ in range(args.repeats):
            for key, (root, extra, env) in variants.items():
                child = EPOCH_CHILD.format(bench=here, name=name, fashion=args.fashion,
                                           params={**EPOCH_PARAMS[name], **extra})
                environment = {**os.environ, "PYTHONPATH": root, **env}
                out = subprocess.run([sys.executable, "-c", child], env=environment,
                                     capture_output=True, text=True, check=True, cwd=root)
                samples[key].append(json.loads(out.stdout.strip().splitlines()[-1]))
        same_labels = len({s["labels"] for values in samples.values() for s in values}) == 1
        for stage in samples[last][0]["stages"]:
            medians = {key: [float(np.median([s["stages"][stage][i] for s in values
                                              if stage in s["stages"]] or [np.nan]))
                             for i in (0, 1)]
                       for key, values in samples.items()}
            (old, old_cpu), (new, new_cpu) = medians[first], medians[last]
            rows.append({"estimator": name, "stage": stage,
                         **{f"{k}_s": v[0] for k, v in medians.items()},
                         **{f"{k}_cpu_s": v[1] for k, v in medians.items()},
                         "speedup": old / new, "cpu_speedup": old_cpu / new_cpu,
                         "same_labels": same_labels})
            print(f"{name:16s} {stage:18s} {first} {old:7.2f} s ({old_cpu:6.2f} CPU)  "
                  f"{last} {new:7.2f} s ({new_cpu:6.2f} CPU)  x{old / new:.2f} "
                  f"(CPU x{old_cpu / new_cpu:.2f})  same labels: {same_labels}", flush=True)
    what = "_precision" if args.precisions else "_envs" if args.envs else ""
    data = f"_fashion{args.fashion}" if args.fashion else ""
    save(f"epochs{what}{data}_t{torch.get_num_threads()}{args.tag}",
         {"variants": {k: {"params": v[1], "env": v[2]} for k, v in variants.items()},
          "baseline": args.baseline, "fashion": args.fashion, "rows": rows})


def checkpoint(args):
    """What a checkpoint write costs: each estimator's defaults (the epochs cut as in ``epochs``;
    ``--fashion N``: on N Fashion-MNIST training images instead of the digits) with
    ``checkpoint`` set and a write after every epoch; the seconds of each write (capturing the
    state and writing the file), the file's size and the seconds of an epoch. With the default
    interval (one write a minute at most) a write costs at most its seconds per minute."""
    import os
    import tempfile

    from _common import fashion_mnist_subset

    from skdeepcluster import checkpoint as module

    module.CHECKPOINT_INTERVAL = 0.0
    writes = []
    capture, write = module.Checkpoint._capture_stage, module.Checkpoint._write

    def timed_capture(self, trainer, stage):
        started = time.perf_counter()
        state = capture(self, trainer, stage)
        writes.append({"stage": stage.name, "capture": time.perf_counter() - started})
        return state

    def timed_write(self):
        started = time.perf_counter()
        write(self)
        writes[-1].update(write=time.perf_counter() - started,
                          megabytes=os.path.getsize(self.path) / 2**20)

    module.Checkpoint._capture_stage, module.Checkpoint._write = timed_capture, timed_write
    rows = []
    for name in args.estimators:
        if args.fashion:
            images, _ = fashion_mnist_subset(args.fashion)
            X = (images.reshape(len(images), -1) / np.float32(255) if name == "TEMIClusterer"
                 else images)
        else:
            X = digits_for(name)[0]
        writes.clear()
        with tempfile.TemporaryDirectory() as directory:
            model = getattr(skdeepcluster, name)(
                n_clusters=10, random_state=0, checkpoint=os.path.join(directory, "fit.ckpt"),
                **EPOCH_PARAMS[name],
            ).fit(X)
        for stage in dict.fromkeys(entry["stage"] for entry in writes):
            mine = [w for w in writes if w["stage"] == stage]
            epoch = [e["seconds"] for e in model.history_ if e["stage"] == stage]
            row = {"estimator": name, "stage": stage, "n_samples": len(X),
                   "writes": len(mine),
                   "seconds": float(np.median([w["capture"] + w["write"] for w in mine])),
                   "megabytes": float(max(w["megabytes"] for w in mine)),
                   "epoch_seconds": float(np.median(epoch))}
            rows.append(row)
            print(f"{name:16s} {stage:12s} write {row['seconds']:.3f} s  "
                  f"{row['megabytes']:6.1f} MB  epoch {row['epoch_seconds']:.2f} s", flush=True)
    data = f"fashion{args.fashion}" if args.fashion else "digits"
    save(f"checkpoint_{data}_t{torch.get_num_threads()}{args.tag}",
         {"threads": torch.get_num_threads(), "rows": rows})


def precision(args):
    """The same configuration in float32 and in bfloat16 (accuracy and time)."""
    device = resolve_device(args.device)
    if not (native_bfloat16(device) or args.force):
        print(f"{device} computes bfloat16 by emulation (cpu flags {cpu_flags()}): a comparison "
              "would time the emulation. Skipped (--force runs it anyway).")
        return
    rows = []
    extra = overrides(args.set)
    for name in args.estimators:
        for precision_name in ("float32", "bfloat16"):
            for seed in args.seeds:
                params = {"device": args.device, **extra, "precision": precision_name}
                rows.append({**fit_once(name, params, seed), "precision": precision_name})
                save(f"precision_{args.tag}", rows)
    summarize_rows(rows)


def best_of(args):
    """What an ``n_init``-style choice by the method's own ``score`` would keep: from single
    fits already run (``defaults`` JSON files of one estimator, one row per seed), the ACC of
    the highest-score fit of every ``--n``-subset, against a fit drawn at random."""
    import itertools

    from scipy.stats import spearmanr

    rows = []
    for path in args.files:
        with open(path) as handle:
            payload = json.load(handle)
        if isinstance(payload, dict):  # bench_fashion: the thread count is the file's
            payload = [{"threads": payload["threads"], **r} for r in payload["rows"]]
        rows += [r for r in payload if r["estimator"] == args.estimator and "score" in r]
    seen, unique = set(), []
    for row in rows:  # the same seed may appear in two files (a rerun): keep it once
        key = (row["seed"], row["threads"], tuple(row.get("init_losses", ())))
        if key not in seen:
            seen.add(key)
            unique.append(row)
    acc = np.array([r["acc"] for r in unique])
    score = np.array([r["score"] for r in unique])
    spearman = float(spearmanr(acc, score).statistic)
    kept = np.array([acc[max(subset, key=lambda i: score[i])]
                     for subset in itertools.combinations(range(acc.size), args.n)])
    print(f"{args.estimator}: {acc.size} fits, ACC {acc.mean():.3f} ± {acc.std():.3f}, "
          f"Spearman(ACC, score) {spearman:.2f}")
    print(f"best of {args.n} by score over all {kept.size} subsets: ACC {kept.mean():.3f} ± "
          f"{kept.std():.3f}, lowest {kept.min():.3f}")
    for row in sorted(unique, key=lambda r: r["score"]):
        print(f"  seed {row['seed']:3d}  threads {row['threads']}  score {row['score']:.4f}  "
              f"ACC {row['acc']:.3f}")
    save(f"best_of{args.n}_{args.tag}",
         {"files": args.files, "n": args.n, "spearman": spearman,
          "fits": [{k: v for k, v in r.items() if k != "history"} for r in unique],
          "kept_acc_mean": float(kept.mean()), "kept_acc_std": float(kept.std()),
          "kept_acc_min": float(kept.min()), "n_subsets": int(kept.size)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    sub = parser.add_subparsers(dest="part", required=True)
    p = sub.add_parser("machine")
    p.add_argument("--tag", default="", help="file name suffix, e.g. _avx512bf16")
    p = sub.add_parser("heads")
    p.add_argument("--heads", type=int, default=50)
    p.add_argument("--dim", type=int, default=64, help="features (digits 64, Fashion 784)")
    p.add_argument("--batch", type=int, default=512, help="anchors per step (paper: 512)")
    p.add_argument("--steps-per-epoch", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", default="auto")
    p.add_argument("--tag", default="", help="file name suffix, e.g. _quiet")
    p = sub.add_parser("backbones")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--force", action="store_true", help="bfloat16 even where it is emulated")
    p.add_argument("--tag", default="", help="file name suffix, e.g. _guest2")
    p = sub.add_parser("blocks")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--tag", default="", help="file name suffix")
    p = sub.add_parser("embedder")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 96])
    p.add_argument("--batch", type=int, default=64, help="ImageEmbedder's default batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--transform-images", type=int, default=256)
    p = sub.add_parser("epochs")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--baseline", help="a checkout of the version to compare")
    what.add_argument("--precisions", nargs=2, metavar=("A", "B"),
                      help="this version in two precisions, e.g. float32 bfloat16")
    what.add_argument("--envs", nargs=2, metavar=("A", "B"),
                      help="this version under two environment variables KEY=VALUE, e.g. "
                      "SKDEEPCLUSTER_KEEP_FREED_MEMORY=0 SKDEEPCLUSTER_KEEP_FREED_MEMORY=1")
    p.add_argument("--fashion", type=int, default=0,
                   help="this many Fashion-MNIST training images instead of the digits")
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tag", default="", help="file name suffix, e.g. _guest2")
    for part in ("defaults", "precision"):
        p = sub.add_parser(part)
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
        p.add_argument("--tag", default="digits")
        p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                       help="parameters to set besides the defaults, e.g. n_init=10 tol=None")
        if part == "precision":
            p.add_argument("--force", action="store_true")
    p = sub.add_parser("checkpoint")
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    p.add_argument("--fashion", type=int, default=0,
                   help="this many Fashion-MNIST training images instead of the digits")
    p.add_argument("--tag", default="", help="file name suffix")
    p = sub.add_parser("best-of")
    p.add_argument("files", nargs="+", help="defaults_*.json files of single fits")
    p.add_argument("--estimator", default="SCANClusterer")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--tag", default="digits")
    args = parser.parse_args()
    {"machine": machine, "heads": heads, "backbones": backbones, "blocks": blocks, "epochs": epochs,
     "defaults": defaults, "precision": precision, "embedder": embedder,
     "best-of": best_of, "checkpoint": checkpoint}[args.part](args)


if __name__ == "__main__":
    sys.exit(main())
