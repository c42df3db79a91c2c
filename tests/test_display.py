"""ClusterGridDisplay and ClusterConfusionDisplay, drawn with matplotlib's Agg backend."""

import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from skdeepcluster import (  # noqa: E402
    ClusterConfusionDisplay,
    ClusterGridDisplay,
    clustering_accuracy_score,
    load_digits_images,
)


class FixedProba:
    """A fitted 'clusterer' with known probabilities."""

    def __init__(self, proba):
        self.proba = np.asarray(proba, dtype=np.float64)

    def predict_proba(self, X):
        return self.proba[: len(X)]

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_grid_from_estimator_shows_most_confident_first():
    images, _ = load_digits_images()
    images = images[:6]
    before = images.copy()
    proba = np.array([
        [0.6, 0.4], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.99, 0.01], [0.45, 0.55],
    ])
    display = ClusterGridDisplay.from_estimator(FixedProba(proba), images, n_per_cluster=2)
    assert list(display.selected_) == [0, 1]
    assert display.selected_[0].tolist() == [4, 1]
    assert display.selected_[1].tolist() == [2, 3]
    assert display.figure_ is display.ax_.figure
    mosaic = display.image_.get_array()
    assert mosaic.shape == (2 * 9 + 1, 2 * 9 + 1)  # 8x8 images, 1-pixel gaps
    # the top-left cell is image 4, scaled to [0, 1]
    np.testing.assert_allclose(mosaic[1:9, 1:9], images[4] / 255.0)
    assert [t.get_text() for t in display.ax_.get_yticklabels()] == ["0 (n=3)", "1 (n=3)"]
    np.testing.assert_array_equal(images, before)


def test_grid_from_predictions_on_given_axes_with_rgb_channels_first():
    rng = np.random.RandomState(0)
    images = rng.rand(5, 3, 4, 6)  # (n, C, H, W) floats
    fig, ax = plt.subplots()
    display = ClusterGridDisplay.from_predictions(images, [2, 2, 7, 7, 7], ax=ax, n_per_cluster=3)
    assert display.ax_ is ax and display.figure_ is fig
    assert display.image_.get_array().shape == (2 * 5 + 1, 3 * 7 + 1, 3)
    assert sorted(display.selected_) == [2, 7]


def test_grid_errors_are_clear():
    images = np.zeros((4, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="one entry per image"):
        ClusterGridDisplay.from_predictions(images, [0, 1])
    with pytest.raises(ValueError, match="images="):
        ClusterGridDisplay.from_estimator(FixedProba(np.eye(4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="n_per_cluster"):
        ClusterGridDisplay.from_predictions(images, [0, 0, 1, 1], n_per_cluster=0)


def test_confusion_after_hungarian_matching():
    y_true = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([5, 5, 9, 3, 3, 3, 9, 9, 9])  # 5→0, 3→1, 9→2
    display = ClusterConfusionDisplay.from_predictions(y_true, y_pred)
    assert display.clusters.tolist() == [5, 3, 9]
    np.testing.assert_array_equal(display.contingency, [[2, 0, 1], [0, 3, 0], [0, 0, 3]])
    # the diagonal over the total is the clustering accuracy
    accuracy = np.trace(display.contingency) / len(y_true)
    assert accuracy == pytest.approx(clustering_accuracy_score(y_true, y_pred))
    labels = [t.get_text() for t in display.ax_.get_xticklabels()]
    assert labels == ["5→0", "3→1", "9→2"]
    assert display.text_.shape == (3, 3) and display.text_[1, 1].get_text() == "3"


def test_confusion_overclustering_majority_and_unmatched_clusters():
    y_true = [0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 1, 1, 2, 2]
    majority = ClusterConfusionDisplay.from_predictions(y_true, y_pred, method="majority",
                                                        include_values=False)
    assert majority.text_ is None
    assert majority.mapping == {0: 0, 1: 0, 2: 1}
    hungarian = ClusterConfusionDisplay.from_estimator(
        FixedProba(np.eye(3)[y_pred]), np.zeros((6, 2)), y_true
    )
    # one of clusters 0 and 1 is left unmatched and comes last, without an arrow
    assert hungarian.clusters[-1] in (0, 1)
    assert "→" not in hungarian.ax_.get_xticklabels()[-1].get_text()


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"skdeepcluster\[pictures\]"):
        ClusterConfusionDisplay.from_predictions([0, 1], [1, 0])


# ---------------------------------------------------------------------- contact sheets (Pillow)
def _sheet_of_one(tmp_path, image, cell_size=96):
    from skdeepcluster.display import contact_sheet

    path = tmp_path / "image.png"
    image.save(path)
    return np.asarray(contact_sheet([path], columns=1, cell_size=cell_size, padding=0))


def test_contact_sheet_enlarges_a_small_image_to_the_cell(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    sheet = _sheet_of_one(tmp_path, Image.new("RGB", (25, 25), (200, 0, 0)))
    assert sheet.shape == (96, 96, 3)
    red = (sheet[..., 0] > 150) & (sheet[..., 1] < 60) & (sheet[..., 2] < 60)
    assert red.mean() > 0.95  # it was 25² / 96² = 7 % of the cell


def test_contact_sheet_keeps_tiny_pixels_sharp_and_the_aspect(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    checker = (np.indices((4, 4)).sum(axis=0) % 2 * 255).astype(np.uint8)
    sheet = _sheet_of_one(tmp_path, Image.fromarray(checker))
    # nearest-neighbour: 24x24 blocks of pure black or white, no blurred edges
    assert set(np.unique(sheet)) == {0, 255}
    assert np.array_equal(sheet[::24, ::24, 0], checker)
    wide = _sheet_of_one(tmp_path, Image.new("RGB", (40, 10), (0, 0, 200)))
    blue = (wide[..., 2] > 150) & (wide[..., 0] < 60)
    rows, columns = np.flatnonzero(blue.any(axis=1)), np.flatnonzero(blue.any(axis=0))
    assert columns.size == 96 and 22 <= rows.size <= 26  # 4:1 kept, the long side fills


def test_contact_sheet_reduces_large_images_and_blanks_unreadable_files(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from skdeepcluster.display import contact_sheet

    big = tmp_path / "big.png"
    Image.new("RGB", (300, 150), (0, 150, 0)).save(big)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    sheet = np.asarray(contact_sheet([big, broken], columns=2, cell_size=50, padding=2))
    assert sheet.shape == (54, 106, 3)
    cell = sheet[2:52, 2:52]
    assert ((cell[..., 1] > 100) & (cell[..., 0] < 60)).sum() == 50 * 25  # 2:1 kept
    assert (sheet[2:52, 54:104] == 255).all()  # blank cell
    with pytest.raises(ValueError, match="cell_size"):
        contact_sheet([big], cell_size=0)
