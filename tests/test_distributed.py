"""Distributed TEMI fits: two CPU processes with the gloo backend, started by torchrun.

Each test runs ``tests/distributed_fit.py`` under ``python -m torch.distributed.run`` (the
recipe of the "Large data and several GPUs" page) and reads what the ranks wrote.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from skdeepcluster import ImageEmbedder, TEMIClusterer

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with the gloo backend is needed",
)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import distributed_fit  # noqa: E402


def torchrun(mode, out_dir, *, timeout=240):
    """Run the script on 2 processes; a run that hangs fails the test after ``timeout``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", os.path.join(HERE, "distributed_fit.py"), mode,
               str(out_dir)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=environment)


def read_error(out_dir, rank):
    path = out_dir / f"rank{rank}.error"
    return path.read_text() if path.exists() else None


def write_image_files(folder):
    """5 PNG files (3 of them digits, so the two shares differ) and one that is not an image."""
    from PIL import Image

    folder.mkdir()
    for index, image in enumerate(distributed_fit.images()[:5]):
        Image.fromarray(image).save(folder / f"{index}.png")
    (folder / "2_broken.png").write_bytes(b"not a png")


def test_two_processes_give_the_single_process_fit(tmp_path):
    write_image_files(tmp_path / "images")
    run = torchrun("fit", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{rank}.npz") for rank in (0, 1)]
    X, _ = distributed_fit.data()
    single = TEMIClusterer(**distributed_fit.PARAMS, distributed=False).fit(X)

    assert single.world_size_ == 1
    assert single.head_groups_ == 2  # the heads' grouping is part of what must match
    for result in ranks:
        assert int(result["world_size"]) == 2
        assert int(result["head_groups"]) == 2
        assert int(result["n_steps"]) == single.n_steps_  # the same global batch
        np.testing.assert_array_equal(result["neighbors"], single.neighbors_)
        assert int(result["best_head"]) == single.best_head_
        assert np.mean(result["labels"] == single.labels_) >= 0.99
        np.testing.assert_allclose(result["prior"], single.cluster_prior_, atol=1e-6)
        for name, value in single.module_["student"].state_dict().items():
            np.testing.assert_allclose(result[f"student.{name}"], value.numpy(), atol=1e-5,
                                       err_msg=name)
    # ImageEmbedder: each rank embedded its share, every rank returns all, in input order
    embedder = ImageEmbedder("pixels", image_size=8, device="cpu", distributed=False).fit()
    files, kept, errors = embedder.embed_files(
        sorted(str(p) for p in (tmp_path / "images").iterdir()), skip_errors=True
    )
    for result in ranks:
        np.testing.assert_array_equal(
            result["embedded"], embedder.transform(distributed_fit.images())
        )
        np.testing.assert_array_equal(result["files"], files)
        np.testing.assert_array_equal(result["kept"], kept)
        assert list(result["errors"]) == [os.path.basename(path) for path, _ in errors]
    assert len(errors) == 1 and len(kept) == 5
    # every rank ends with the same model, bit for bit
    for key in ranks[0].files:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


def test_a_stalled_rank_ends_the_fit_with_a_clear_error_instead_of_a_hang(tmp_path):
    run = torchrun("stall", tmp_path)  # rank 1 sleeps 60 s; the process group waits 10 s
    assert run.returncode != 0
    error = read_error(tmp_path, 0)
    assert error is not None, run.stderr[-3000:]
    assert error.startswith("RuntimeError: Distributed fit, rank 0 of 2")
    assert "Another rank has probably failed or stopped" in error
    assert "timeout" in error
    assert not (tmp_path / "rank0.npz").exists()


def every_rank_error(run, out_dir):
    """The error each rank of a failed run wrote."""
    assert run.returncode != 0
    errors = [read_error(out_dir, rank) for rank in (0, 1)]
    assert None not in errors, run.stderr[-3000:]
    return errors


def test_ranks_given_different_data_all_fail_before_training(tmp_path):
    for error in every_rank_error(torchrun("bad-input", tmp_path), tmp_path):
        assert error.startswith("ValueError: The ranks of this distributed fit disagree on the "
                                "data and the parameters")


def test_a_checkpoint_is_refused_by_every_rank_before_training(tmp_path):
    for error in every_rank_error(torchrun("checkpoint", tmp_path), tmp_path):
        assert "checkpoint is not supported in a distributed fit" in error
    assert not (tmp_path / "fit.ckpt").exists()


def test_distributed_true_without_a_process_group_is_a_value_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    X, _ = distributed_fit.data()
    model = TEMIClusterer(n_clusters=3, n_heads=1, max_epochs=1, distributed=True)
    with pytest.raises(ValueError, match="distributed=True needs a torch.distributed process"):
        model.fit(X[:50])
    assert not hasattr(model, "module_")
