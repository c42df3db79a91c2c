"""DeepCluster: alternating k-means and convnet training (Caron et al., ECCV 2018)."""

import functools
import time
from numbers import Integral, Real

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.nn import functional as F

from ..base import BaseDeepClusterer
from ..data import batch_to_tensor
from ..engine import make_optimizer, parameter_groups
from ..kmeans import kmeans, pca_whiten, train_pca_whitening, warn_if_few_points
from ..nn.augment import apply_user_augmentation, small_image_affine, weak_augment
from ..nn.backbones import BACKBONE_NAMES, Sobel, is_small_image, make_backbone
from ..pic import power_iteration_clustering

__all__ = ["DeepClusterer", "uniform_cluster_sampler"]

#: Smallest image side, in pixels, from which ``augmentation="auto"`` trains with the paper's
#: random resized crops; below it, the affine warp. Measured: crops lose to the warp on the 8 px
#: digits and beat it on the 28 px Fashion-MNIST images (Notes, "Small data").
CROP_MIN_SIDE = 28


def uniform_cluster_sampler(labels, n_draws, generator):
    """Sample indices uniformly over pseudo-labels (Sec. 3.3, "trivial parametrization").

    Every non-empty cluster gets ``n_draws // n_clusters + 1`` draws: without replacement when
    it is large enough, with replacement when it is smaller; the draws are shuffled and cut to
    ``n_draws`` (the authors' ``UnifLabelSampler``, vectorised). Equivalent to weighting each
    sample's loss by the inverse of its cluster's size.

    Parameters
    ----------
    labels : torch.Tensor of shape (n_samples,), int64
        Pseudo-labels numbered 0..K−1, every label used at least once.
    n_draws : int
    generator : torch.Generator

    Returns
    -------
    indices : torch.Tensor of shape (n_draws,), int64
        Indices into the samples (``labels[indices]`` is near-uniform over the K labels).
    """
    counts = torch.bincount(labels)
    if (counts == 0).any():
        raise ValueError("labels must number the non-empty clusters 0..K-1 without gaps.")
    n_labels = counts.numel()
    per_label = n_draws // n_labels + 1
    # The samples grouped by label, in a random order inside each group.
    shuffled = torch.randperm(labels.numel(), generator=generator)
    grouped = shuffled[torch.argsort(labels[shuffled], stable=True)]
    starts = torch.cumsum(counts, 0) - counts
    without_replacement = torch.arange(per_label).expand(n_labels, per_label)
    uniform = torch.rand(n_labels, per_label, generator=generator)
    with_replacement = (uniform * counts[:, None]).long()
    offsets = torch.where(counts[:, None] >= per_label, without_replacement, with_replacement)
    draws = grouped[starts[:, None] + offsets].flatten()
    return draws[torch.randperm(draws.numel(), generator=generator)][:n_draws]


class _Clustering:
    """DeepCluster's state between epochs: the pseudo-labels, the previous clustering, the
    epoch's classifier and its optimiser."""

    def __init__(self):
        self.labels = None
        self.previous = None
        self.classifier = None
        self.optimizer = None
        self.restored = None  # a checkpoint's classifier state, until the classifier is rebuilt

    def state_dict(self):  # for a checkpoint
        trained = self.classifier is not None
        return {
            "labels": self.labels,
            "previous": self.previous,
            "classifier": self.classifier.state_dict() if trained else None,
            "optimizer": self.optimizer.state_dict() if trained else None,
        }

    def load_state_dict(self, state):
        self.labels, self.previous = state["labels"], state["previous"]
        self.classifier = self.optimizer = None
        if state["classifier"] is not None:
            self.restored = (state["classifier"], state["optimizer"])

    def update(self, labels):
        """(NMI with the previous clustering, fraction of samples that changed cluster after
        matching the two clusterings' labels with the Hungarian method); NaN and 1 at first."""
        previous, self.previous = self.previous, labels
        if previous is None:
            return float("nan"), 1.0
        nmi = normalized_mutual_info_score(previous, labels, average_method="geometric")
        overlap = contingency_matrix(previous, labels)
        rows, columns = linear_sum_assignment(overlap, maximize=True)
        return float(nmi), float(1.0 - overlap[rows, columns].sum() / labels.size)


class _NearestCentroid(nn.Module):
    """The final clustering as a frozen module: PCA-whitening, L2 normalisation, centroids."""

    def __init__(self, matrix, centroids, variance):
        import faiss  # here, not at module level: importing skdeepcluster stays fast (issue 15)

        super().__init__()
        projection = faiss.vector_to_array(matrix.A).reshape(matrix.d_out, matrix.d_in)
        self.register_buffer("projection", torch.from_numpy(projection.copy()))
        self.register_buffer("bias", torch.from_numpy(faiss.vector_to_array(matrix.b).copy()))
        self.register_buffer("centroids", torch.from_numpy(np.asarray(centroids, np.float32)))
        self.register_buffer("variance", torch.tensor(float(variance)))

    def embed(self, features):
        # float32 whatever the autocast of the network: this is the clustering's own space
        with torch.autocast(features.device.type, enabled=False):
            projected = features.float() @ self.projection.T + self.bias
            return F.normalize(projected, dim=1, eps=1e-12)

    def forward(self, features):
        """Squared distances of the embedded features to every centroid, (B, K), float32."""
        with torch.autocast(features.device.type, enabled=False):
            return torch.cdist(self.embed(features), self.centroids).square()


class DeepClusterer(BaseDeepClusterer):
    """DeepCluster: a convnet trained to predict the k-means clusters of its own features.

    Every ``reassign`` epochs the features of the whole training set (eval mode, non-augmented
    inputs, in batches) are PCA-reduced to ``n_components`` dimensions with whitening,
    L2-normalised (faiss ``PCAMatrix``) and clustered with faiss k-means (``kmeans_n_iter``
    iterations, a fresh seed each time, no subsampling) — or with Power Iteration Clustering
    (``clustering="pic"``). The assignments become pseudo-labels; the network then trains with
    cross-entropy on augmented inputs through a fresh linear classifier, on batches drawn
    uniformly over the pseudo-labels. After the last epoch the features are clustered once more:
    that final clustering is the output.

    Parameters
    ----------
    n_clusters : int, default=10
        Number of k-means clusters K (paper: 10 000 on ImageNet for representation learning; here
        the user's K). With ``clustering="pic"`` the number of clusters is *found* by PIC, not
        forced: ``n_clusters`` is then only the count the collapse warning compares against.
    backbone : {"auto", "mlp", "small_cnn", "small_vgg", "resnet18"}, torch.nn.Module or None, \
            default=None
        Network trained end to end (a copy; the user's module is not modified). None or "auto":
        an MLP for features, a small VGG-style CNN for images under 32 px (``"small_cnn"``, six
        convolutions; the four-convolution ``"small_vgg"`` scored lower on the digits, see
        ``doc/benchmarks.rst``), a CIFAR ResNet-18 from 32 px (the paper: AlexNet or VGG-16
        with batch norm on ImageNet).
    n_pseudo_labels : int or None, default=None
        Number of k-means clusters used as pseudo-labels while training; the final clustering
        uses ``n_clusters``. None: ``n_clusters``. The paper finds over-segmentation helps the
        representation (Fig. 2c: best K = 10 000 for ImageNet's 1 000 classes).
    clustering : {"kmeans", "pic"}, default="kmeans"
        Clustering of the features: faiss k-means (paper) or Power Iteration Clustering on a
        sparse ``n_neighbors``-NN graph (supplementary Sec. 2.1).
    n_components : int or "auto", default="auto"
        PCA dimensions (with whitening) before the clustering (paper: 256); capped at
        ``min(n_samples, n_features)``. The paper whitens fewer directions (256) than it has
        clusters (10 000); with few clusters, whitening many directions gives the noise ones
        the weight of the K − 1 informative ones. ``"auto"``: as many as the k-means clusters
        of training (``n_pseudo_labels`` or ``n_clusters``), at most the paper's 256 — the
        paper's value at its scale; 256 with ``clustering="pic"`` (which forces no number of
        clusters). The value used is ``n_components_`` (see Notes, "Small data").
    kmeans_n_iter : int, default=20
        k-means iterations per reassignment (authors' code: 20).
    n_init : int, default=10
        Runs of every k-means, the lowest objective kept (as in sklearn's ``KMeans``): at each
        reassignment faiss k-means from ``n_init`` random initialisations (faiss' ``nredo``),
        and in the final clustering (the output) sklearn's ``KMeans`` with k-means++ seeding.
        The authors' code runs one k-means per reassignment (``n_init=1`` restores it): on the
        digits that single run lands in a different local minimum from one epoch to the next
        and the pseudo-labels wander; with 10 runs ten seeds went from 0.852 ± 0.060 to 0.930 ±
        0.028 ACC (Notes, "Reassignments").
    reassign : int, default=1
        Epochs between two reassignments (paper: every epoch).
    uniform_sampling : bool, default=True
        Draw each epoch's samples uniformly over pseudo-labels (Sec. 3.3). False: a plain
        shuffle of the training set (the ablation; prone to collapse).
    sobel : bool, default=True
        Frozen grayscale + Sobel x/y filters before the network (paper: on ImageNet, to remove
        colour and increase local contrast). Kept on for grey digits too: in our runs on 8×8
        digits (the quality test's configuration, one run each) the k-means ACC of the learned
        features peaked at 0.85 with Sobel and at 0.76 without; the gradients mark the strokes'
        edges and remove the ink level.
        Image input only; ignored for feature input (no spatial layout).
    flip : bool, default=False
        Random horizontal flips in the training augmentation (paper: True on natural images).
        Default False: a mirrored digit or letter is another symbol (2/5, 3/ε), so flips teach
        an invariance that is wrong for characters; set True for natural images.
    crop_scale : tuple of float, default=(0.08, 1.0)
        Area range of the random resized crops (torchvision's ``RandomResizedCrop`` default,
        which the authors use).
    augmentation : {"auto", "crop", "affine", "none"} or callable, default="auto"
        Training augmentation of image input. ``"crop"``: the paper's random resized crops
        (``crop_scale``) and, when ``flip``, horizontal flips. ``"affine"`` (not in the paper):
        a rotation in ±15° and a shift of up to 10 % of the side, for tiny images where a crop
        removes much of the object (see Notes, "Small data"). ``"auto"``: ``"affine"`` for
        images under 28 px, the paper's ``"crop"`` from 28 px (``CROP_MIN_SIDE``: the warp
        was measured better on the 8 px digits, the crops on the 28 px Fashion-MNIST images;
        sizes in between were not measured). The value used is ``augmentation_``. A callable
        ``g(batch, generator)`` maps a float tensor (B, C, H, W) to one of the same shape.
    n_neighbors : int, default=5
        PIC: neighbours per node of the kNN graph (paper: 5).
    sigma : float, default=0.2
        PIC: bandwidth of the edge weights ``exp(−d²/σ²)`` (paper: 0.2).
    alpha : float, default=1e-3
        PIC: regularisation of the power iteration (paper: 1e-3).
    pic_n_iter : int, default=200
        PIC: number of power iterations (paper: 200).
    max_epochs : int, default=500
        Training epochs (paper: 500 on ImageNet). Each epoch draws ``n_samples`` samples.
    batch_size : int or "auto", default="auto"
        Paper: 256. ``"auto"``: ``min(256, max(16, n_samples // 32))``, at least 32 steps
        between two reassignments where the paper's ImageNet epochs had 5 000; 256 from
        8 192 samples on. The value used is ``batch_size_`` (see Notes, "Small data").
    lr : float, default=0.05
        SGD learning rate of the network and of each epoch's classifier (authors' code: 0.05).
    momentum : float, default=0.9
        SGD momentum of the network's optimiser, which persists across epochs (paper: 0.9). The
        classifier's SGD, re-created with it every reassignment, has no momentum.
    weight_decay : float, default=1e-5
        L2 penalty of both optimisers (authors' code: 10⁻⁵).
    tol : float or None, default=2e-3
        Stopping rule, with ``max_epochs`` as the cap: training ends when the fraction of the
        samples that changed cluster between two consecutive reassignments (the labels of the
        two clusterings matched by the Hungarian method; ``changed`` in ``history_``) has not
        decreased by ``tol`` below its lowest value for ``n_iter_no_change`` reassignments in a
        row: the clustering has stopped getting more stable (the paper's Fig. 2b measures the
        same stability as NMI). It never reaches zero: each reassignment is a fresh k-means.
        None: train exactly ``max_epochs`` (the paper's schedule).
    n_iter_no_change : int, default=50
        Consecutive epochs without a new lowest ``changed`` (by ``tol``) that end training. The
        share of changed samples is noisy from epoch to epoch (each reassignment is a fresh
        k-means, which may settle in another local minimum), so the rule needs a long patience;
        measured on the digits with one k-means run per reassignment (``n_init=1``, when it
        swung between 0.02 and 0.33), seeds 0-9 (bfloat16): ACC 0.900 ± 0.040 after 61-127
        epochs with 50, 0.861 ± 0.039 after 14-36 epochs with 10, 0.891 ± 0.043 with a fixed
        100 epochs (``doc/benchmarks.rst``). With the default ``n_init=10`` the rule stopped ten
        seeds after 71-102 epochs.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Arithmetic of the network's forward and backward passes (autocast); weights, optimiser
        state and losses stay float32. ``"auto"``: bfloat16 where the device computes it
        natively (CUDA GPUs with bfloat16, CPUs with AMX or AVX512-BF16), else float32.
        ``"float16"``: CUDA only, with a gradient scaler. The value used is ``precision_``.
    device : str or torch.device, default="auto"
        ``"auto"``: CUDA when available, else CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds torch, numpy and faiss (each k-means draws its seed from it); an int makes CPU
        runs reproducible.
    checkpoint : str, path-like or None, default=None
        File for the training state, written during training; ``fit`` called again with the
        same data and parameters resumes an interrupted fit from it (:ref:`checkpoints`).
    verbose : int, default=0
        Progress lines (epoch, loss, k-means objective, NMI, seconds, ETA) when > 0; every
        epoch when > 1.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
        Cluster of each training sample: the nearest final centroid, i.e. ``predict(X)``.
    pseudo_labels_ : ndarray of shape (n_samples,)
        The final clustering's own assignment (k-means, or PIC's basins) before the
        nearest-centroid rule; equal to ``labels_`` for k-means up to float ties.
    cluster_centers_ : ndarray of shape (n_found, n_components)
        Centroids of the final clustering in the space of ``transform`` (for PIC: the mean of
        every found cluster).
    n_clusters_found_ : int
        Number of non-empty clusters of the final clustering (PIC: the number it found).
    inertia_ : float
        Sum of squared distances of the training samples to their nearest centroid (in the
        ``transform`` space).
    n_components_, batch_size_ : int
        The PCA dimensions and the batch size used (the parameters' values, or what ``"auto"``
        chose for the data).
    augmentation_ : str or callable
        The augmentation used (where the parameter was ``"auto"``: ``"affine"`` or ``"crop"``
        for images, ``"none"`` for features).
    history_ : list of dict
        Per epoch: ``loss`` (cross-entropy), ``objective`` (k-means objective of the epoch's
        clustering: mean squared distance to the assigned centroid, Eq. 2), ``nmi_previous``
        (NMI with the previous clustering, NaN at the first), ``n_clusters_found``,
        ``cluster_sizes`` (list), ``seconds_features``, ``seconds_clustering``,
        ``seconds_training``, ``seconds``. The last entry (stage ``"final_clustering"``) is the
        clustering of the trained network.
    n_iter_ : int
        Epochs trained, over all stages.
    precision_ : str
        The arithmetic used (``"float32"``, ``"bfloat16"`` or ``"float16"``).
    module_ : torch.nn.ModuleDict
        ``sobel`` (or identity), ``backbone`` and ``clustering`` (whitening + centroids).
    n_features_in_ : int
        Number of features (values per image for image input).

    See Also
    --------
    sklearn.cluster.KMeans : k-means on fixed features.

    Notes
    -----
    Caron, Bojanowski, Joulin, Douze, "Deep Clustering for Unsupervised Learning of Visual
    Features", ECCV 2018. Defaults are the paper's (Sec. 3.4) or, where the paper gives no
    value, the authors' code (lr, weight decay, k-means iterations, crop scales, the classifier
    re-initialised with N(0, 0.01) and trained by momentum-free SGD), except the k-means runs
    per reassignment (``n_init``: 10 here, one in the authors' code; "Reassignments" below).

    Anti-collapse machinery (Sec. 3.3): faiss re-seeds an empty cluster during k-means by
    splitting a non-empty one; clusters still empty in the final assignment are dropped and the
    pseudo-labels renumbered over the non-empty ones; the sampler draws uniformly over
    pseudo-labels; the classifier is fresh at every reassignment (its old rows would refer to
    clusters that no longer exist).

    Power Iteration Clustering follows the paper's update ``v ← N1(α(G + Gᵀ)v + (1 − α)v)``
    (the authors' code teleports to the uniform vector instead of ``(1 − α)v``; with α = 10⁻³
    both stay close to the weighted degree). It over-segments (the paper: a third of the
    clusters under 10 images), so the labels it outputs number ``n_clusters_found_``, usually
    more than ``n_clusters``.

    Outputs: ``transform`` gives the learned features, PCA-whitened with the final matrix and
    L2-normalised (``n_components`` values); ``predict`` is the nearest final centroid there
    (so ``labels_ == predict(X_train)``); ``predict_proba`` is the posterior of an isotropic
    Gaussian mixture with equal weights on those centroids, its variance the mean per-dimension
    squared distance of the training samples to their centroid; ``score`` is minus the mean
    squared distance of X to its nearest centroid (the k-means objective, negated; label-free).

    Deviations, on purpose: small default backbones instead of AlexNet (no dropout, no
    fully-connected layers: the pooled convolutional features are clustered); each epoch draws
    ``n_samples`` samples (one more when a batch of one would be left, which batch norm cannot
    train on); on feature input there is no augmentation (none is defined for vectors), so
    training is plain self-labelling; ``flip`` defaults to False (above; the paper's value is one
    argument away); ``n_components``, ``batch_size`` and ``augmentation`` default to
    ``"auto"``, which gives the paper's 256, 256 and crops at the paper's scale (≥ 256
    clusters, ≥ 8 192 samples, images of 28 px and more) and values that work on small data
    below it (next paragraph; ``n_components=256, batch_size=256, augmentation="crop"`` are
    the paper's); the whitening adds 10⁻⁶ × the largest eigenvalue to every
    eigenvalue so that directions without variance are not divided by zero.

    Small data (what the tests and benchmark measured on 8×8 digits, K = 10): with the paper's
    values the training *degrades* the random network's features (k-means ACC ~0.8 at
    initialisation, 0.45–0.65 after 10–20 epochs). Three things make DeepCluster beat k-means
    on pixels there, and the ``"auto"`` defaults choose them from the data while keeping the
    paper's values at the paper's scale: ``n_components`` ≈ K (above), more steps between two
    reassignments (a 1 797-sample epoch is 7 steps of 256, the paper's ImageNet epoch 5 000)
    and an augmentation that suits 8-pixel images, ``"affine"`` (±15° rotations, 10 % shifts)
    instead of the paper's random resized crops, which on an 8×8 image either remove most of
    the digit or, kept light (``crop_scale=(0.8, 1)``), teach almost no invariance. Measured
    with the small CNN and the stopping rule, seeds 0 / 1 / 2 (k-means on pixels 0.79):

    * the paper's values (crops, 256 components, batch 256): ACC 0.415 / 0.486 / 0.539;
    * affine: 0.460 / 0.535 / 0.517; affine, 10 components: 0.434 / 0.604 / 0.681;
      affine, batch 32: 0.547 / 0.631 (seed 2 not run);
    * affine, 10 components, batch 32: **0.946 / 0.811 / 0.876**; batch 64: 0.928 (seed 0);
      batch 256 with ``reassign=8`` (the same 56 steps per reassignment): 0.904 (seed 0, but
      201 epochs); crops, 10 components, batch 32: 0.851 (seed 0).

    Only the three together work; the defaults are those (``batch_size_`` = 56 on the digits).
    With 25 fixed epochs of the earlier width-16 CNN, six seeds gave 0.914, 0.801, 0.936,
    0.850, 0.960, 0.878 (light crops instead: mean 0.748). Tried without gain (six seeds
    each, light crops): ``n_pseudo_labels=30`` (mean 0.703), 50 with 32 components (0.743),
    no Sobel (0.737), an MLP (0.797). Over-segmentation did not help on 10 000 Fashion-MNIST
    images either (30 epochs, seed 0): 100 pseudo-labels gave ACC 0.365 with 100 components and
    0.513 with 10, against 0.540 for the defaults.

    On 28 px images the paper's crops win again, hence ``"crop"`` from 28 px
    (``CROP_MIN_SIDE``). Fashion-MNIST, fitted on the 60 000 training images and scored on the
    10 000 test images, the other defaults (bfloat16, a cap of 100 epochs): with crops ACC
    0.614 / 0.610 / 0.593, NMI 0.584 / 0.558 / 0.554 on seeds 0 / 1 / 2 (0.605 ± 0.009) after
    100 / 100 / 73 epochs (the stopping rule ended seed 2); with the affine warp ACC 0.503 /
    0.433, NMI 0.427 / 0.394 on seeds 0 / 1 after 72 / 90 epochs (the rule), below k-means on
    the pixels (ACC 0.48, NMI 0.51). On a 10 000-image subset the warp
    is done after 3 epochs while the crops keep improving (``doc/benchmarks.rst``). Sizes
    between 8 and 28 px were not measured.

    Reassignments: the paper minimises the k-means objective (Eq. 2) at every reassignment; the
    authors' code does it with one faiss run, which on the digits (K = 10, float32, one
    thread) lands in a different local minimum from one epoch to the next: after epoch 10 the
    pseudo-labels' ACC swung between 0.62 and 0.95 (seed 0) and a median of 20 % of the
    samples changed cluster between two epochs, so the network chased another partition every
    epoch and where training stopped decided the output: ten seeds gave 0.852 ± 0.060 ACC.
    Keeping the lowest objective of ``n_init=10`` runs gives it the same target from epoch to
    epoch: the median share changed falls to 0.6-3 %, the pseudo-labels' ACC rises steadily
    (seed 0: 0.77 at the first reassignment, 0.92 at the tenth, 0.95-0.97 from the twentieth
    on but for 5 of 54 reassignments at 0.83-0.85) and the same ten seeds give **0.930 ±
    0.028** ACC (0.908 ± 0.021 NMI) after 71-102 epochs, for 4 % more time (seed 0: 108
    against 104 CPU s); 30 runs gave 0.941 ± 0.023 for 15 % more. On two threads (other
    trainings from the same seeds) seeds 0-2 gave 0.965 / 0.959 / 0.861. The jumps left are
    k-means switching between two partitions of almost equal objective (seed 7's pseudo-labels
    alternate between ACC 0.96 and 0.84). On 28 px images the gain did not show: on 10 000
    Fashion-MNIST images and 30 epochs (three seeds) ten runs gave test ACC 0.524 ± 0.034
    against 0.571 ± 0.013 with one, lower on every seed (NMI 0.541 against 0.552); the
    full-length Fashion-MNIST fits above (0.605) had one run and were not repeated. Where
    k-means is a large share of an epoch (the paper's 10 000 clusters of 256 dimensions),
    ``n_init=1`` is the authors' choice (``doc/benchmarks.rst``).

    Stopping rule, measured with the paper's values on the digits as 8×8 images (seed 0, 166
    epochs): the share of samples that change cluster between two reassignments falls from 1
    to 0.35-0.55 within 10 epochs and stays there (a fresh k-means each epoch), while the
    pseudo-labels' accuracy wanders between 0.35 and 0.55; the ``"plateau"`` rule
    (``tol=2e-3``, ``n_iter_no_change=10``) stops after epoch 16 (pseudo-label ACC 0.53;
    0.43 at epoch 166). With the ``"auto"`` values (seed 1, 100 epochs) the share changed
    swings between 0.02 and 0.33 and the pseudo-labels' accuracy between 0.69 and 0.91 from
    one epoch to the next, while the output clustering of the features improves with training
    on average; a patience of 10 stopped 10 seeds after 14-36 epochs, at 0.861 ± 0.039, and
    the default patience of 50 after 61-127 epochs, at 0.900 ± 0.040 (31-67 CPU s on one
    thread); these were all measured with one k-means run per reassignment.

    The final clustering uses sklearn's ``KMeans`` (k-means++ seeding, ``n_init`` restarts)
    instead of one faiss run: on digits a single randomly-seeded 20-iteration run lands 5–15
    ACC points away from the best partition of the same features, which is noise in the
    output that the paper's training (one run per epoch) tolerates but a clusterer should not.
    More restarts of the *final* clustering alone did not narrow the seed spread: over seeds
    0-9 on the digits (float32, one run per reassignment, ACC 0.852 ± 0.060),
    ``KMeans(n_init=100)`` on ``transform(X)`` changed no fit's ACC by more than 0.004 and a
    spectral clustering of its kNN graph gave 0.849 ± 0.064, while every learned space was
    locally pure (0.92-0.97 of each sample's 20 neighbours in its class): the low fits' spaces
    themselves merge two classes, the partition their wandering reassignments last pushed
    them to (``doc/benchmarks.rst``).

    Cost per epoch: one forward pass over the data, k-means O(n · K · n_components ·
    kmeans_n_iter · n_init) (or PIC: a batched faiss kNN search and ``pic_n_iter`` sparse
    products), one training pass. Nothing of size n × n is built.

    Model selection without labels: ``score`` (minus the k-means objective in the learned,
    whitened space) may compare fits with the same ``n_clusters`` and ``n_components`` — ``lr``,
    ``momentum``, ``weight_decay``, ``reassign``, ``n_pseudo_labels``, ``max_epochs`` — but not
    choose ``n_clusters`` (more centroids always lower the objective) nor ``n_components`` (the
    dimension sets its scale). See the "Evaluating" page of the user guide.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdeepcluster import DeepClusterer
    >>> X, y = load_digits(return_X_y=True)
    >>> X = X[:500] / 16  # a few seconds: too short to cluster well
    >>> model = DeepClusterer(n_clusters=10, max_epochs=2, random_state=0).fit(X)
    >>> model.labels_.shape
    (500,)
    >>> model.n_components_, model.batch_size_  # "auto": as many components as clusters
    (10, 16)
    >>> model.transform(X).shape
    (500, 10)
    """

    _parameter_constraints: dict = {
        **BaseDeepClusterer._parameter_constraints,
        "backbone": [
            torch.nn.Module,
            StrOptions(set(BACKBONE_NAMES)),
            None,
        ],
        "n_pseudo_labels": [Interval(Integral, 2, None, closed="left"), None],
        "clustering": [StrOptions({"kmeans", "pic"})],
        "n_components": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "kmeans_n_iter": [Interval(Integral, 1, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "reassign": [Interval(Integral, 1, None, closed="left")],
        "uniform_sampling": ["boolean"],
        "sobel": ["boolean"],
        "flip": ["boolean"],
        "crop_scale": [tuple],
        "augmentation": [StrOptions({"auto", "crop", "affine", "none"}), callable],
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "alpha": [Interval(Real, 0, 1, closed="right")],
        "pic_n_iter": [Interval(Integral, 1, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
    }

    def __init__(
        self,
        n_clusters=10,
        *,
        backbone=None,
        n_pseudo_labels=None,
        clustering="kmeans",
        n_components="auto",
        kmeans_n_iter=20,
        n_init=10,
        reassign=1,
        uniform_sampling=True,
        sobel=True,
        flip=False,
        crop_scale=(0.08, 1.0),
        augmentation="auto",
        n_neighbors=5,
        sigma=0.2,
        alpha=1e-3,
        pic_n_iter=200,
        max_epochs=500,
        batch_size="auto",
        lr=0.05,
        momentum=0.9,
        weight_decay=1e-5,
        tol=2e-3,
        n_iter_no_change=50,
        precision="auto",
        device="auto",
        random_state=None,
        checkpoint=None,
        verbose=0,
    ):
        self.n_clusters = n_clusters
        self.backbone = backbone
        self.n_pseudo_labels = n_pseudo_labels
        self.clustering = clustering
        self.n_components = n_components
        self.kmeans_n_iter = kmeans_n_iter
        self.n_init = n_init
        self.reassign = reassign
        self.uniform_sampling = uniform_sampling
        self.sobel = sobel
        self.flip = flip
        self.crop_scale = crop_scale
        self.augmentation = augmentation
        self.n_neighbors = n_neighbors
        self.sigma = sigma
        self.alpha = alpha
        self.pic_n_iter = pic_n_iter
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.precision = precision
        self.device = device
        self.random_state = random_state
        self.checkpoint = checkpoint
        self.verbose = verbose

    def _augment(self, batch, generator):
        if callable(self.augmentation_):
            return apply_user_augmentation(self.augmentation_, batch, generator)
        if self.augmentation_ == "crop":
            return weak_augment(batch, generator, flip=self.flip, scale=self.crop_scale)
        if self.augmentation_ == "affine":
            return small_image_affine(batch, generator)
        return batch

    def _inference_batch_size(self):
        return max(self.batch_size_, 256)  # batch_size may be "auto"

    def _resolve_auto(self, X):
        """The values of the "auto" parameters for X: ``n_components_``, ``batch_size_``,
        ``augmentation_``."""
        n_samples = X.shape[0]
        self.n_components_ = self.n_components
        if self.n_components == "auto":
            k = self.n_pseudo_labels or self.n_clusters
            self.n_components_ = 256 if self.clustering == "pic" else min(256, k)
        self.batch_size_ = self.batch_size
        if self.batch_size == "auto":
            self.batch_size_ = min(256, max(16, n_samples // 32))
        self.augmentation_ = self.augmentation
        if self.augmentation == "auto":  # feature input is never augmented
            if self.input_kind_ != "images":
                self.augmentation_ = "none"
            else:
                small = is_small_image(self.input_shape_, CROP_MIN_SIDE)
                self.augmentation_ = "affine" if small else "crop"

    def _check_fit_params(self, X):
        if X.shape[0] < 2:
            raise ValueError(
                "DeepClusterer needs at least 2 samples (its batch norm trains on batches), "
                "got 1 sample."
            )
        self._resolve_auto(X)
        scale = self.crop_scale
        if not (
            len(scale) == 2
            and all(isinstance(s, Real) for s in scale)
            and 0 < scale[0] <= scale[1] <= 1
        ):
            raise ValueError(
                f"crop_scale must be a pair (low, high) with 0 < low <= high <= 1, got {scale!r}."
            )
        if self.n_pseudo_labels is not None and self.n_pseudo_labels > X.shape[0]:
            raise ValueError(
                f"n_pseudo_labels={self.n_pseudo_labels} is larger than n_samples={X.shape[0]}."
            )
        if self.clustering == "pic" and self.n_neighbors >= X.shape[0]:
            raise ValueError(
                f"n_neighbors={self.n_neighbors} must be smaller than n_samples={X.shape[0]} "
                "for clustering='pic'."
            )
        if self.clustering == "kmeans":  # once per fit, not at every epoch's reassignment
            warn_if_few_points(X.shape[0], self.n_pseudo_labels or self.n_clusters,
                               "DeepClusterer", stacklevel=4)

    # ------------------------------------------------------------------ training
    def _features(self, batch):
        return self.module_["backbone"](self.module_["sobel"](batch)).flatten(1)

    def _cluster(self, features, generator, n_clusters, final=False):
        """PCA-whitening + L2, then k-means or PIC: (matrix, labels, centroids, objective).

        Training reassignments: faiss k-means with a fresh seed, best of ``n_init`` runs. The
        final clustering (the output): sklearn's KMeans, k-means++ seeding, best of ``n_init``.
        """
        matrix = train_pca_whitening(features, self.n_components_)
        whitened, _ = pca_whiten(features, matrix=matrix)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))  # fresh seed per call
        if self.clustering == "kmeans" and final:
            from sklearn.cluster import KMeans  # here: importing skdeepcluster stays fast

            model = KMeans(n_clusters, n_init=self.n_init, random_state=seed).fit(whitened)
            labels = model.labels_.astype(np.int64)
            centroids = model.cluster_centers_.astype(np.float32)
            objective = float(model.inertia_)
        elif self.clustering == "kmeans":
            labels, centroids, objective = kmeans(
                whitened, n_clusters, n_iter=self.kmeans_n_iter, n_init=self.n_init, seed=seed
            )
        else:
            labels = power_iteration_clustering(
                whitened,
                n_neighbors=self.n_neighbors,
                sigma=self.sigma,
                alpha=self.alpha,
                n_iter=self.pic_n_iter,
            )
            counts = np.bincount(labels).astype(np.float32)
            centroids = np.zeros((counts.size, whitened.shape[1]), np.float32)
            np.add.at(centroids, labels, whitened)
            centroids /= counts[:, None]
            objective = float(np.square(whitened - centroids[labels]).sum())
        return matrix, labels, centroids, objective

    def _stages(self, X, trainer, generator):
        device = trainer.device
        use_sobel = self.sobel and self.input_kind_ == "images"
        sobel = Sobel() if use_sobel else nn.Identity()
        shape = (2, *self.input_shape_[1:]) if use_sobel else self.input_shape_
        user_module = self.backbone if isinstance(self.backbone, nn.Module) else None
        name = self.backbone if isinstance(self.backbone, str) else "auto"
        backbone = make_backbone(name, self.input_kind_, shape, user_module=user_module)
        self.module_ = nn.ModuleDict({"sobel": sobel.requires_grad_(False), "backbone": backbone})
        self.module_ = trainer.prepare(self.module_)
        # the network's SGD persists across epochs (Sec. 3.4)
        network_optimizer = make_optimizer(
            "sgd", parameter_groups(backbone, self.weight_decay, decay="all"), lr=self.lr,
            momentum=self.momentum, device=device,
        )
        clustering = _Clustering()
        yield trainer.stage(
            "deepcluster",
            functools.partial(self._deepcluster_epoch, X, generator, clustering),
            self.max_epochs,
            optimizer=network_optimizer,
            monitor="changed",
            state={"clustering": clustering},
            stop_mode="plateau",  # a fresh k-means relabels a share of the samples every epoch
        )
        # the output: the trained network's features clustered once more (``n_init`` runs)
        trainer.log("final_clustering",
                    functools.partial(self._final_clustering, X, generator, clustering))
        self.cluster_centers_ = self.module_["clustering"].centroids.cpu().numpy()
        self.n_clusters_found_ = int(self.cluster_centers_.shape[0])
        distances = self._apply_batched(X, self._distances_tensor)
        self.inertia_ = float(distances.min(axis=1).sum())

    def _reassign(self, X, generator, clustering, n_clusters, final=False):
        """Features of the whole training set (eval mode, no augmentation), clustered; the
        non-empty clusters numbered 0..K'-1 become ``clustering.labels``."""
        start = time.perf_counter()
        features = self._apply_batched(X, self._features)
        if not np.isfinite(features).all():
            raise FloatingPointError(
                "DeepClusterer's network produced NaN or infinite features: training "
                f"diverged (lr={self.lr}). Lower lr or use a backbone with batch norm."
            )
        extracted = time.perf_counter()
        matrix, raw_labels, centroids, objective = self._cluster(
            features, generator, n_clusters, final
        )
        clustered = time.perf_counter()
        used, labels = np.unique(raw_labels, return_inverse=True)  # drop empty clusters
        nmi, changed = clustering.update(raw_labels)
        clustering.labels = torch.from_numpy(labels.astype(np.int64))
        record = {
            "objective": objective / X.shape[0],
            "nmi_previous": nmi,
            "changed": changed,
            "n_clusters_found": int(used.size),
            "cluster_sizes": np.bincount(labels).tolist(),
            "seconds_features": extracted - start,
            "seconds_clustering": clustered - extracted,
        }
        return record, matrix, centroids, objective

    def _deepcluster_epoch(self, X, generator, clustering, stage):
        """Reassign (every ``reassign`` epochs, with a fresh classifier and its SGD), then one
        pass of cross-entropy on the pseudo-labels (Eq. 1), drawn uniformly over them."""
        if stage.epoch % self.reassign == 0:
            record, *_ = self._reassign(
                X, generator, clustering, self.n_pseudo_labels or self.n_clusters
            )
            self._new_classifier(clustering, stage)
        else:
            if clustering.classifier is None:  # resumed from a checkpoint between reassignments
                with torch.random.fork_rng(devices=[]):  # its weights are overwritten: no draw
                    self._new_classifier(clustering, stage)
                weights, optimizer_state = clustering.restored
                clustering.classifier.load_state_dict(weights)
                clustering.optimizer.load_state_dict(optimizer_state)
                clustering.restored = None
            record = {
                "objective": float("nan"),
                "nmi_previous": float("nan"),
                "changed": None,
                "n_clusters_found": int(clustering.labels.max()) + 1,
                "cluster_sizes": torch.bincount(clustering.labels).tolist(),
                "seconds_features": 0.0,
                "seconds_clustering": 0.0,
            }
        start = time.perf_counter()
        record["loss"] = self._train_epoch(X, clustering, stage, generator)
        record["seconds_training"] = time.perf_counter() - start
        return record

    def _final_clustering(self, X, generator, clustering):
        """The final clustering: nearest-centroid module over the whitened features."""
        record, matrix, centroids, objective = self._reassign(
            X, generator, clustering, self.n_clusters, final=True
        )
        variance = max(objective / (X.shape[0] * matrix.d_out), 1e-12)
        device, _ = self._inference_setting()
        self.module_["clustering"] = _NearestCentroid(matrix, centroids, variance).to(device)
        self.pseudo_labels_ = clustering.previous
        return record

    def _new_classifier(self, clustering, stage):
        """A fresh classifier for the pseudo-labels, N(0, 0.01) weights, zero bias, and its SGD,
        stepped with the network's."""
        classifier = nn.Linear(
            self.module_["backbone"].out_features, int(clustering.labels.max()) + 1
        )
        nn.init.normal_(classifier.weight, 0.0, 0.01)
        nn.init.zeros_(classifier.bias)
        clustering.classifier = classifier.to(stage.device)
        clustering.optimizer = make_optimizer(
            "sgd", parameter_groups(classifier, self.weight_decay, decay="all"),
            lr=self.lr, device=stage.device,
        )
        stage.optimizers = [stage.optimizers[0], clustering.optimizer]

    def _train_epoch(self, X, clustering, stage, generator):
        """One pass of ``n_draws`` samples; returns the mean cross-entropy."""
        n_samples = X.shape[0]
        batch_size = min(self.batch_size_, n_samples)
        # One more draw when a batch of one sample would be left: batch norm cannot train on it.
        n_draws = n_samples + (1 if n_samples % batch_size == 1 and n_samples > 1 else 0)
        labels = clustering.labels
        if self.uniform_sampling:
            order = uniform_cluster_sampler(labels, n_draws, generator)
        else:
            order = torch.randperm(n_samples, generator=generator)
            extra = torch.randint(n_samples, (n_draws - n_samples,), generator=generator)
            order = torch.cat([order, extra])
        self.module_.train()
        clustering.classifier.train()
        labels = labels.to(stage.device)
        images = self.input_kind_ == "images"
        total = 0.0
        for start in range(0, n_draws, batch_size):
            indices = order[start : start + batch_size]
            batch = batch_to_tensor(X, indices, stage.device)
            if images:
                batch = self._augment(batch, generator)
            with stage.autocast():
                logits = clustering.classifier(self._features(batch))
            loss = F.cross_entropy(logits.float(), labels[indices.to(stage.device)])  # Eq. (1)
            stage.step(loss)
            total += loss.item() * indices.numel()
        return total / n_draws

    # ------------------------------------------------------------------ inference
    def _distances_tensor(self, batch):
        return self.module_["clustering"](self._features(batch))

    def _predict_tensor(self, batch):
        return self._distances_tensor(batch).argmin(dim=1)

    def _proba_tensor(self, batch):
        variance = self.module_["clustering"].variance
        return torch.softmax(-self._distances_tensor(batch) / (2 * variance), dim=1)

    def _transform_tensor(self, batch):
        return self.module_["clustering"].embed(self._features(batch))

    def score(self, X, y=None):
        """Minus the mean squared distance of X to its nearest centroid (label-free).

        The k-means objective (Eq. 2) of X in the learned, whitened space; higher is better.
        It may compare fits with the same ``n_clusters`` and ``n_components`` (e.g. ``lr``,
        ``reassign``), not choose those two: more centroids always lower the objective, and the
        dimension sets its scale (see the class's Notes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or image array
        y : Ignored

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        X = self._validate_input(X, reset=False)
        return -float(self._apply_batched(X, self._distances_tensor).min(axis=1).mean())
