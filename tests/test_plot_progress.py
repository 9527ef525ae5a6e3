"""Plots (Agg backend) and the progress display."""

import struct
import subprocess
import sys

import numpy as np
import pytest

import fastmlp

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from fastmlp import plot  # noqa: E402


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def trained():
    X, y = fastmlp.datasets.circles(400, seed=0)
    Xv, yv = fastmlp.datasets.circles(200, seed=1)
    m = fastmlp.MLP(2, 8, 2, seed=0)
    hist = fastmlp.train(m, X, y, epochs=30, batch_size=10, lr=0.1, validation_data=(Xv, yv))
    return m, hist, Xv, yv


def test_learning_curves_and_decision_boundary_render(tmp_path, trained):
    m, hist, X, y = trained
    fig = plot.learning_curves(hist)
    fig.savefig(tmp_path / "curves.png", dpi=50)
    assert png_size(tmp_path / "curves.png") == (500, 200)
    ax_loss = fig.axes[0]
    assert [line.get_label() for line in ax_loss.get_lines()] == ["training loss", "validation loss"]
    np.testing.assert_allclose(ax_loss.get_lines()[0].get_ydata(), hist.loss)
    fig = plot.decision_boundary(m, X, y, resolution=50)
    fig.savefig(tmp_path / "boundary.png", dpi=50)
    assert png_size(tmp_path / "boundary.png") == (250, 200)
    with pytest.raises(ValueError, match="X must have 2 columns"):
        plot.decision_boundary(fastmlp.MLP(3, 4, 2), np.zeros((5, 3)), np.zeros(5, int))


def test_cli_plot_writes_boundary_and_curves(tmp_path):
    out = tmp_path / "curves.png"
    run = subprocess.run(
        [sys.executable, "-m", "fastmlp.cli", "train", "--epochs", "20", "--plot", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert png_size(out) == (1500, 400)  # three panels: boundary, loss, accuracy
    assert out.stat().st_size > 20_000


def test_progress_reports_every_epoch(capsys):
    X, y = fastmlp.datasets.circles(200, seed=0)
    fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, epochs=7, batch_size=10, progress=True)
    err = capsys.readouterr().err
    assert "7/7" in err and "loss" in err and "ex/s" in err


def test_progress_without_tqdm_prints_one_line_per_epoch():
    code = (
        "import sys; sys.modules['tqdm'] = None; sys.modules['tqdm.auto'] = None\n"
        "import fastmlp\nX, y = fastmlp.datasets.circles(100)\n"
        "fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, epochs=3, progress=True)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"] and "acc" in lines[0]
