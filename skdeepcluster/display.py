"""Pictures of clusterings, in the manner of scikit-learn's ``*Display`` classes.

* :class:`ClusterGridDisplay`: the most confident images of each cluster, one row per cluster.
* :class:`ClusterConfusionDisplay`: classes against clusters, the clusters ordered by the class
  they are matched to (Hungarian or majority matching).
* :func:`contact_sheet`: image files as a grid of equal cells, with Pillow only (the command
  line's ``cluster_<k>.png``).

matplotlib is imported only when a picture is drawn: ``pip install 'skdeepcluster[pictures]'``.
"""

import numpy as np
from sklearn.metrics.cluster import contingency_matrix

from .data import check_images, is_image_array
from .datasets import UNREADABLE_IMAGE_ERRORS, open_image_rgb
from .metrics import cluster_to_class_mapping

__all__ = ["ClusterGridDisplay", "ClusterConfusionDisplay", "contact_sheet"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "Drawing clusters needs matplotlib: pip install 'skdeepcluster[pictures]'."
        ) from error
    return plt


def _axes(ax):
    plt = _pyplot()
    if ax is None:
        figure, ax = plt.subplots()
    return ax.figure, ax


def _image_rows(images):
    """(n, C, H, W) view of an image array, checked."""
    if not is_image_array(images):
        raise ValueError(
            f"images must have shape (n, H, W), (n, H, W, C) or (n, C, H, W); got "
            f"{np.shape(images)}."
        )
    return check_images(images, name="images")


def _as_float_hwc(image):
    """One (C, H, W) image → (H, W, C) float in [0, 1] (a copy)."""
    image = np.asarray(image)
    scaled = image.astype(np.float64) / (255.0 if image.dtype.kind in "ui" else 1.0)
    return np.clip(scaled, 0.0, 1.0).transpose(1, 2, 0)


def _fit_to_cell(image, cell_size):
    """A Pillow image scaled, aspect kept, so that its longer side is ``cell_size``.

    Small images are enlarged, not left small in the middle of the cell. An image at most half
    the cell is enlarged by an integer factor with nearest-neighbour first, so its pixels stay
    sharp squares instead of a blur; the last step (a factor below 2, or any reduction) uses
    Lanczos.
    """
    from PIL import Image

    longest = max(image.width, image.height)
    if longest == cell_size:
        return image
    if 2 * longest <= cell_size:
        factor = cell_size // longest
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        longest *= factor
    scale = cell_size / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.LANCZOS)


def contact_sheet(paths, *, columns=8, cell_size=96, padding=4, background="white"):
    """Draw image files as a grid of ``cell_size``-pixel cells (Pillow only, no matplotlib).

    Each image is oriented by its EXIF tag, converted to RGB and scaled, aspect kept, so that
    its longer side fills the cell: large images are reduced (Lanczos), small ones enlarged
    (nearest-neighbour by an integer factor when at most half the cell, so pixels stay sharp,
    then Lanczos). A file that cannot be read leaves its cell blank.

    Parameters
    ----------
    paths : list of str or path-like
        The image files, in the order of the cells (row by row).
    columns : int, default=8
        Cells per row.
    cell_size : int, default=96
        Side of a cell in pixels.
    padding : int, default=4
        Background pixels around and between the cells.
    background : str or tuple, default="white"
        Colour of the background (a Pillow colour).

    Returns
    -------
    sheet : PIL.Image.Image
        The RGB picture; ``sheet.save(path)`` writes it.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from skdeepcluster.display import contact_sheet
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = os.path.join(folder.name, "tiny.png")
    >>> Image.new("RGB", (25, 25), "red").save(path)
    >>> sheet = contact_sheet([path], columns=1, cell_size=96, padding=0)
    >>> sheet.size, sheet.getpixel((1, 1)), sheet.getpixel((94, 94))
    ((96, 96), (255, 0, 0), (255, 0, 0))
    >>> folder.cleanup()
    """
    from PIL import Image

    if int(columns) < 1 or int(cell_size) < 1 or int(padding) < 0:
        raise ValueError(
            f"columns and cell_size must be at least 1 and padding at least 0; got "
            f"columns={columns}, cell_size={cell_size}, padding={padding}."
        )
    step = cell_size + padding
    rows = max(1, -(-len(paths) // columns))
    sheet = Image.new("RGB", (columns * step + padding, rows * step + padding), background)
    for position, path in enumerate(paths):
        try:
            image = _fit_to_cell(open_image_rgb(path), cell_size)
        except UNREADABLE_IMAGE_ERRORS:  # unreadable (or changed) file: a blank cell
            continue
        row, column = divmod(position, columns)
        left = padding + column * step + (cell_size - image.width) // 2
        top = padding + row * step + (cell_size - image.height) // 2
        sheet.paste(image, (left, top))
    return sheet


class ClusterGridDisplay:
    """Grid of the most confident images of each cluster.

    One row per non-empty cluster, its images sorted by decreasing confidence (the largest
    cluster probability of ``predict_proba``), so that a row shows what the cluster stands for.
    Create it with :meth:`from_estimator` or :meth:`from_predictions`; the constructor only
    stores the data.

    Parameters
    ----------
    images : array of shape (n, H, W), (n, H, W, C) or (n, C, H, W)
        The images, ``uint8`` in [0, 255] or float in [0, 1]. Not modified.
    labels : array-like of shape (n,)
        Cluster of each image.
    confidence : array-like of shape (n,) or None, default=None
        Confidence of each assignment; None keeps the input order within a cluster.
    n_per_cluster : int, default=8
        Images shown per cluster.

    Attributes
    ----------
    selected_ : dict
        ``{cluster: indices of the images shown}``.
    image_ : matplotlib.image.AxesImage
        The drawn grid.
    ax_ : matplotlib.axes.Axes
        Axes with the grid.
    figure_ : matplotlib.figure.Figure
        Figure holding the axes.

    See Also
    --------
    ClusterConfusionDisplay : classes against clusters when labels are known.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from skdeepcluster import ClusterGridDisplay
    >>> images = np.random.RandomState(0).randint(0, 255, (6, 8, 8)).astype(np.uint8)
    >>> display = ClusterGridDisplay.from_predictions(images, [0, 0, 1, 1, 2, 2])
    >>> sorted(display.selected_)
    [0, 1, 2]
    """

    def __init__(self, images, labels, confidence=None, *, n_per_cluster=8):
        self.images = images
        self.labels = labels
        self.confidence = confidence
        self.n_per_cluster = n_per_cluster

    def _select(self, n_images):
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != n_images:
            raise ValueError(
                f"labels must be 1-d with one entry per image ({n_images}); got shape "
                f"{labels.shape}."
            )
        if self.confidence is None:
            confidence = np.zeros(n_images)
        else:
            confidence = np.asarray(self.confidence, dtype=np.float64)
            if confidence.shape != labels.shape:
                raise ValueError(
                    f"confidence must have shape {labels.shape}, got {confidence.shape}."
                )
        if int(self.n_per_cluster) < 1:
            raise ValueError(f"n_per_cluster must be at least 1, got {self.n_per_cluster}.")
        selected = {}
        for cluster in np.unique(labels):
            members = np.flatnonzero(labels == cluster)
            order = np.argsort(-confidence[members], kind="stable")
            selected[cluster.item()] = members[order[: int(self.n_per_cluster)]]
        return selected

    def plot(self, *, ax=None, cmap="gray", pad=1):
        """Draw the grid.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; None creates a figure.
        cmap : str, default="gray"
            Colour map of grey images.
        pad : int, default=1
            White pixels between images.

        Returns
        -------
        display : ClusterGridDisplay
            Self, with ``figure_``, ``ax_``, ``image_`` and ``selected_`` set.
        """
        rows_view = _image_rows(self.images)
        n, channels, height, width = rows_view.shape
        selected = self._select(n)
        if ax is None:
            plt = _pyplot()
            figure, ax = plt.subplots(
                figsize=(min(1 + 0.6 * self.n_per_cluster, 16), min(1 + 0.6 * len(selected), 20))
            )
        else:
            figure = ax.figure
        cell_h, cell_w = height + pad, width + pad
        mosaic = np.ones((len(selected) * cell_h + pad, int(self.n_per_cluster) * cell_w + pad,
                          channels))
        for row, indices in enumerate(selected.values()):
            for column, index in enumerate(indices):
                top, left = pad + row * cell_h, pad + column * cell_w
                mosaic[top : top + height, left : left + width] = _as_float_hwc(rows_view[index])
        labels = np.asarray(self.labels)
        if channels == 1:
            self.image_ = ax.imshow(mosaic[..., 0], cmap=cmap, vmin=0.0, vmax=1.0)
        else:
            self.image_ = ax.imshow(mosaic)
        ax.set_xticks([])
        ax.set_yticks(pad + np.arange(len(selected)) * cell_h + height / 2)
        ax.set_yticklabels([f"{c} (n={np.sum(labels == c)})" for c in selected])
        ax.tick_params(axis="y", length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel("cluster")
        self.selected_ = selected
        self.figure_, self.ax_ = figure, ax
        return self

    @classmethod
    def from_predictions(cls, images, labels, *, confidence=None, n_per_cluster=8, ax=None,
                         cmap="gray"):
        """Draw the grid from cluster labels (and optional confidences).

        Parameters
        ----------
        images : array of shape (n, H, W), (n, H, W, C) or (n, C, H, W)
            The images.
        labels : array-like of shape (n,)
            Cluster of each image.
        confidence : array-like of shape (n,) or None, default=None
            Confidence of each assignment (e.g. ``predict_proba(X).max(axis=1)``).
        n_per_cluster : int, default=8
            Images shown per cluster.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        cmap : str, default="gray"
            Colour map of grey images.

        Returns
        -------
        display : ClusterGridDisplay
        """
        return cls(images, labels, confidence, n_per_cluster=n_per_cluster).plot(ax=ax, cmap=cmap)

    @classmethod
    def from_estimator(cls, estimator, X, *, images=None, n_per_cluster=8, ax=None, cmap="gray"):
        """Draw the grid of a fitted clusterer's assignment of X.

        Parameters
        ----------
        estimator : fitted estimator with ``predict_proba``
            A clusterer or a Pipeline ending with one.
        X : array-like
            Its input (features or images).
        images : image array or None, default=None
            The pictures of the samples of X; None uses X itself, which must then be images.
        n_per_cluster : int, default=8
            Images shown per cluster.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        cmap : str, default="gray"
            Colour map of grey images.

        Returns
        -------
        display : ClusterGridDisplay
        """
        if images is None:
            if not is_image_array(X):
                raise ValueError(
                    "X holds features, not images: pass images= (the picture of each sample)."
                )
            images = X
        if not hasattr(estimator, "predict_proba"):
            raise TypeError(
                f"{type(estimator).__name__} has no predict_proba: use from_predictions with "
                "its labels."
            )
        proba = np.asarray(estimator.predict_proba(X))
        if len(images) != proba.shape[0]:
            raise ValueError(
                f"images holds {len(images)} images but X {proba.shape[0]} samples."
            )
        return cls.from_predictions(
            images, proba.argmax(axis=1), confidence=proba.max(axis=1),
            n_per_cluster=n_per_cluster, ax=ax, cmap=cmap,
        )


class ClusterConfusionDisplay:
    """Confusion matrix of classes against clusters after matching clusters to classes.

    Rows are the true classes; columns are the clusters, ordered by the class they are matched
    to (:func:`~skdeepcluster.cluster_to_class_mapping`), unmatched clusters last. With the
    Hungarian matching and as many clusters as classes, the diagonal holds the correctly
    clustered samples and its sum over the total is the clustering accuracy.

    Parameters
    ----------
    contingency : ndarray of shape (n_classes, n_clusters)
        Sample counts, columns in display order.
    classes : ndarray of shape (n_classes,)
        Class of each row.
    clusters : ndarray of shape (n_clusters,)
        Cluster of each column.
    mapping : dict
        ``{cluster: class}`` of the matching.

    Attributes
    ----------
    im_ : matplotlib.image.AxesImage
        The matrix.
    text_ : ndarray of matplotlib Text or None
        The counts written in the cells (None when ``include_values=False``).
    ax_ : matplotlib.axes.Axes
    figure_ : matplotlib.figure.Figure

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from skdeepcluster import ClusterConfusionDisplay
    >>> display = ClusterConfusionDisplay.from_predictions([0, 0, 1, 1], [7, 7, 7, 3])
    >>> display.contingency.tolist()
    [[2, 0], [1, 1]]
    """

    def __init__(self, contingency, classes, clusters, mapping):
        self.contingency = contingency
        self.classes = classes
        self.clusters = clusters
        self.mapping = mapping

    def plot(self, *, ax=None, cmap="Blues", include_values=True):
        """Draw the matrix.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; None creates a figure.
        cmap : str, default="Blues"
            Colour map.
        include_values : bool, default=True
            Write the counts in the cells.

        Returns
        -------
        display : ClusterConfusionDisplay
        """
        figure, ax = _axes(ax)
        counts = np.asarray(self.contingency)
        self.im_ = ax.imshow(counts, cmap=cmap, aspect="auto")
        self.text_ = None
        if include_values:
            threshold = counts.max() / 2.0 if counts.size else 0
            self.text_ = np.empty(counts.shape, dtype=object)
            for (row, column), value in np.ndenumerate(counts):
                color = "white" if value > threshold else "black"
                self.text_[row, column] = ax.text(column, row, str(value), ha="center",
                                                  va="center", color=color, fontsize=8)
        ax.set_xticks(np.arange(len(self.clusters)))
        ax.set_xticklabels(
            [f"{c}→{self.mapping[c]}" if c in self.mapping else f"{c}" for c in self.clusters],
            rotation=45 if len(self.clusters) > 10 else 0,
        )
        ax.set_yticks(np.arange(len(self.classes)))
        ax.set_yticklabels([str(c) for c in self.classes])
        ax.set_xlabel("cluster → matched class")
        ax.set_ylabel("true class")
        self.figure_, self.ax_ = figure, ax
        return self

    @classmethod
    def from_predictions(cls, y_true, y_pred, *, method="hungarian", ax=None, cmap="Blues",
                         include_values=True):
        """Match clusters to classes and draw the matrix.

        Parameters
        ----------
        y_true : array-like of shape (n_samples,)
            True classes.
        y_pred : array-like of shape (n_samples,)
            Clusters.
        method : {"hungarian", "majority"}, default="hungarian"
            One-to-one matching, or many-to-one for overclustering.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        cmap : str, default="Blues"
            Colour map.
        include_values : bool, default=True
            Write the counts in the cells.

        Returns
        -------
        display : ClusterConfusionDisplay
        """
        mapping = cluster_to_class_mapping(y_true, y_pred, method=method)
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        classes = np.unique(y_true)
        clusters = np.unique(y_pred)
        table = contingency_matrix(y_true, y_pred)  # classes × clusters, both sorted
        sizes = {c.item(): int(n) for c, n in zip(clusters, table.sum(axis=0), strict=True)}
        order = []
        for klass in classes:
            matched = [c for c, k in mapping.items() if k == klass.item()]
            order.extend(sorted(matched, key=lambda c: -sizes[c]))
        order.extend(c.item() for c in clusters if c.item() not in mapping)
        column = {c.item(): j for j, c in enumerate(clusters)}
        contingency = table[:, [column[c] for c in order]]
        display = cls(contingency, classes, np.asarray(order), mapping)
        return display.plot(ax=ax, cmap=cmap, include_values=include_values)

    @classmethod
    def from_estimator(cls, estimator, X, y, *, method="hungarian", ax=None, cmap="Blues",
                       include_values=True):
        """Predict the clusters of X and draw them against the classes y.

        Parameters
        ----------
        estimator : fitted clusterer (or Pipeline) with ``predict``
        X : array-like
            Input of the estimator.
        y : array-like of shape (n_samples,)
            True classes.
        method : {"hungarian", "majority"}, default="hungarian"
            One-to-one matching, or many-to-one for overclustering.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        cmap : str, default="Blues"
            Colour map.
        include_values : bool, default=True
            Write the counts in the cells.

        Returns
        -------
        display : ClusterConfusionDisplay
        """
        return cls.from_predictions(y, estimator.predict(X), method=method, ax=ax, cmap=cmap,
                                    include_values=include_values)
