"""The CPU's cache sizes (read from the OS or the environment) and the sparse
path's blocks of examples derived from them."""

import numpy as np
import pytest
from helpers import BACKENDS

from fastmlp import backends
from fastmlp._kernels import caches, epochs


@pytest.mark.parametrize(
    "text, size", [("49152", 49152), ("48K", 48 << 10), ("48KiB", 48 << 10), ("512k", 512 << 10), ("1M", 1 << 20)]
)
def test_sizes_are_read_in_bytes_or_with_a_unit(text, size):
    assert caches.parse_size(text, "size") == size


@pytest.mark.parametrize("text", ["", "0", "-32K", "32 kilobytes", "1.5M", "K"])
def test_a_bad_size_names_the_variable(text):
    with pytest.raises(ValueError, match=r"FASTMLP_L1D_CACHE must be a positive size .*got"):
        caches.parse_size(text, caches.L1D_VAR)


def test_the_environment_overrides_what_the_os_reports(cache_env):
    cache_env()
    reported = caches.caches()
    assert reported.l1d >= 4096 and reported.l2 >= reported.l1d
    cache_env(l1d="32K")
    c = caches.caches()
    assert (c.l1d, c.l2) == (32 << 10, reported.l2) and c.source.startswith("FASTMLP_L1D_CACHE; the other from")
    cache_env(l1d="32K", l2="512K")
    assert caches.caches() == (32 << 10, 512 << 10, "FASTMLP_L1D_CACHE and FASTMLP_L2_CACHE")
    assert caches.describe() == "L1d 32 KiB, L2 512 KiB per core (FASTMLP_L1D_CACHE and FASTMLP_L2_CACHE)"
    cache_env(l2="lots")
    with pytest.raises(ValueError, match="FASTMLP_L2_CACHE must be a positive size"):
        caches.caches()


def test_nothing_reported_assumes_the_small_caches(cache_env, monkeypatch):
    cache_env()
    for reader in ("_sysfs", "_sysconf", "_sysctl"):
        monkeypatch.setattr(caches, reader, lambda: None)
    assert caches.caches() == (32 << 10, 512 << 10, "not reported; assumed")


def test_sysfs_gives_the_smallest_caches_of_the_cores_in_use(tmp_path):
    """A hybrid CPU: the cores differ; the instruction cache and L3 are not data caches per core."""

    def core(cpu, *entries):
        for i, (level, kind, size) in enumerate(entries):
            d = tmp_path / f"cpu{cpu}" / "cache" / f"index{i}"
            d.mkdir(parents=True)
            (d / "level").write_text(f"{level}\n")
            (d / "type").write_text(f"{kind}\n")
            (d / "size").write_text(f"{size}\n")

    core(0, (1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"), (3, "Unified", "32768K"))
    core(1, (1, "Data", "32K"), (1, "Instruction", "64K"), (2, "Unified", "1024K"))
    assert caches._sysfs(tmp_path, [0, 1]) == (32 << 10, 1 << 20)
    assert caches._sysfs(tmp_path, [0]) == (48 << 10, 2 << 20)
    assert caches._sysfs(tmp_path, [2]) is None  # no such CPU


def test_blocks_keep_their_slice_of_dl_dh_in_l1():
    """Four cache lines of hidden units per group (256 bytes a row): 128 examples in a
    48 KiB L1d (32 KiB of them), 64 in 32 KiB; narrow groups up to the mask's 256."""
    assert caches.block_rows(256, 32, 256, l1d=48 << 10) == 128
    assert caches.block_rows(256, 32, 256, l1d=32 << 10) == 64
    assert caches.block_rows(64, 32, 256, l1d=32 << 10) == 256
    assert caches.block_rows(256, 32, 256, l1d=1 << 20) == 256
    assert caches.block_rows(256, 32, 256, l1d=4 << 10) == 32  # never below grouping's least


def _mnist_like(batch, dtype=np.float32):
    rng = np.random.default_rng(0)
    X = (rng.random((batch, 784)) < 0.19).astype(dtype)
    return X, rng.integers(0, 10, batch)


@pytest.mark.parametrize("backend", ["cython", "numba"])
@pytest.mark.parametrize("l1d, batch, rows, chunked", [("32K", 128, 64, True), ("48K", 128, 128, False),
                                                       ("48K", 256, 128, True), ("1M", 256, 256, False)])  # fmt: skip
def test_the_runner_takes_a_batch_in_blocks_that_fit_l1(cache_env, backend, l1d, batch, rows, chunked):
    """MNIST's shape, 784-100-10 float32: the block follows L1d; a larger batch is
    taken a block at a time with its gradient summed in a buffer, grouped each."""
    if backend not in BACKENDS:
        pytest.skip(f"the {backend} backend is not available")
    cache_env(l1d=l1d)
    X, y = _mnist_like(batch)
    p = {"Wh": np.zeros((100, 784), np.float32), "bh": np.zeros(100, np.float32)}
    p |= {"Wy": np.zeros((10, 100), np.float32), "by": np.zeros(10, np.float32)}
    runner = epochs.EpochRunner(backends.kernels(backend), p, X, y, batch_size=batch, path="sparse", n_threads=2)
    work = runner.work
    assert work.H.shape[1] == rows and work.mask.shape[2] == -(-rows // 64)
    assert (work.gWhT.size > 0) == chunked
