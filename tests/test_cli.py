"""The fastmlp command, run as users run it: in a subprocess."""

import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import BACKENDS, MNIST_DIR

import fastmlp
from fastmlp import backends
from fastmlp._kernels import caches, epochs


def run(*args):
    return subprocess.run([sys.executable, "-m", "fastmlp.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_on_circles_by_default_reaches_95_percent(tmp_path):
    out = run("train", "--save", str(tmp_path / "m.npz"))
    assert out.returncode == 0, out.stderr
    assert "circles 2-10-2" in out.stdout and "batch 10, lr 0.03" in out.stdout
    assert len(re.findall(r"^epoch +\d+ +loss", out.stdout, re.M)) == 100
    acc = float(re.search(r"^test accuracy ([0-9.]+)", out.stdout, re.M).group(1))
    assert acc >= 0.95
    model = fastmlp.MLP.load(tmp_path / "m.npz")
    X, y = fastmlp.datasets.circles(1000, noise=0.1, seed=1)  # the CLI's test split
    assert np.isclose(fastmlp.evaluate(model, X, y)[1], acc, atol=5e-4)


def test_train_options_are_honoured():
    out = run(
        "train",
        "--epochs",
        "3",
        "--hidden",
        "4",
        "--batch-size",
        "7",
        "--lr",
        "0.5",
        "--loss",
        "mse",
        "--backend",
        "numpy",
        "--dtype",
        "float64",
        "--n-samples",
        "200",
        "--activation",
        "relu",
        "--optimizer",
        "adam",
    )
    assert out.returncode == 0, out.stderr
    assert "2-4-2 relu" in out.stdout and "batch 7, lr 0.5, loss mse, adam, float64, backend numpy" in out.stdout
    assert len(re.findall(r"^epoch ", out.stdout, re.M)) == 3


def test_train_with_lbfgs_prints_an_entry_per_iteration():
    out = run("train", "--optimizer", "lbfgs", "--epochs", "40", "--backend", BACKENDS[-1])
    assert out.returncode == 0, out.stderr
    assert ", lbfgs, " in out.stdout
    assert len(re.findall(r"^epoch ", out.stdout, re.M)) == 40
    assert float(re.search(r"^test accuracy ([0-9.]+)", out.stdout, re.M).group(1)) > 0.95


def test_the_activation_is_trained_and_saved(tmp_path):
    """Q3 of the practical: without an activation the network is linear, and no
    line separates two circles; with one it does."""
    accuracy = {}
    for activation in ("identity", "tanh"):
        path = tmp_path / f"{activation}.npz"
        out = run("train", "--activation", activation, "--epochs", "30", "--save", str(path))
        assert out.returncode == 0, out.stderr
        accuracy[activation] = float(re.search(r"^test accuracy ([0-9.]+)", out.stdout, re.M).group(1))
        assert fastmlp.MLP.load(path).activation == activation
    assert accuracy["identity"] < 0.7 < 0.9 < accuracy["tanh"]
    bad = run("train", "--activation", "softplus")
    assert bad.returncode == 2 and "invalid choice: 'softplus'" in bad.stderr


def test_info_lists_backends_and_blas():
    out = run("info")
    assert out.returncode == 0, out.stderr
    assert f"fastmlp {fastmlp.__version__}" in out.stdout
    assert re.search(r"^backends available: numpy, cython(, numba)?$", out.stdout, re.M)
    assert "threadpool" in out.stdout and "kernel=" in out.stdout
    kern = backends.kernels("auto")
    chunk, group = kern.SPARSE_CHUNK_ROWS, getattr(kern, "SPARSE_GROUP_MIN", 0)
    assert (f"batches of {group}+ examples on the sparse path: each touched row" in out.stdout) == bool(group)
    # the caches, where they came from, and the block of examples they set
    assert re.search(r"^caches: L1d [\d.]+ KiB, L2 [\d.]+ [KM]iB per core \(.+\); L1d sets", out.stdout, re.M)
    if group:
        block = caches.block_rows(256, group, kern.SPARSE_MASK_ROWS)
        assert f"with one hidden layer, up to {block} examples at a time" in out.stdout
        taken = f"{min(chunk, block)} (one hidden layer; several: {chunk})"
    else:
        taken = f"{chunk}"
    assert f"large batches on the sparse path: taken {taken} examples at a time" in out.stdout
    # the densities that go to CSR, as auto_path takes them on this machine's BLAS
    middle = "at every batch size" if not epochs.blas_has_avx512_kernels() else "at batches up to 4 and from 32"
    assert f"dense inputs with at most 35% non-zero entries, or 50% {middle}" in out.stdout
    # which build of the C kernels runs (see test_kernels' clone tests)
    level = backends.kernels("cython").clone_level()
    clone = {0: "built once", 4: "runs x86-64-v4", 3: "runs x86-64-v3", 1: "runs the x86-64 baseline"}
    assert re.search(rf"^C kernels: .*{clone[level]}", out.stdout, re.M)
    # where dense inputs leave the rows for GEMMs, and where that came from (pinned here)
    crossing = epochs.dense_rows_crossing(backends.kernels("auto"), np.float32)
    assert (
        f"row by row on the sparse path up to batch {crossing.rows_max}, GEMMs above (FASTMLP_DENSE_ROWS_MAX); "
        f"for first layers of fewer than 8192 weights up to batch {crossing.rows_max} (FASTMLP_DENSE_ROWS_MAX)"
        in out.stdout
    )
    # the path of every batch size, with the reason, as the driver decides it
    for batch in (1, 10, 64, 256, 60000):
        for kind in ("dense", "19% non-zero"):
            assert re.search(rf"^  batch +{batch}, {kind}.* (sparse|blas) +\S", out.stdout, re.M), (batch, kind)


def test_info_shows_the_cache_sizes_the_environment_sets(monkeypatch):
    if not getattr(backends.kernels("auto"), "SPARSE_GROUP_MIN", 0):
        pytest.skip("no backend with the grouped update")
    monkeypatch.setenv("FASTMLP_L1D_CACHE", "32K")
    monkeypatch.setenv("FASTMLP_L2_CACHE", "512K")
    out = run("info")
    assert out.returncode == 0, out.stderr
    assert "caches: L1d 32 KiB, L2 512 KiB per core (FASTMLP_L1D_CACHE and FASTMLP_L2_CACHE)" in out.stdout
    assert "with one hidden layer, up to 64 examples at a time" in out.stdout
    monkeypatch.setenv("FASTMLP_L1D_CACHE", "big")
    bad = run("info")
    assert bad.returncode != 0 and "FASTMLP_L1D_CACHE must be a positive size" in bad.stderr


def test_errors_are_one_line_without_traceback(tmp_path):
    for args, expected in [
        (("train", "--lr", "-1"), "argument --lr: expected a positive number"),
        (("train", "--epochs", "-2"), "argument --epochs: expected a non-negative integer"),
        (("train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none")), "does not exist"),
    ]:
        out = run(*args)
        assert out.returncode == 2, (args, out)
        assert "Traceback" not in out.stderr
        assert out.stderr.strip().count("\n") == 0 and expected in out.stderr, out.stderr


def test_mnist_dataset_via_cli_when_present():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        import pytest

        pytest.skip(f"real MNIST not found in {MNIST_DIR}")
    out = run("train", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--epochs", "1")
    assert out.returncode == 0, out.stderr
    assert float(re.search(r"^test accuracy ([0-9.]+)", out.stdout, re.M).group(1)) > 0.9


def test_a_closed_pipe_is_not_reported_as_an_error():
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastmlp.cli", "train", "--epochs", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.readline()
    proc.stdout.close()  # like `fastmlp train | head -1`
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Broken pipe" not in err and "Traceback" not in err, err


def test_bench_best_blas_runs_without_the_openblas_pins():
    import os

    args = [
        sys.executable,
        "-m",
        "fastmlp.cli",
        "bench",
        "--networks",
        "circles",
        "--batch-sizes",
        "64",
        "--backends",
        "cython",
        "--no-gil",
    ]
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", OPENBLAS_L2_SIZE="1048576")
    pinned = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    best = subprocess.run(args + ["--best-blas"], capture_output=True, text=True, timeout=300, env=env)
    assert pinned.returncode == 0 and best.returncode == 0, (pinned.stderr, best.stderr)
    assert "kernel=Haswell" in pinned.stdout
    assert "unset OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE for this run" in best.stdout
    assert "kernel=" in best.stdout
    try:
        avx512 = " avx512f" in open("/proc/cpuinfo").read()
    except OSError:
        avx512 = False
    if avx512:  # OpenBLAS's own choice on this CPU is an AVX-512 kernel
        assert "kernel=Haswell" not in best.stdout
    assert re.search(r"^\s+64\s+cython\s+[0-9.e-]+\s", best.stdout, re.M)


def test_bench_json_holds_the_printed_rows_and_the_machine(tmp_path):
    import json

    path = tmp_path / "bench.json"
    out = run(
        "bench",
        "--networks",
        "circles",
        "--batch-sizes",
        "1,64",
        "--backends",
        "numpy,cython",
        "--no-gil",
        "--activation",
        "logistic",
        "--optimizer",
        "adam",
        "--json",
        str(path),
    )
    assert out.returncode == 0, out.stderr
    assert "logistic hidden units, Adam" in out.stdout
    data = json.loads(path.read_text())
    env = data["environment"]
    assert env["fastmlp"] == fastmlp.__version__ and env["dtype"] == "float32" and env["cores"] >= 1
    assert env["simd"] and env["blas"] and env["threads"] >= 1
    # the build of the C kernels that ran, as clone_level says
    level = backends.kernels("cython").clone_level()
    assert env["c_kernels"] == {0: "compiled once", 1: "x86-64 baseline"}.get(level, f"x86-64-v{level}")
    assert f"C kernels: {env['c_kernels']} build" in out.stdout
    rows = {(r["batch"], r["backend"]): r for r in data["rows"]}
    assert set(rows) == {(1, "numpy"), (1, "cython"), (64, "numpy"), (64, "cython")}
    for (batch, backend), r in rows.items():
        assert r["network"] == "circles" and r["activation"] == "logistic" and r["seconds"] > 0
        assert r["optimizer"] == "adam"
        # circles runs on one thread: no ratio of one thread to all of them
        assert r["threads_speedup"] is None and r["one_thread_seconds"] is None
        printed = re.search(rf"^\s+{batch}\s+{backend}\s+~?([0-9.e+-]+)\s", out.stdout, re.M)
        assert float(printed.group(1)) == float(f"{r['seconds']:.4g}")
    assert rows[(64, "cython")]["speedup_numpy"] == rows[(64, "numpy")]["seconds"] / rows[(64, "cython")]["seconds"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left


def test_bench_json_into_a_missing_directory_fails_before_measuring(tmp_path):
    out = run("bench", "--networks", "circles", "--json", str(tmp_path / "no" / "b.json"))
    assert out.returncode == 2 and "--json: directory" in out.stderr and "does not exist" in out.stderr
    assert "seconds per epoch" not in out.stdout


def test_info_explain_times_both_paths_where_auto_chooses():
    out = run("info", "--explain")
    assert out.returncode == 0, out.stderr
    rows = re.findall(
        r"^\s+([0-9.]+)\s+(\w+)\s+([0-9.]+)\s+([0-9.]+|-)\s+(sparse|blas)\s+(sparse|blas)\s+([0-9.]+)$",
        out.stdout,
        re.M,
    )
    assert len(rows) == 4 * 7
    for density, batch, sparse, blas, auto, fastest, ratio in rows:
        bs = 4000 if batch == "full" else int(batch)
        kern = backends.kernels("auto")
        crossing = epochs.dense_rows_crossing(kern, np.float32)  # the suite's pin (conftest)
        chosen = fastmlp._kernels.epochs.auto_path(bs, float(density), crossing=crossing)[0]
        assert auto == chosen or abs(float(density) - 0.5) < 0.01
        assert (blas == "-") == (bs == 1)
        times = {"sparse": float(sparse), "blas": float(blas) if blas != "-" else None}
        # the table prints three decimals, so two paths can print the same time
        assert times[fastest] == min(t for t in times.values() if t is not None)
        assert float(ratio) >= 1.0
