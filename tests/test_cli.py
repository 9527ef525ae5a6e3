"""The fastmlp command, run as users run it: in a subprocess."""

import re
import subprocess
import sys

import numpy as np
from helpers import MNIST_DIR

import fastmlp


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
    )
    assert out.returncode == 0, out.stderr
    assert "2-4-2" in out.stdout and "batch 7, lr 0.5, loss mse, float64, backend numpy" in out.stdout
    assert len(re.findall(r"^epoch ", out.stdout, re.M)) == 3


def test_info_lists_backends_and_blas():
    out = run("info")
    assert out.returncode == 0, out.stderr
    assert f"fastmlp {fastmlp.__version__}" in out.stdout
    assert re.search(r"^backends available: numpy, cython(, numba)?$", out.stdout, re.M)
    assert "threadpool" in out.stdout and "kernel=" in out.stdout
    # the path of every batch size, with the reason, as the driver decides it
    for batch in (1, 10, 64, 256, 60000):
        for kind in ("dense", "19% non-zero"):
            assert re.search(rf"^  batch +{batch}, {kind}.* (sparse|blas) +\S", out.stdout, re.M), (batch, kind)


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
