"""The batch size up to which "auto" trains on dense inputs row by row, measured here.

For dense inputs (more than half non-zero), the sparse path takes each example's
row whole (a pass over Wh per example) and the BLAS path a batch's GEMMs (a call
per batch, at the GEMM rate of the batch size). Which is faster at batches of 2 to
31 depends on the CPU and on the BLAS's kernels for small GEMMs, by more than one
constant can cover (docs/design/kernels.md has the measurements).

So the crossing is measured, once per machine, backend, dtype, thread count and
size of first layer, the first time "auto" needs it: both paths time epochs of a
network with every input non-zero at batches of 2 to 24, in turns, and the
threshold with the least time over them all (``least_cost``) is kept in a JSON
file in the user's cache directory (``FASTMLP_CACHE_DIR``, else
``$XDG_CACHE_HOME/fastmlp`` or ``~/.cache/fastmlp``). ``fastmlp info`` shows the
value and where it came from.

The crossing moves with the layer's size: a GEMM call's own cost is the same for a
small layer, the rows' work shrinks with it, so small layers take rows up to larger
batches. First layers of LARGE_LAYER_MIN weights and more are measured on the
MNIST-sized network (784-100-10); smaller ones on a 64-64-10 network, whose
measurement costs a fraction of the large one's, so a small network's first
training does not pay for the large measurement, and takes a crossing that
describes it (the figures are in docs/design/kernels.md).

The path is part of the arithmetic, so results are bitwise reproducible for a
build level, cache sizes and this value: ``FASTMLP_DENSE_ROWS_MAX`` (a batch size)
pins it, to reproduce a run from another machine, or to skip the measurement.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

VAR = "FASTMLP_DENSE_ROWS_MAX"
CACHE_DIR_VAR = "FASTMLP_CACHE_DIR"
FILE = "dense_rows.json"
CANDIDATES = (2, 3, 4, 6, 8, 10, 12, 16, 24)  # batches where one GEMM call may cost more than the rows
SHAPE = (784, 100, 10)  # the network measured for first layers of LARGE_LAYER_MIN weights and more
SMALL_SHAPE = (64, 64, 10)  # the network measured for smaller first layers
LARGE_LAYER_MIN = 8192  # first-layer weights (inputs x hidden units)
EXAMPLES = 1920  # per timed epoch: whole batches of every candidate, and a call's own cost below 2%
REPEATS = 3  # epochs of each path and batch, in turns; the medians compared


class Crossover(NamedTuple):
    rows_max: int  # dense inputs take the sparse path row by row up to this batch size
    source: str  # where the value came from


def parse_rows_max(text):
    """The batch size in ``text``; ValueError naming FASTMLP_DENSE_ROWS_MAX where it
    is not a whole number of at least 1."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{VAR} must be a batch size (a whole number of at least 1), got {text!r}")
    return value


def shape_for(n_inputs, n_hidden):
    """The network whose measured crossing stands for a first layer of ``n_inputs``
    x ``n_hidden`` weights: SHAPE from LARGE_LAYER_MIN weights, else SMALL_SHAPE."""
    return SHAPE if n_inputs * n_hidden >= LARGE_LAYER_MIN else SMALL_SHAPE


def cache_dir():
    """Where measurements are kept: FASTMLP_CACHE_DIR, else $XDG_CACHE_HOME/fastmlp,
    else ~/.cache/fastmlp."""
    if os.environ.get(CACHE_DIR_VAR, "").strip():
        return Path(os.environ[CACHE_DIR_VAR])
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "fastmlp"


@functools.cache
def _machine():
    """The package's version, the CPU, and the BLAS libraries with their kernels:
    fixed for the process, so found once (threadpoolctl's look at the loaded
    libraries costs milliseconds, paid otherwise at every training's choice of path)."""
    from .._version import __version__
    from .caches import cpu_description
    from .epochs import blas_controller

    blas = sorted(
        f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')}"
        for p in blas_controller().info()
        if p.get("user_api") == "blas"
    )
    return f"fastmlp {__version__} | {' '.join(cpu_description())} | {'; '.join(blas) or 'no BLAS'}"


def machine_key(kernels, dtype, n_threads, shape=SHAPE):
    """What the crossing depends on: the package's version, the CPU, the BLAS and
    its kernels, the backend and its build level, the dtype, the threads and the
    measured network's first layer."""
    level = kernels.clone_level() if hasattr(kernels, "clone_level") else None
    backend = kernels.__name__.rsplit(".", 1)[-1]
    dims = f"{shape[0]}x{shape[1]} first layer"
    return f"{_machine()} | {backend} level {level} | {np.dtype(dtype).name} | {n_threads} threads | {dims}"


def _read(path):
    """The file's measurements, or {} where it is missing or unreadable (it is then
    measured again and rewritten)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(key, entry):
    """Adds ``entry`` under ``key`` to the cache file, atomically; the error's text
    where it could not be written (the value is then kept for this process only)."""
    from ..model import _atomic_write

    path = cache_dir() / FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = entry
        text = json.dumps(data, indent=1, sort_keys=True)
        _atomic_write(path, lambda fh: fh.write(text.encode()))
    except OSError as exc:
        return f"not saved: {exc}"
    return None


def measure(
    kernels, dtype, n_threads, shape=SHAPE, candidates=CANDIDATES, examples=EXAMPLES, repeats=REPEATS, timer=None
):
    """``(rows_max, {batch: (rows seconds, GEMM seconds)})``: each of ``candidates``
    timed on the sparse path's rows and on the GEMMs (the median of ``repeats``
    epochs of ``examples`` dense examples through a network of layer sizes
    ``shape``, taken in turns on ``n_threads`` threads),
    and the threshold that costs least over them all: rows up to it, GEMMs above
    (``least_cost``). ``timer(batch, path, run)`` returns the seconds that ``run()``,
    an epoch of that path at that batch size, takes (by default: runs it, timed)."""
    from .. import reference as ref
    from . import epochs

    timer = timer or _timed
    rng = np.random.default_rng(0)
    X = (rng.random((examples, shape[0])) + 1e-3).astype(dtype)
    labels = rng.integers(0, shape[-1], examples).astype(np.intp)
    perm = rng.permutation(examples)
    runs = {}
    for b in candidates:
        for path in ("sparse", "blas"):
            params = ref.init_params(*shape, dtype=dtype, seed=0)
            runner = epochs.EpochRunner(kernels, params, X, labels, batch_size=b, path=path, n_threads=n_threads)
            runs[b, path] = runner
    seconds = {k: [] for k in runs}
    with epochs.blas_limits(True):
        for runner in runs.values():  # compiles, faults in the workspaces
            runner.epoch(perm, 1e-3)
        for _ in range(repeats):
            for k, runner in runs.items():
                seconds[k].append(timer(*k, lambda runner=runner: runner.epoch(perm, 1e-3)))
    table = {b: (statistics.median(seconds[b, "sparse"]), statistics.median(seconds[b, "blas"])) for b in candidates}
    return least_cost(table), table


def least_cost(table):
    """The batch size t (1 or one of the table's) for which rows up to t and GEMMs
    above take the least time summed over the table's batches, ``{batch: (rows,
    GEMMs)}``; the smallest such t. Where the two curves cross once, their crossing;
    a single noisy point does not move it far."""
    batches = sorted(table)
    cost = {t: sum(table[b][0] if b <= t else table[b][1] for b in batches) for t in [1, *batches]}
    return min(cost, key=lambda t: (cost[t], t))


def _timed(batch, path, run):
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


_known = {}
_lock = threading.Lock()


def cached(kernels, dtype, n_threads, shape=SHAPE):
    """The crossing from FASTMLP_DENSE_ROWS_MAX, this process, or the cache file,
    without measuring; None where none of them has it."""
    if os.environ.get(VAR, "").strip():
        return Crossover(parse_rows_max(os.environ[VAR]), VAR)
    key = machine_key(kernels, dtype, n_threads, shape)
    if key in _known:
        return _known[key]
    path = cache_dir() / FILE
    entry = _read(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("rows_max"), int) and entry["rows_max"] >= 1:
        found = Crossover(entry["rows_max"], f"{_measured(entry, shape)}, kept in {path}")
        _known[key] = found
        return found
    return None


def _measured(entry, shape):
    return f"measured {entry.get('date', '')} on a {shape[0]}x{shape[1]} first layer"


def crossover(kernels, dtype, n_threads, shape=SHAPE):
    """The batch size up to which dense inputs take the sparse path's rows on
    ``kernels`` in ``dtype`` on ``n_threads`` threads, for first layers that
    ``shape`` stands for (``shape_for``): ``cached``, else measured now (once) and
    kept."""
    found = cached(kernels, dtype, n_threads, shape)
    if found is not None:
        return found
    with _lock:
        found = cached(kernels, dtype, n_threads, shape)
        if found is not None:
            return found
        rows_max, table = measure(kernels, dtype, n_threads, shape)
        entry = {
            "rows_max": rows_max,
            "date": time.strftime("%Y-%m-%d"),
            "seconds": {str(b): list(t) for b, t in table.items()},
        }
        key = machine_key(kernels, dtype, n_threads, shape)
        unsaved = _save(key, entry)
        source = f"{_measured(entry, shape)}, " + (unsaved or f"kept in {cache_dir() / FILE}")
        _known[key] = Crossover(rows_max, source)
        return _known[key]


def forget():
    """Drops what this process knows (the cache file stays): for tests."""
    _known.clear()
