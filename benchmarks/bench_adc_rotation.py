"""ADC's rotation angle against the images' resolution: is ±20° better than the authors' ±10°
because of what the images show, or because of how many pixels they have?

``ADCClusterer(n_clusters=10, random_state=seed, rotation=R)`` (defaults otherwise, plus any
``--set`` overrides) on the digits or on Fashion-MNIST, each resized to ``--size`` px a side
(area averaging down, bilinear up; the native sizes are 8 and 28). A ±R° turn moves a pixel at
the image's edge by about ``side / 2 · sin R``: 0.7 px at ±10° on 8 px, 2.4 px on 28 px, so the
same angle is a much weaker augmentation on small images. Crossing the two data sets with the
two sizes separates the two explanations.

Digits: fitted and scored on all 1 797 images. Fashion-MNIST: fitted on ``--train-n`` training
images (the seeded subset of ``bench_fashion.py --train-n``), scored on the 10 000 test images
(``predict``) and on the training images. Each row also has the ACC of ADC's k-means
initialisation of the centroids on the training images (``kmeans_labels_``), which decides much
of the result on the digits. One JSON file per run, ``benchmarks/results/adc_rotation_<tag>.json``,
rewritten after every fit.

    OMP_NUM_THREADS=1 python benchmarks/bench_adc_rotation.py --data fashion --size 8 \\
        --train-n 10000 --seeds 0 1 2 --set max_epochs=2 --tag fashion8_10k_e2_t1
"""

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from _common import digits_images, fashion_mnist, fashion_mnist_subset, overrides, save, scores

import skdeepcluster
from skdeepcluster import ADCClusterer


def resize(images, side):
    """uint8 images (n, H, W) resized to (n, side, side): area averaging when shrinking,
    bilinear interpolation when enlarging; uint8 again."""
    if images.shape[1] == side:
        return images
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1)  # a copy: the input is read-only
    mode = "area" if side < images.shape[1] else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    x = F.interpolate(x, size=(side, side), mode=mode, **kwargs)
    return x.round().clamp(0, 255).to(torch.uint8).squeeze(1).numpy()


def load(data, side, train_n):
    """(train images, train labels, test images, test labels); no test set for the digits."""
    if data == "digits":
        images, labels = digits_images()
        return resize(images, side), labels, None, None
    train, y_train = fashion_mnist_subset(train_n, in_file_order=True)  # as bench_fashion.py
    test, y_test = fashion_mnist("test")
    return resize(train, side), y_train, resize(test, side), y_test


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("digits", "fashion"), required=True)
    parser.add_argument("--size", type=int, required=True, help="image side after resizing")
    parser.add_argument("--rotations", type=float, nargs="+", default=(10.0, 20.0))
    parser.add_argument("--seeds", type=int, nargs="+", default=(0, 1, 2))
    parser.add_argument("--train-n", type=int, default=10_000,
                        help="Fashion-MNIST training images (a seeded subset)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="parameters to set besides the defaults, e.g. max_epochs=2")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()

    X, y, X_test, y_test = load(args.data, args.size, args.train_n)
    extra = overrides(args.set)
    payload = {
        "data": args.data, "size": args.size, "n_train": int(len(y)), "set": extra,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "skdeepcluster": skdeepcluster.__version__, "machine": platform.processor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "rows": [],
    }
    for seed in args.seeds:
        for rotation in args.rotations:
            model = ADCClusterer(n_clusters=10, random_state=seed, rotation=rotation, **extra)
            wall, cpu = time.perf_counter(), time.process_time()
            model.fit(X)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = {"seed": seed, "rotation": rotation, "wall": wall, "cpu": cpu,
                   "epochs": int(model.n_iter_), "precision": str(model.precision_),
                   "kmeans_init_train_acc": scores(y, model.kmeans_labels_)["acc"],
                   "train": scores(y, model.labels_)}
            if X_test is not None:
                row["test"] = scores(y_test, model.predict(X_test))
            payload["rows"].append(row)
            shown = row.get("test", row["train"])
            print(f"{args.data} {args.size}px seed {seed} rotation {rotation:g}: "
                  f"k-means init {row['kmeans_init_train_acc']:.3f}, "
                  f"ACC {shown['acc']:.3f} ({'test' if X_test is not None else 'train'}), "
                  f"{wall:.0f} s wall / {cpu:.0f} CPU s", flush=True)
            save(f"adc_rotation_{args.tag}", payload)
    by_rotation = {}
    for row in payload["rows"]:
        by_rotation.setdefault(row["rotation"], []).append(row.get("test", row["train"])["acc"])
    for rotation, accs in by_rotation.items():
        print(f"rotation {rotation:g}: ACC {np.mean(accs):.3f} ± {np.std(accs):.3f} "
              f"({' '.join(f'{a:.3f}' for a in accs)})")


if __name__ == "__main__":
    main()
