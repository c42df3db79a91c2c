"""keep_freed_memory: glibc's malloc keeps freed memory while the library computes."""

import platform

import numpy as np
import pytest

from skdeepcluster import DeepClusterer, ImageEmbedder, _memory
from skdeepcluster._memory import GLIBC_DEFAULTS, KEEP, M_MMAP_MAX, keep_freed_memory


class _RecordingLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter.value, value.value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad.value))
        return 1


@pytest.fixture
def libc(monkeypatch):
    recording = _RecordingLibc()
    monkeypatch.setattr(_memory, "_glibc", lambda: recording)
    return recording


def _settings(values):
    return [("mallopt", parameter, value) for parameter, value in values.items()]


def test_keeps_freed_memory_inside_and_restores_glibc_defaults_after(libc):
    assert KEEP[M_MMAP_MAX] == 0
    with keep_freed_memory():
        assert libc.calls == _settings(KEEP)
    assert libc.calls == _settings(KEEP) + _settings(GLIBC_DEFAULTS) + [("malloc_trim", 0)]


def test_nested_blocks_change_the_settings_once(libc):
    with keep_freed_memory():
        with keep_freed_memory():
            pass
        assert libc.calls == _settings(KEEP)  # the inner exit restored nothing
    assert len(libc.calls) == len(KEEP) + len(GLIBC_DEFAULTS) + 1


def test_the_defaults_are_restored_when_the_block_raises(libc):
    with pytest.raises(RuntimeError, match="boom"), keep_freed_memory():
        raise RuntimeError("boom")
    assert libc.calls[-1] == ("malloc_trim", 0)
    assert _memory._depth == 0


@pytest.mark.parametrize(
    "variable, value",
    [("SKDEEPCLUSTER_KEEP_FREED_MEMORY", "0"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")],
)
def test_the_opt_out_and_the_users_own_malloc_tunables_are_respected(monkeypatch, variable,
                                                                     value):
    monkeypatch.setenv(variable, value)
    assert _memory._glibc() is None


def test_found_on_glibc_only(monkeypatch):
    monkeypatch.delenv("SKDEEPCLUSTER_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert (_memory._glibc() is not None) == on_glibc
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert _memory._glibc() is None


def test_fits_are_the_same_with_and_without_it_and_fit_uses_it(digits3, monkeypatch):
    """Real mallopt calls where the machine has glibc: the arithmetic does not change."""
    X = digits3["images"]
    params = dict(n_clusters=3, max_epochs=2, n_init=1, random_state=0)
    kept = DeepClusterer(**params).fit(X)
    monkeypatch.setenv("SKDEEPCLUSTER_KEEP_FREED_MEMORY", "0")
    released = DeepClusterer(**params).fit(X)
    np.testing.assert_array_equal(kept.labels_, released.labels_)
    assert _memory._depth == 0

    entered = []
    monkeypatch.setattr(_memory, "_glibc", lambda: entered.append("fit") or _RecordingLibc())
    DeepClusterer(**params).fit(X)
    assert entered  # training and inference run inside the block
    entered.clear()
    ImageEmbedder("pixels", image_size=8).fit().transform(X)
    assert entered  # and so does the embedders' inference
