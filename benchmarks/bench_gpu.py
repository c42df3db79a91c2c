"""The speed benchmarks on a CUDA GPU: run this on a machine with one.

    python benchmarks/bench_gpu.py            # everything below, ~15 minutes on an H100
    python benchmarks/bench_gpu.py --quick    # machine + TEMI heads only, ~2 minutes

It runs ``bench_speed.py`` with ``--device cuda``: the GEMM rates of float32 / bfloat16, the
TEMI step (50 heads, batch 512, d = 64 and 784, in float32 and in the precision ``"auto"``
picks, against the authors' per-head loop), the convnet steps, every estimator's defaults on
digits and the bfloat16 / float32 comparison, then ``bench_scale.py gpu-epoch``: a TEMI epoch
over 1.28 M × 768 embeddings with 50 heads. Results go to ``benchmarks/results/speed_*.json``
and ``scale_gpu_epoch_*.json`` like the CPU runs; record them in ``doc/benchmarks.rst`` with this
command.
"""

import argparse
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def run(*arguments):
    command = [sys.executable, os.path.join(HERE, "bench_speed.py"), "--device", "cuda",
               *arguments]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="machine and TEMI heads only")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device; this machine has none "
                         "(bench_speed.py measures the CPU).")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bfloat16 "
          f"{torch.cuda.is_bf16_supported(including_emulation=False)}", flush=True)
    run("machine")
    for dim in ("64", "784"):
        for precision in ("float32", "auto"):
            run("heads", "--dim", dim, "--precision", precision, "--steps-per-epoch", "10")
    if args.quick:
        return
    run("backbones")
    seeds = [str(seed) for seed in args.seeds]
    run("defaults", "--seeds", *seeds, "--tag", "digits_cuda")
    run("precision", "--seeds", *seeds, "--tag", "digits_cuda")
    command = [sys.executable, os.path.join(HERE, "bench_scale.py"), "gpu-epoch"]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
