"""Hyperparameter sweeps: many trainings, on local processes (joblib) or a Dask cluster.

    table = fastmlp.sweep(X, y, {"lr": [0.01, 0.1], "n_hidden": [50, 100]},
                          validation_data=(X_test, y_test), epochs=2, repeats=4)

Small networks train in milliseconds, so what users run at scale is many
trainings: the influence of the learning rate, the hidden size, the number of
examples, the batch size and the seed. Every grid point is trained from scratch
with one BLAS thread (so workers do not oversubscribe the cores, and results are
the same wherever a point runs); a point that fails (diverges, a bad value) is
recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._kernels.epochs import available_cpus
from ._progress import Progress
from ._typing import PathLike, Targets
from ._validation import check_nonnegative_int, check_positive_int, check_X, check_y

if TYPE_CHECKING:
    import pandas
    from dask import distributed
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULTS",
    "RESULT_COLUMNS",
    "expand_grid",
    "run_point",
    "sweep",
    "plot_sweep",
]

# Grid keys and the defaults of the keys a grid leaves out.
DEFAULTS = {
    "lr": 0.1,
    "n_hidden": 100,
    "activation": "tanh",
    "batch_size": 64,
    "n_samples": None,  # all of X
    "loss": "ce",
    "init": "xavier",
    "dtype": "float32",
    "backend": "auto",
    "epochs": 1,
    "seed": 0,
    "momentum": 0.0,
    "nesterov": False,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
}
RESULT_COLUMNS = ("loss_final", "accuracy", "val_loss", "val_accuracy", "seconds", "error")


def expand_grid(grid: Mapping[str, Any], repeats: int = 1, epochs: int = 1) -> list[dict[str, Any]]:
    """The list of grid points: the cartesian product of ``grid``'s values, times
    ``repeats`` seeds (seed, seed + 1, ...) unless the grid sets "seed" itself.

    Examples
    --------
    >>> points = fastmlp.sweeps.expand_grid({"lr": [0.1, 0.3], "n_hidden": 8}, repeats=2)
    >>> [(p["lr"], p["n_hidden"], p["seed"]) for p in points]
    [(0.1, 8, 0), (0.1, 8, 1), (0.3, 8, 0), (0.3, 8, 1)]
    """
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty dict of parameter -> list of values, got {grid!r}")
    unknown = set(grid) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"grid has unknown parameters {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    values = {}
    for key, vals in grid.items():
        vals = list(vals) if isinstance(vals, (list, tuple, np.ndarray, range)) else [vals]
        if not vals:
            raise ValueError(f"grid[{key!r}] is empty")
        values[key] = vals
    repeats = check_positive_int(repeats, "repeats")
    base = dict(DEFAULTS, epochs=epochs)
    points = []
    for combo in itertools.product(*values.values()):
        point = dict(base, **dict(zip(values, combo, strict=True)))
        for r in range(1 if "seed" in grid else repeats):
            points.append(dict(point, seed=point["seed"] + r))
    return points


def run_point(
    point: Mapping[str, Any], X: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, Any]:
    """Train one model for ``point`` and return its record (point + results).

    Runs with one BLAS thread. Errors (divergence, bad values) are caught and
    recorded in the "error" column."""
    from threadpoolctl import threadpool_limits

    from . import backends
    from .model import MLP
    from .train import evaluate, train

    # Load the kernel module (and so scipy's BLAS) before limiting the BLAS
    # threads: threadpoolctl limits only the libraries already loaded, and two
    # workers whose BLAS spins two threads each on two cores crawl.
    try:
        backends.kernels(point["backend"])
    except ValueError:
        pass  # an unknown or unavailable backend: train() reports it below

    record = dict(point)
    record.update({k: None for k in RESULT_COLUMNS})
    n_samples = point["n_samples"] or X.shape[0]
    record["n_samples"] = n_samples
    try:
        with threadpool_limits(1, user_api="blas"):
            n_out = int(max(y.max(), validation_data[1].max() if validation_data else 0)) + 1
            model = MLP(
                X.shape[1],
                point["n_hidden"],
                n_out,
                dtype=point["dtype"],
                init=point["init"],
                seed=point["seed"],
                activation=point["activation"],
            )
            t0 = time.perf_counter()
            hist = train(
                model,
                X[:n_samples],
                y[:n_samples],
                epochs=point["epochs"],
                batch_size=point["batch_size"],
                lr=point["lr"],
                loss=point["loss"],
                backend=point["backend"],
                seed=point["seed"],
                momentum=point["momentum"],
                nesterov=point["nesterov"],
                weight_decay=point["weight_decay"],
                lr_schedule=point["lr_schedule"],
            )
            record["seconds"] = time.perf_counter() - t0
            record["loss_final"], record["accuracy"] = evaluate(model, X[:n_samples], y[:n_samples], point["loss"])
            if validation_data is not None:
                record["val_loss"], record["val_accuracy"] = evaluate(model, *validation_data, point["loss"])
            record["backend"] = hist.backend
    except Exception as exc:  # recorded, the sweep goes on
        record["error"] = f"{type(exc).__name__}: {exc}"
    return record


def sweep(
    X: npt.ArrayLike,
    y: Targets,
    grid: Mapping[str, Any],
    *,
    validation_data: tuple[npt.ArrayLike, Targets] | None = None,
    epochs: int = 1,
    repeats: int = 1,
    client: distributed.Client | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
    as_frame: bool | None = None,
) -> pandas.DataFrame | list[dict[str, Any]]:
    """Train one model per grid point (and repeat) and return the table of results.

    Parameters
    ----------
    X, y : training data (as for ``fastmlp.train``)
    grid : dict
        Parameter -> list of values, over "lr", "n_hidden", "activation", "batch_size",
        "n_samples" (train on the first N examples), "loss", "init", "dtype",
        "backend", "epochs", "seed", "momentum", "nesterov", "weight_decay",
        "lr_schedule" (as for ``fastmlp.train``); the rest take ``DEFAULTS``.
    validation_data : (X_val, y_val), optional
        Evaluated at the end of each training.
    epochs : int
        Epochs per training (unless the grid varies "epochs").
    repeats : int
        Trainings per grid point, with seeds 0, 1, ... (unless the grid varies "seed").
    client : dask.distributed.Client, optional
        Run on that cluster: the data is scattered to the workers once, tasks are
        gathered as they complete. Without it, local worker processes (joblib's
        loky executor; ``pip install 'fastmlp[sweep]'``).
    n_jobs : int, optional
        Local worker processes (default: the number of cores); 1 runs in this
        process and needs no joblib.
    progress : bool
        A progress bar over the trainings on stderr (tqdm where installed, else
        one line per model).
    as_frame : bool, optional
        Return a pandas DataFrame (default: when pandas is installed) or a list of dicts.

    Returns
    -------
    pandas.DataFrame or list of dict
        One record per training, in grid order: the point's parameters and
        "loss_final", "accuracy" (on the training data), "val_loss",
        "val_accuracy", "seconds" (training time) and "error" (None, or the error
        of a failed point).

    Examples
    --------
    >>> X, y = fastmlp.datasets.circles(300, seed=0)
    >>> table = fastmlp.sweep(X, y, {"lr": [0.1, 1e39], "n_hidden": [4, 8]}, epochs=2, n_jobs=1,
    ...                       as_frame=False)
    >>> [(r["lr"], r["n_hidden"], r["error"] is None) for r in table]
    [(0.1, 4, True), (0.1, 8, True), (1e+39, 4, False), (1e+39, 8, False)]
    >>> table[2]["error"].split(":")[0]
    'DivergenceError'
    """
    X = check_X(X, "X", dtype=np.float64 if np.asarray(X).dtype == np.float64 else np.float32)
    y = _check_labels(y, X.shape[0], "y")
    if validation_data is not None:
        Xv = check_X(validation_data[0], "validation_data[0]", X.shape[1], X.dtype)
        validation_data = (Xv, _check_labels(validation_data[1], Xv.shape[0], "validation_data[1]"))
    check_nonnegative_int(epochs, "epochs")
    points = expand_grid(grid, repeats, epochs)
    if client is not None:
        records = _run_dask(client, points, X, y, validation_data, progress)
    else:
        n_jobs = available_cpus() if n_jobs is None else check_positive_int(n_jobs, "n_jobs")
        records = _run_local(points, X, y, validation_data, min(n_jobs, len(points)), progress)
    if as_frame is None or as_frame:
        try:
            import pandas as pd
        except ImportError:
            if as_frame:
                raise
        else:
            return pd.DataFrame.from_records(records)
    return records


def _check_labels(y, n_samples, name):
    """check_y, with the number of classes taken from the labels themselves (a
    sweep has no model yet): one-hot columns, or the largest label + 1."""
    arr = np.asarray(y)
    n_out = 2
    if arr.ndim == 2:
        n_out = arr.shape[1]
    elif arr.ndim == 1 and arr.dtype.kind in "biuf" and arr.size and np.isfinite(arr).all():
        n_out = max(2, int(arr.max()) + 1)
    return check_y(arr, n_samples, n_out, name)


def _run_local(points, X, y, validation_data, n_jobs, progress):
    with Progress(len(points), "model", enabled=progress) as bar:
        if n_jobs == 1:
            results = (run_point(point, X, y, validation_data) for point in points)
        else:
            try:
                from joblib import Parallel, delayed
            except ImportError as exc:
                raise ImportError(
                    "a sweep on more than one process needs joblib: pip install 'fastmlp[sweep]' (or pass n_jobs=1)"
                ) from exc
            # loky workers start clean, are reused between sweeps, limit their own
            # OpenMP threads to cores / n_jobs, and receive large arrays memory-mapped
            # rather than pickled once per task.
            parallel = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
            results = parallel(delayed(run_point)(point, X, y, validation_data) for point in points)
        records = []
        for record in results:
            records.append(record)
            bar.update()
        return records


def _run_dask(client, points, X, y, validation_data, progress):
    from dask.distributed import as_completed

    # The data goes to every worker once; tasks are gathered as they finish. joblib's
    # Dask backend is no faster and would need a global ``parallel_config`` around
    # the call, so a client is used directly.
    X_f, y_f = client.scatter([X, y], broadcast=True)
    val_f = client.scatter(validation_data, broadcast=True) if validation_data is not None else None
    futures = [client.submit(run_point, p, X_f, y_f, val_f, pure=False) for p in points]
    index = {f.key: i for i, f in enumerate(futures)}
    records = [None] * len(points)
    with Progress(len(points), "model", enabled=progress) as bar:
        for future in as_completed(futures):
            records[index[future.key]] = future.result()
            bar.update()
    return records


def plot_sweep(table: pandas.DataFrame | list[dict[str, Any]], path: PathLike | None = None) -> Figure:
    """Validation accuracy (training accuracy without validation data) against the
    learning rate, one line per other varied setting, mean over seeds with the
    min-max range shaded. Returns the figure; writes it to ``path`` if given."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(table)
    df = df[df["error"].isna()] if "error" in df else df
    metric = "val_accuracy" if df["val_accuracy"].notna().any() else "accuracy"
    varied = [
        k
        for k in ("n_hidden", "activation", "batch_size", "n_samples", "loss", "init", "dtype", "epochs")
        if df[k].nunique() > 1
    ]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    groups = df.groupby(varied) if varied else [((), df)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        stats = part.groupby("lr")[metric].agg(["mean", "min", "max"])
        label = ", ".join(f"{k}={v}" for k, v in zip(varied, key, strict=True)) or "all"
        ax.plot(stats.index, stats["mean"], marker="o", label=label)
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(f"{len(df)} trainings")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
