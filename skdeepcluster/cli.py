"""The ``skdeepcluster`` command line (also ``python -m skdeepcluster``).

Subcommands:

* ``demo``: cluster scikit-learn's digits with TEMI, compare with k-means, draw the clusters.
* ``cluster PATH``: cluster a folder of images; write ``labels.csv`` and one contact sheet per
  cluster.

Everything that can be checked is checked before a network is loaded: the options (a bad value
is a usage error of its subcommand), the folder, the number of image files against
``--n-clusters``, the output folder, the device and the method's parameters. Results are written
only once training is over. Ctrl-C stops the command with exit status 130 and a line saying what
was written: nothing when it came during embedding or training.

``--help`` imports neither torch nor scikit-learn (they are imported once a command runs).
"""

import argparse
import csv
import os
import sys
import time
import warnings

__all__ = ["main", "build_parser", "make_estimator", "CLI_TEMI_PARAMS", "METHODS"]

#: TEMI settings used by the command line (``demo`` and ``cluster``): the defaults with 4 heads
#: (12x less compute than 50) and batches of 128, so that a small data set still gets many
#: optimiser steps within the paper's 200 epochs. Training ends when the stopping rule says so
#: (``tol``), at the latest after ``max_epochs``. The one place to tune them.
CLI_TEMI_PARAMS = {"n_heads": 4, "batch_size": 128}

#: ``--method`` name → the estimator class exported by :mod:`skdeepcluster`. A method whose
#: class is not in this installation is reported as unavailable.
METHODS = {
    "temi": "TEMIClusterer",
    "scan": "SCANClusterer",
    "deepcluster": "DeepClusterer",
    "mmdc": "MMDCClusterer",
    "adc": "ADCClusterer",
}

#: Images per contact sheet (the most confident of the cluster).
CONTACT_SHEET_IMAGES = 64
CONTACT_SHEET_THUMBNAIL = 96


class CommandError(Exception):
    """A problem with the user's input, reported as one line and a non-zero exit status."""


def make_estimator(method, *, n_clusters, random_state=None, device="auto", verbose=1,
                   n_heads=None, epochs=None, precision="auto"):
    """Build the estimator named ``method`` with the command line's settings.

    Parameters
    ----------
    method : str
        A key of :data:`METHODS`.
    n_clusters : int
        Number of clusters.
    random_state : int or None, default=None
        Seed.
    device : str, default="auto"
        Torch device.
    verbose : int, default=1
        Progress printing.
    n_heads, epochs : int or None, default=None
        Overrides of ``n_heads`` and ``max_epochs`` where the estimator has them.
    precision : str, default="auto"
        The estimator's ``precision``.

    Returns
    -------
    estimator : estimator instance
        Unfitted.

    Raises
    ------
    CommandError
        When the method is unknown or its class is not in this installation.
    """
    import skdeepcluster

    if method not in METHODS:
        raise CommandError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    cls = getattr(skdeepcluster, METHODS[method], None)
    if cls is None:
        available = [m for m, name in METHODS.items() if hasattr(skdeepcluster, name)]
        raise CommandError(
            f"method {method!r} needs skdeepcluster.{METHODS[method]}, which this installation "
            f"does not have; available: {', '.join(available)}."
        )
    estimator = cls()
    names = estimator.get_params(deep=False)
    params = {"n_clusters": n_clusters, "random_state": random_state, "device": device,
              "precision": precision, "verbose": verbose}
    if method == "temi":
        params.update(CLI_TEMI_PARAMS)
    overrides = {"n_heads": n_heads, "max_epochs": epochs}
    params.update({k: v for k, v in overrides.items() if v is not None})
    estimator.set_params(**{k: v for k, v in params.items() if k in names})
    return estimator


# ---------------------------------------------------------------------- demo
def _scores(y_true, y_pred):
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from .metrics import clustering_accuracy_score

    return (
        clustering_accuracy_score(y_true, y_pred),
        normalized_mutual_info_score(y_true, y_pred),
        adjusted_rand_score(y_true, y_pred),
    )


def _print_table(rows):
    print(f"{'method':<10} {'ACC':>6} {'NMI':>6} {'ARI':>6} {'seconds':>8}")
    for name, (acc, nmi, ari), seconds in rows:
        print(f"{name:<10} {acc:6.3f} {nmi:6.3f} {ari:6.3f} {seconds:8.1f}")


def _run_demo(args, written):
    import numpy as np
    from sklearn.cluster import KMeans

    from .datasets import load_digits_images

    model = make_estimator(args.method, n_clusters=10, random_state=args.seed, device=args.device,
                           verbose=1, n_heads=args.heads, epochs=args.epochs,
                           precision=args.precision)
    _check_estimator_params(model)
    images, y = load_digits_images()
    X = images.reshape(len(images), -1).astype(np.float64) / 255.0  # = pixels / 16
    print(f"Clustering the {len(X)} digits of scikit-learn (8x8 pixels, 10 classes).", flush=True)
    started = time.perf_counter()
    model.fit(X)
    model_seconds = time.perf_counter() - started
    started = time.perf_counter()
    kmeans = KMeans(n_clusters=10, n_init=10, random_state=args.seed).fit(X)
    kmeans_seconds = time.perf_counter() - started
    print()
    _print_table([
        (type(model).__name__.replace("Clusterer", ""), _scores(y, model.labels_), model_seconds),
        ("KMeans", _scores(y, kmeans.labels_), kmeans_seconds),
    ])
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        print("\nNo picture: matplotlib is missing (pip install 'skdeepcluster[pictures]').")
        return 0
    import matplotlib.pyplot as plt

    from .display import ClusterGridDisplay

    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, "demo_clusters.png")
    display = ClusterGridDisplay.from_estimator(model, X, images=images, n_per_cluster=12)
    written.append(path)
    display.figure_.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(display.figure_)
    print(f"\nPicture of the clusters (most confident digits first): {os.path.abspath(path)}")
    return 0


# ---------------------------------------------------------------------- cluster
def _contact_sheet(paths, out_path, *, columns=8, thumbnail=CONTACT_SHEET_THUMBNAIL):
    """Save the images ``paths`` as a grid of ``thumbnail``-pixel cells (Pillow only)."""
    from .display import contact_sheet

    contact_sheet(paths, columns=columns, cell_size=thumbnail).save(out_path)


def _find_images(args):
    """The image files of ``args.path`` and the other files (skipped); checked against
    ``--n-clusters`` before anything is embedded."""
    from .datasets import IMAGE_EXTENSIONS, _walk_files, list_image_files

    folder = args.path
    if not os.path.exists(folder):
        raise CommandError(f"no such folder: {folder!r}.")
    if not os.path.isdir(folder):
        raise CommandError(f"{folder!r} is not a folder: give a folder of images.")
    images = list_image_files(folder)
    image_set = set(images)
    skipped = [(p, "not an image file name") for p in _walk_files(folder) if p not in image_set]
    if not images:
        raise CommandError(
            f"no image files in {folder!r} (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            f"recursively; {len(skipped)} other file(s))."
        )
    if len(images) < args.n_clusters:
        raise CommandError(
            f"only {len(images)} image file(s) in {folder!r} for --n-clusters="
            f"{args.n_clusters}: need at least one image per cluster."
        )
    return images, skipped


def _check_output_folder(output):
    """Fail now, not after training, when ``--output`` cannot be created or written to.

    Nothing is created here: the folder is made when the results are written.
    """
    if os.path.exists(output):
        if not os.path.isdir(output):
            raise CommandError(f"--output {output!r} exists and is not a folder.")
        if not os.access(output, os.W_OK | os.X_OK):
            raise CommandError(f"--output {output!r} is not writable.")
        return
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):  # the nearest existing ancestor will hold the new folders
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CommandError(f"cannot create --output {output!r}: {parent!r} is not a folder.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CommandError(f"cannot create --output {output!r}: {parent!r} is not writable.")


def _check_estimator_params(estimator):
    """The estimator's own parameter validation, before any data is loaded or embedded."""
    try:
        estimator._validate_params()
    except ValueError as error:  # sklearn's InvalidParameterError is a ValueError
        raise CommandError(str(error)) from error


def _run_cluster(args, written, images, skipped):
    import numpy as np

    from .embedders import ImageEmbedder

    folder = args.path
    estimator = make_estimator(args.method, n_clusters=args.n_clusters, random_state=args.seed,
                               device=args.device, verbose=1, n_heads=args.heads,
                               epochs=args.epochs, precision=args.precision)
    _check_estimator_params(estimator)
    embedder = ImageEmbedder(args.embedder, image_size=args.image_size, batch_size=args.batch_size,
                             device=args.device, precision=args.precision, verbose=1)
    _check_estimator_params(embedder)
    print(f"Found {len(images)} image file(s) in {folder}.", flush=True)
    try:
        embedder.fit()
    except (ImportError, ValueError) as error:  # missing extra, unknown backbone
        raise CommandError(str(error)) from error
    print(f"Embedding with {args.embedder!r} ...", flush=True)
    try:
        X, kept, errors = embedder.embed_files(images, skip_errors=True)
    except ValueError as error:  # none of the files could be read
        raise CommandError(str(error)) from error
    skipped.extend(errors)
    paths = [images[i] for i in kept]
    if len(paths) < args.n_clusters:
        raise CommandError(
            f"only {len(paths)} readable image(s) for --n-clusters={args.n_clusters}: need at "
            "least one image per cluster."
        )

    print(f"Clustering {len(paths)} images into {args.n_clusters} clusters with "
          f"{type(estimator).__name__} ...", flush=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(X)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    labels = np.asarray(estimator.labels_)
    if hasattr(estimator, "predict_proba"):
        confidence = estimator.predict_proba(X).max(axis=1)
    else:
        confidence = np.full(len(paths), np.nan)

    os.makedirs(args.output, exist_ok=True)
    csv_path = os.path.join(args.output, "labels.csv")
    written.append(csv_path)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "cluster", "confidence"])
        for path, label, conf in zip(paths, labels, confidence, strict=True):
            writer.writerow([os.path.relpath(path, folder), int(label), f"{conf:.4f}"])
    width = len(str(args.n_clusters - 1))
    print(f"\n{'cluster':>7} {'images':>7}  contact sheet")
    for cluster in range(args.n_clusters):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            print(f"{cluster:>7} {0:>7}  (empty)")
            continue
        order = members[np.argsort(-np.nan_to_num(confidence[members], nan=0.0), kind="stable")]
        sheet_path = os.path.join(args.output, f"cluster_{cluster:0{width}d}.png")
        written.append(sheet_path)
        _contact_sheet([paths[i] for i in order[:CONTACT_SHEET_IMAGES]], sheet_path)
        print(f"{cluster:>7} {members.size:>7}  {sheet_path}")
    print(f"\nLabels of {len(paths)} images: {csv_path}")
    if skipped:
        print(f"\nSkipped {len(skipped)} file(s):")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    return 0


# ---------------------------------------------------------------------- parser
def _int_at_least(minimum):
    """argparse ``type``: an int >= ``minimum``. A bad value is reported by the subcommand's
    parser (its usage and ``skdeepcluster cluster: error: ...``)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def _add_training_options(parser, *, default_method="temi"):
    parser.add_argument("--method", default=default_method, choices=sorted(METHODS),
                        help="clustering estimator (default: %(default)s)")
    parser.add_argument("--heads", type=_int_at_least(1), default=None,
                        help=f"clustering heads (default: {CLI_TEMI_PARAMS['n_heads']} for TEMI)")
    parser.add_argument("--epochs", type=_int_at_least(1), default=None,
                        help="max_epochs, the cap on training epochs (default: the "
                             "estimator's; its stopping rule may end training earlier)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto, cpu, cuda (default: auto)")
    parser.add_argument("--precision", default="auto",
                        # engine.PRECISIONS, not imported here: --help stays fast
                        choices=["auto", "float32", "bfloat16", "float16"],
                        help="arithmetic: auto is bfloat16 where the device computes it "
                             "natively, else float32; float16 needs CUDA (default: auto)")
    parser.add_argument("--output", default="skdeepcluster_output",
                        help="folder for the results (default: %(default)s)")


def _check_device_and_precision(device, precision):
    from .base import resolve_device
    from .engine import resolve_precision

    try:
        resolved = resolve_device(device)
    except (ValueError, RuntimeError) as error:
        raise CommandError(f"--device {device}: {error}") from error
    try:
        resolve_precision(precision, resolved)
    except ValueError as error:
        raise CommandError(f"--precision {precision}: {error}") from error


def build_parser():
    """The :mod:`argparse` parser of the ``skdeepcluster`` command."""
    parser = argparse.ArgumentParser(
        prog="skdeepcluster",
        description="Deep clustering with scikit-learn manners.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="cluster scikit-learn's digits and compare with k-means",
        description="Cluster the 1797 digits of scikit-learn, print ACC/NMI/ARI next to "
                    "k-means and save a picture of the clusters.",
    )
    _add_training_options(demo)
    cluster = commands.add_parser(
        "cluster", help="cluster a folder of images",
        description="Cluster the images of a folder (recursively). Writes labels.csv (file, "
                    "cluster, confidence) and one contact sheet per cluster into --output.",
    )
    cluster.add_argument("path", help="folder of images")
    cluster.add_argument("--n-clusters", type=_int_at_least(2), default=10,
                         help="number of clusters (default: 10)")
    cluster.add_argument("--embedder", default="efficientnet-lite0",
                         help="efficientnet-lite0 (pretrained, default), pixels, or a torchvision "
                              "model name")
    cluster.add_argument("--image-size", type=_int_at_least(1), default=None,
                         help="side of the images given to the embedder (default: its own)")
    cluster.add_argument("--batch-size", type=_int_at_least(1), default=64,
                         help="images per embedding batch (default: 64)")
    _add_training_options(cluster)
    return parser


def main(argv=None):
    """Run the command line; return the exit status.

    Parameters
    ----------
    argv : list of str or None, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 when the input cannot be clustered, 2 for a usage error, 130 when
        interrupted (Ctrl-C), after a line on standard error saying which files, if any, were
        written.
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # before any heavy import: --help and usage errors are fast
    written = []  # output files, each added as it is started
    try:
        # The cheap checks first (files and folders), then the device and precision (imports
        # torch).
        found = _find_images(args) if args.command == "cluster" else None
        _check_output_folder(args.output)
        _check_device_and_precision(args.device, args.precision)
        if args.command == "demo":
            return _run_demo(args, written)
        return _run_cluster(args, written, *found)
    except CommandError as error:
        print(f"skdeepcluster: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        if written:
            print(f"skdeepcluster: interrupted while writing the results; {len(written)} "
                  "file(s) written, the last one possibly incomplete:", file=sys.stderr)
            for path in written:
                print(f"  {path}", file=sys.stderr)
        else:
            print("skdeepcluster: interrupted; nothing was written.", file=sys.stderr)
        return 130
