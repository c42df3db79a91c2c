"""Offline image data: scikit-learn's digits as images, Fashion-MNIST from Debian, image folders.

Nothing here downloads: the digits ship inside scikit-learn, Fashion-MNIST comes from the Debian
package ``dataset-fashion-mnist`` and folders are the user's own files.
"""

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["load_digits_images", "load_fashion_mnist", "list_image_files", "IMAGE_EXTENSIONS"]

#: File name endings read as images (case-insensitive) by :func:`list_image_files`.
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"
)

#: Where Debian's ``dataset-fashion-mnist`` package puts its files.
FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: Class names of Fashion-MNIST, in label order.
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def load_digits_images():
    """Load scikit-learn's 1 797 handwritten digits as ``uint8`` images.

    The digits of :func:`sklearn.datasets.load_digits` hold values 0–16; they are scaled to
    0–255 so that they read as ordinary 8-bit grey images.

    Returns
    -------
    images : ndarray of shape (1797, 8, 8), dtype uint8
        Grey images in [0, 255].
    labels : ndarray of shape (1797,), dtype int64
        The digit (0–9) of each image.

    Examples
    --------
    >>> from skdeepcluster import load_digits_images
    >>> images, labels = load_digits_images()
    >>> images.shape, images.dtype, int(images.max())
    ((1797, 8, 8), dtype('uint8'), 255)
    """
    from sklearn.datasets import load_digits  # here: sklearn.datasets is slow to import

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def _read_idx(path, expected_ndim):
    """Read an IDX file (the MNIST format) of unsigned bytes into a numpy array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[0:4], "big")
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if dtype_code != 0x08 or ndim != expected_ndim:
        raise ValueError(
            f"{path} is not an IDX file of unsigned bytes with {expected_ndim} dimensions "
            f"(magic number {magic:#010x})."
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    values = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values.")
    return values.reshape(shape).copy()


def load_fashion_mnist(subset="train", *, path=FASHION_MNIST_PATH):
    """Load Fashion-MNIST from the files of Debian's ``dataset-fashion-mnist`` package.

    Parameters
    ----------
    subset : {"train", "test"}, default="train"
        The 60 000 training images or the 10 000 test images.
    path : str or path-like, default="/usr/share/datasets/fashion-mnist"
        Folder holding ``train-images-idx3-ubyte.gz`` and the other IDX files.

    Returns
    -------
    images : ndarray of shape (n, 28, 28), dtype uint8
        Grey images in [0, 255].
    labels : ndarray of shape (n,), dtype int64
        Class of each image (0–9, names in ``FASHION_MNIST_CLASSES``).

    Raises
    ------
    FileNotFoundError
        When the files are missing, with the command that installs them.

    Notes
    -----
    Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
    Learning Algorithms", 2017. Install the files with
    ``apt-get install dataset-fashion-mnist``.
    """
    if subset not in _FASHION_MNIST_FILES:
        raise ValueError(f"subset must be 'train' or 'test', got {subset!r}.")
    image_name, label_name = _FASHION_MNIST_FILES[subset]
    image_path, label_path = Path(path) / image_name, Path(path) / label_name
    missing = [str(p) for p in (image_path, label_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass path= to the "
            "folder holding the IDX .gz files."
        )
    images = _read_idx(image_path, 3)
    labels = _read_idx(label_path, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{image_path} holds {images.shape[0]} images but {label_path} "
            f"{labels.shape[0]} labels."
        )
    return images, labels


#: What Pillow raises for a file it cannot decode as an image.
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError)


def open_image_rgb(path):
    """One image file as an RGB Pillow image, turned upright by its EXIF orientation tag (a
    camera's portrait photo stands upright). Raises one of :data:`UNREADABLE_IMAGE_ERRORS` for
    a file Pillow cannot decode."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _walk_files(folder):
    """Every regular file under ``folder`` (recursive, hidden names skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, name) for name in files if not name.startswith("."))
    return sorted(found)


def list_image_files(folder, *, extensions=IMAGE_EXTENSIONS):
    """List the image files under ``folder``, recursively, in a stable sorted order.

    Only the file names are looked at (by extension, case-insensitive); whether a file can
    really be decoded is checked when it is read. Hidden files and folders are skipped.

    Parameters
    ----------
    folder : str or path-like
        The folder to search.
    extensions : tuple of str, default=IMAGE_EXTENSIONS
        Accepted file name endings, with their dot.

    Returns
    -------
    paths : list of str
        Paths of the image files, sorted.

    Raises
    ------
    FileNotFoundError
        When ``folder`` does not exist. ``NotADirectoryError`` when it is a file.
    """
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"No such folder: {folder!r}.")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder!r} is not a folder.")
    extensions = tuple(e.lower() for e in extensions)
    return [p for p in _walk_files(folder) if p.lower().endswith(extensions)]
