"""The batch size up to which "auto" trains dense inputs row by row: measured on the
machine once, kept in the cache directory, pinned by FASTMLP_DENSE_ROWS_MAX."""

import json

import numpy as np
import pytest
from helpers import BACKENDS

from fastmlp import backends
from fastmlp import reference as ref
from fastmlp._kernels import epochs, tuning

COMPILED = [b for b in BACKENDS if b != "numpy"]


@pytest.fixture
def unpinned(monkeypatch, tmp_path):
    """No pin, a fresh cache directory, nothing known in this process."""
    monkeypatch.delenv(tuning.VAR, raising=False)
    monkeypatch.setenv(tuning.CACHE_DIR_VAR, str(tmp_path / "cache"))
    tuning.forget()
    yield tmp_path / "cache" / tuning.FILE
    tuning.forget()


def fake_measure(monkeypatch, rows_max=7):
    """Replaces the measurement by one that returns ``rows_max`` and counts its calls."""
    calls = []

    def measure(kernels, dtype, n_threads, shape):
        calls.append((kernels, np.dtype(dtype), n_threads, shape))
        return rows_max, {2: (1.0, 2.0), 24: (1.0, 0.5)}

    monkeypatch.setattr(tuning, "measure", measure)
    return calls


@pytest.mark.parametrize("text", ["0", "-3", "ten", "2.5"])
def test_a_bad_pin_names_the_variable(monkeypatch, text):
    monkeypatch.setenv(tuning.VAR, text)
    kern = backends.kernels(COMPILED[0])
    with pytest.raises(ValueError, match=f"{tuning.VAR} must be a batch size.*{text!r}"):
        epochs.choose_path(kern, "auto", 10, np.ones((50, 20)))


def test_the_pin_sets_the_path_without_measuring(monkeypatch):
    monkeypatch.setenv(tuning.VAR, "12")
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("measured despite the pin"))
    kern = backends.kernels(COMPILED[0])
    dense = np.random.default_rng(0).random((100, 30)) + 0.1
    assert epochs.choose_path(kern, "auto", 12, dense) == ("sparse", "dense")
    assert epochs.choose_path(kern, "auto", 13, dense) == ("blas", None)
    assert epochs.dense_rows_crossing(kern, dense.dtype) == (12, tuning.VAR)


@pytest.mark.parametrize(
    "table, expected",
    [
        ({2: (1, 3), 4: (1, 2), 8: (1, 0.9), 16: (1, 0.5)}, 4),  # the GEMMs overtake between 4 and 8
        ({2: (1, 3), 4: (1, 0.98), 8: (1, 1.5), 16: (1, 0.5)}, 8),  # one noisy point does not end the rows
        ({2: (1, 0.9), 4: (1, 0.5)}, 1),  # GEMMs win everywhere: rows only at batch 1
        ({2: (1, 3), 4: (1, 2)}, 4),  # rows win everywhere measured
        ({2: (1, 3), 4: (1, 1)}, 2),  # a tie goes to the GEMMs
    ],
)
def test_least_cost_threshold(table, expected):
    assert tuning.least_cost(table) == expected


@pytest.mark.parametrize("backend", COMPILED)
def test_measure_times_both_paths_at_every_candidate(backend):
    """Every candidate batch is timed on the sparse path's dense rows and on the
    GEMMs, each ``repeats`` times, and the threshold is the least-cost one of the
    medians (here from times the timer makes up, after running each epoch)."""
    kern = backends.kernels(backend)
    ran = []
    made_up = {(2, "sparse"): 1.0, (2, "blas"): 3.0, (4, "sparse"): 1.0, (4, "blas"): 1.5, (8, "sparse"): 1.0}
    made_up[8, "blas"] = 0.6

    def timer(batch, path, run):
        run()
        ran.append((batch, path))
        return made_up[batch, path]

    rows_max, table = tuning.measure(kern, np.float32, 1, candidates=(2, 4, 8), examples=48, repeats=2, timer=timer)
    assert rows_max == 4
    assert sorted(ran) == sorted(list(made_up) * 2)
    assert table == {2: (1.0, 3.0), 4: (1.0, 1.5), 8: (1.0, 0.6)}


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_real_measurement(backend, dtype):
    """Timed for real (a short one): a threshold among the candidates, positive times."""
    rows_max, table = tuning.measure(backends.kernels(backend), dtype, 2, candidates=(2, 8), examples=64, repeats=1)
    assert rows_max in (1, 2, 8)
    assert set(table) == {2, 8} and all(t > 0 for pair in table.values() for t in pair)


def test_measured_once_then_kept_in_the_cache_file(monkeypatch, unpinned):
    calls = fake_measure(monkeypatch, rows_max=7)
    kern = backends.kernels(COMPILED[0])
    found = epochs.dense_rows_crossing(kern, np.float32, 2)
    assert found.rows_max == 7 and str(unpinned) in found.source and "measured" in found.source
    assert epochs.dense_rows_crossing(kern, np.float32, 2) == found and len(calls) == 1  # this process knows it
    kept = json.loads(unpinned.read_text())
    key = tuning.machine_key(kern, np.float32, 2)
    assert kept[key]["rows_max"] == 7 and kept[key]["seconds"] == {"2": [1.0, 2.0], "24": [1.0, 0.5]}
    tuning.forget()  # a new process: read from the file, not measured again
    assert epochs.dense_rows_crossing(kern, np.float32, 2).rows_max == 7 and len(calls) == 1
    # another dtype or thread count is measured on its own, beside the first
    epochs.dense_rows_crossing(kern, np.float64, 2)
    epochs.dense_rows_crossing(kern, np.float32, 1)
    assert [(c[1], c[2]) for c in calls[1:]] == [(np.dtype(np.float64), 2), (np.dtype(np.float32), 1)]
    assert len(json.loads(unpinned.read_text())) == 3


def test_the_key_names_what_the_crossing_depends_on():
    keys = {
        tuning.machine_key(backends.kernels(b), dtype, threads)
        for b in COMPILED
        for dtype in (np.float32, np.float64)
        for threads in (1, 2)
    }
    assert len(keys) == len(COMPILED) * 4
    key = tuning.machine_key(backends.kernels(COMPILED[0]), np.float32, 2)
    assert "float32" in key and "2 threads" in key and "fastmlp" in key and "784x100 first layer" in key
    assert tuning.machine_key(backends.kernels(COMPILED[0]), np.float32, 2, tuning.SMALL_SHAPE) != key


def test_a_damaged_cache_file_is_measured_again(monkeypatch, unpinned):
    calls = fake_measure(monkeypatch, rows_max=3)
    unpinned.parent.mkdir(parents=True)
    kern = backends.kernels(COMPILED[0])
    key = tuning.machine_key(kern, np.float32, 2)
    for damaged in ("{not json", json.dumps([1, 2]), json.dumps({key: {"rows_max": "seven"}})):
        unpinned.write_text(damaged)
        tuning.forget()
        assert epochs.dense_rows_crossing(kern, np.float32, 2).rows_max == 3
        assert json.loads(unpinned.read_text())[key]["rows_max"] == 3
    assert len(calls) == 3


def test_an_unwritable_cache_directory_keeps_the_value_for_the_process(monkeypatch, unpinned):
    calls = fake_measure(monkeypatch, rows_max=9)
    unpinned.parent.parent.mkdir(parents=True, exist_ok=True)
    unpinned.parent.write_text("a file where the directory should be")
    kern = backends.kernels(COMPILED[0])
    found = epochs.dense_rows_crossing(kern, np.float32, 2)
    assert found.rows_max == 9 and "not saved" in found.source
    assert epochs.dense_rows_crossing(kern, np.float32, 2) == found and len(calls) == 1


def test_auto_measures_only_where_the_crossing_matters(monkeypatch, unpinned):
    """Sparse inputs, inputs up to half non-zero, batch 1 and batches from 32 up take
    their path without the measurement; dense inputs between take it from there."""
    calls = fake_measure(monkeypatch, rows_max=6)
    kern = backends.kernels(COMPILED[0])
    rng = np.random.default_rng(0)
    dense = rng.random((200, 40)) + 0.1
    sparse = dense * (rng.random(dense.shape) < 0.2)
    for batch in (1, 10, 64):
        epochs.choose_path(kern, "auto", batch, sparse)
    for batch in (1, 32, 200):
        epochs.choose_path(kern, "auto", batch, dense)
    assert calls == []
    assert epochs.choose_path(kern, "auto", 6, dense) == ("sparse", "dense")
    assert epochs.choose_path(kern, "auto", 7, dense) == ("blas", None)
    assert len(calls) == 1 and calls[0][1] == np.dtype(np.float64)
    assert calls[0][2] == epochs.wanted_threads(None, kern)


@pytest.mark.parametrize("backend", COMPILED)
def test_a_small_first_layer_is_measured_on_a_small_network(monkeypatch, unpinned, backend):
    """A training's first layer picks the network its crossing is measured on: a small
    one (a tenth of a second) under LARGE_LAYER_MIN weights, MNIST's from there; each
    kept under its own key. A circles network's first training does not pay for the
    large measurement."""
    calls = fake_measure(monkeypatch, rows_max=6)
    kern = backends.kernels(backend)
    rng = np.random.default_rng(0)
    circles = rng.random((300, 2)) + 0.1
    labels = rng.integers(0, 2, 300).astype(np.intp)
    runner = epochs.EpochRunner(kern, ref.init_params(2, 10, 2, seed=0), circles, labels, batch_size=10, path="auto")
    assert runner.path == "blas"
    assert [c[3] for c in calls] == [tuning.SMALL_SHAPE]
    wide = rng.random((300, 128)) + 0.1  # 128 x 64 = LARGE_LAYER_MIN weights
    epochs.EpochRunner(kern, ref.init_params(128, 64, 2, seed=0), wide, labels, batch_size=10, path="auto")
    epochs.EpochRunner(kern, ref.init_params(2, 12, 2, seed=0), circles, labels, batch_size=10, path="auto")
    assert [c[3] for c in calls] == [tuning.SMALL_SHAPE, tuning.SHAPE]  # the small one was known
    assert tuning.shape_for(127, 64) == tuning.SMALL_SHAPE and tuning.shape_for(784, 100) == tuning.SHAPE
    kept = json.loads(unpinned.read_text())
    threads = epochs.wanted_threads(None, kern)
    assert set(kept) == {tuning.machine_key(kern, np.float64, threads, s) for s in (tuning.SHAPE, tuning.SMALL_SHAPE)}
    assert "on a 64x64 first layer" in epochs.dense_rows_crossing(kern, np.float64, None, (2, 10)).source


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.CACHE_DIR_VAR, str(tmp_path / "x"))
    assert tuning.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(tuning.CACHE_DIR_VAR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_dir() == tmp_path / "xdg" / "fastmlp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_dir() == tmp_path / "home" / ".cache" / "fastmlp"
