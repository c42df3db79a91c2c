"""scikit-learn API surface shared by the five estimators, and what importing the package costs."""

import subprocess
import sys

import pytest


def _modules_after(code):
    """Sorted names of the heavy optional modules in ``sys.modules`` after running ``code``
    in a fresh interpreter."""
    probe = (
        f"{code}\n"
        "import sys\n"
        "heavy = ('torchvision', 'faiss', 'matplotlib', 'PIL', 'torch', 'sklearn')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=300, check=True)
    return result.stdout.strip().splitlines()[-1]


def test_import_skdeepcluster_loads_nothing_heavy():
    assert _modules_after("import skdeepcluster") == "[]"


def test_public_names_load_without_torchvision_faiss_matplotlib_or_pillow():
    # every public name, estimators and displays included: torch and sklearn only; torchvision,
    # faiss, matplotlib and Pillow are imported by the functions that first use them
    loaded = _modules_after(
        "import skdeepcluster\n"
        "for name in skdeepcluster.__all__:\n"
        "    getattr(skdeepcluster, name)\n"
        "import skdeepcluster.cli, skdeepcluster.kmeans, skdeepcluster.nn.augment"
    )
    assert loaded == "['sklearn', 'torch']"


def test_lazy_names_are_the_submodules_objects():
    import skdeepcluster
    from skdeepcluster.methods.temi import TEMIClusterer

    assert skdeepcluster.TEMIClusterer is TEMIClusterer
    assert set(skdeepcluster.__all__) <= set(dir(skdeepcluster))
    assert sorted(skdeepcluster.__all__) == sorted(skdeepcluster._EXPORTS)
    with pytest.raises(AttributeError, match="no_such_name"):
        skdeepcluster.no_such_name  # noqa: B018


# --------------------------------------------------------------------------- transformer API
pd = pytest.importorskip("pandas")

import numpy as np  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import get_tags  # noqa: E402

from skdeepcluster import (  # noqa: E402
    ADCClusterer,
    DeepClusterer,
    MMDCClusterer,
    SCANClusterer,
    TEMIClusterer,
)

#: One tiny configuration per estimator (a second or two of training on 150 digits).
TINY = {
    "TEMIClusterer": lambda: TEMIClusterer(
        n_clusters=3, n_heads=2, n_neighbors=5, hidden_dim=32, bottleneck_dim=16, max_epochs=2,
        batch_size=64, random_state=0),
    "SCANClusterer": lambda: SCANClusterer(
        n_clusters=3, n_neighbors=3, pretext_epochs=1, pretext_batch_size=64, max_epochs=1,
        batch_size=32, self_labeling_epochs=1, self_labeling_batch_size=32, random_state=0),
    "DeepClusterer": lambda: DeepClusterer(
        n_clusters=3, max_epochs=1, batch_size=32, n_components=2, random_state=0),
    "MMDCClusterer": lambda: MMDCClusterer(
        n_clusters=3, max_epochs=2, batch_size=32, backbone="mlp", random_state=0),
    "ADCClusterer": lambda: ADCClusterer(
        n_clusters=3, warmup_epochs=1, max_epochs=1, batch_size=32, embedding_dim=8,
        n_augmentations=2, random_state=0),
}
by_name = pytest.mark.parametrize("name", sorted(TINY))

# A tiny training may collapse, skip SCAN's self-labelling or give faiss' k-means few points per
# centroid: these known warnings are not what is tested here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore:.*fewer than 39 points per cluster:UserWarning"),
]


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    keep = np.flatnonzero(data.target < 3)[:150]
    features = (data.data[keep] / 16).astype(np.float32)
    images = (data.images[keep] * 255 / 16).round().astype(np.uint8)
    return features, images


def _frame(features):
    columns = [f"pixel_{i}" for i in range(features.shape[1])]
    return pd.DataFrame(features, columns=columns, index=np.arange(100, 100 + len(features)))


@by_name
@pytest.mark.parametrize("kind", ["array", "dataframe"])
def test_set_output_pandas(name, kind, digits):
    features = digits[0]
    X = _frame(features) if kind == "dataframe" else features
    model = TINY[name]().set_output(transform="pandas")
    out = model.fit_transform(X)
    assert isinstance(out, pd.DataFrame)
    names = model.get_feature_names_out()
    prefix = name.lower()
    assert list(out.columns) == list(names) == [f"{prefix}{i}" for i in range(out.shape[1])]
    if kind == "dataframe":
        assert out.index.equals(X.index)
    again = model.transform(X)
    assert isinstance(again, pd.DataFrame) and list(again.columns) == list(names)
    plain = clone(model).set_output(transform="default").fit(X).transform(X)
    assert isinstance(plain, np.ndarray) and plain.shape == out.shape
    np.testing.assert_allclose(again.to_numpy(), plain, rtol=1e-5, atol=1e-6)



@by_name
def test_set_output_pandas_inside_a_pipeline(name, digits):
    features = digits[0]
    pipe = make_pipeline(StandardScaler(), TINY[name]()).set_output(transform="pandas")
    out = pipe.fit(_frame(features)).transform(_frame(features))
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(pipe.get_feature_names_out())
    assert out.columns[0] == f"{name.lower()}0"
    labels = pipe.predict(_frame(features))
    assert labels.shape == (len(features),)



@by_name
def test_feature_names_out_need_a_fit_and_a_failed_refit_forgets_them(name, digits):
    features = digits[0]
    model = TINY[name]()
    with pytest.raises(NotFittedError):
        model.get_feature_names_out()
    width = model.fit(features).transform(features[:5]).shape[1]
    assert model.get_feature_names_out().shape == (width,)
    assert isinstance(model.n_iter_, int) and model.n_iter_ >= 1
    with pytest.raises(ValueError):
        model.fit(np.full((20, 3), np.nan))  # a refit that fails leaves the model unfitted
    with pytest.raises(NotFittedError):
        model.get_feature_names_out()



@by_name
def test_tags_say_image_arrays_are_accepted(name):
    tags = get_tags(TINY[name]())
    assert tags.input_tags.three_d_array and tags.input_tags.two_d_array
    assert tags.transformer_tags is not None and tags.estimator_type == "clusterer"


def test_image_input_names_the_learned_representation(digits):
    images = digits[1]
    model = TINY["MMDCClusterer"]().set_output(transform="pandas").fit(images)
    out = model.transform(images)  # an (n, 8, 8) image array, three_d_array
    assert isinstance(out, pd.DataFrame) and out.shape[0] == len(images)
    assert list(out.columns) == list(model.get_feature_names_out())
