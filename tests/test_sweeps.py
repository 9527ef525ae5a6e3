"""fastmlp.sweep: the local pool and a real Dask LocalCluster agree with sequential training."""

import subprocess
import sys

import numpy as np
import pytest

import fastmlp
from fastmlp.sweeps import expand_grid, run_point

pd = pytest.importorskip("pandas")

GRID = {"lr": [0.05, 0.5, 1e39], "n_hidden": [3, 8]}


@pytest.fixture(scope="module")
def data():
    X, y = fastmlp.datasets.circles(600, seed=0)
    return X, y, fastmlp.datasets.circles(200, seed=1)


def _compare(a, b):
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


@pytest.fixture(scope="module")
def sequential(data):
    X, y, val = data
    return fastmlp.sweep(X, y, GRID, validation_data=val, epochs=3, repeats=2, n_jobs=1)


def test_table_holds_every_point_and_records_failures(sequential):
    t = sequential
    assert len(t) == 3 * 2 * 2
    assert list(t[["lr", "n_hidden", "seed"]].itertuples(index=False, name=None))[:4] == [
        (0.05, 3, 0),
        (0.05, 3, 1),
        (0.05, 8, 0),
        (0.05, 8, 1),
    ]
    ok, failed = t[t["error"].isna()], t[t["error"].notna()]
    assert len(failed) == 4 and (failed["lr"] == 1e39).all()
    assert failed["error"].str.startswith("DivergenceError").all()
    assert ok["val_accuracy"].between(0, 1).all() and (ok["seconds"] > 0).all()
    assert (ok["n_samples"] == 600).all()


def test_a_point_equals_training_it_by_hand(data, sequential):
    X, y, (Xv, yv) = data
    m = fastmlp.MLP(2, 8, 2, seed=1)
    fastmlp.train(m, X, y, epochs=3, batch_size=64, lr=0.5, seed=1)
    row = sequential[(sequential["lr"] == 0.5) & (sequential["n_hidden"] == 8) & (sequential["seed"] == 1)].iloc[0]
    assert row["val_accuracy"] == fastmlp.evaluate(m, Xv, yv)[1]


def test_a_sweep_over_activations_trains_each(data):
    X, y, (Xv, yv) = data
    t = fastmlp.sweep(X, y, {"activation": ["identity", "relu"], "lr": [0.5]}, validation_data=(Xv, yv), n_jobs=1)
    assert list(t["activation"]) == ["identity", "relu"]
    m = fastmlp.MLP(2, 100, 2, activation="relu")
    fastmlp.train(m, X, y, epochs=1, batch_size=64, lr=0.5)
    assert t["val_accuracy"].iloc[1] == fastmlp.evaluate(m, Xv, yv)[1]


def test_local_pool_gives_the_sequential_results(data, sequential):
    X, y, val = data
    _compare(fastmlp.sweep(X, y, GRID, validation_data=val, epochs=3, repeats=2, n_jobs=2), sequential)


def test_dask_local_cluster_gives_the_sequential_results(data, sequential):
    distributed = pytest.importorskip("dask.distributed")
    X, y, val = data
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        table = fastmlp.sweep(X, y, GRID, validation_data=val, epochs=3, repeats=2, client=client)
    _compare(table, sequential)


def test_grid_expansion_and_errors():
    points = expand_grid({"lr": [0.1, 0.2], "seed": [5, 7]}, repeats=3, epochs=4)
    assert [(p["lr"], p["seed"], p["epochs"]) for p in points] == [(0.1, 5, 4), (0.1, 7, 4), (0.2, 5, 4), (0.2, 7, 4)]
    with pytest.raises(ValueError, match="unknown parameters \\['learning_rate'\\]"):
        expand_grid({"learning_rate": [0.1]})
    with pytest.raises(ValueError, match="grid\\['lr'\\] is empty"):
        expand_grid({"lr": []})
    bad = run_point(dict(expand_grid({"n_hidden": [0]})[0]), np.zeros((4, 2)), np.array([0, 1, 0, 1]))
    assert bad["error"].startswith("ValueError: n_hidden must be a positive integer")


def test_cli_sweep_writes_csv_and_plot(tmp_path):
    csv, png = tmp_path / "r.csv", tmp_path / "r.png"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastmlp.cli",
            "sweep",
            "--lr",
            "0.05,0.5",
            "--hidden",
            "4",
            "--batch-size",
            "1,16",
            "--epochs",
            "2",
            "--n-jobs",
            "1",
            "--out",
            str(csv),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    table = pd.read_csv(csv)
    assert len(table) == 4 and set(table["batch_size"]) == {1, 16}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_labels_are_named_before_any_training():
    X, y = fastmlp.datasets.circles(50, seed=0)
    with pytest.raises(TypeError, match="y must hold integer class labels"):
        fastmlp.sweep(X, y.astype(str), {"lr": [0.1]}, n_jobs=1)
    with pytest.raises(ValueError, match="y must hold integer class labels"):
        fastmlp.sweep(X, np.where(y == 0, np.nan, 1.0), {"lr": [0.1]}, n_jobs=1)
    with pytest.raises(ValueError, match="validation_data\\[1\\] has 3 entries"):
        fastmlp.sweep(X, y, {"lr": [0.1]}, validation_data=(X, y[:3]), n_jobs=1)


SCRIPT = """
import fastmlp
X, y = fastmlp.datasets.circles(300, seed=0)
table = fastmlp.sweep(X, y, {"lr": [0.1, 0.5], "n_hidden": [3, 6]}, epochs=2, n_jobs=2, as_frame=False)
assert len(table) == 4 and all(r["error"] is None for r in table), table
print("accuracies", *(round(r["accuracy"], 6) for r in table))
"""


def test_a_sweep_runs_from_a_script_on_standard_input():
    # `python - < run.py`: worker processes cannot re-import a __main__ read from stdin
    pytest.importorskip("joblib")
    run = subprocess.run([sys.executable, "-"], input=SCRIPT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    accuracies = [float(v) for v in run.stdout.split()[1:]]
    X, y = fastmlp.datasets.circles(300, seed=0)
    expected = fastmlp.sweep(X, y, {"lr": [0.1, 0.5], "n_hidden": [3, 6]}, epochs=2, n_jobs=1, as_frame=False)
    assert accuracies == [round(r["accuracy"], 6) for r in expected]


def test_sweep_progress_counts_models(data, capsys):
    X, y, _ = data
    fastmlp.sweep(X[:100], y[:100], {"lr": [0.1, 0.2, 0.3]}, n_jobs=1, progress=True, as_frame=False)
    assert "3/3" in capsys.readouterr().err
