"""The ``fastmlp`` command: ``fastmlp train``, ``sweep``, ``bench`` and ``info``."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import backends, datasets, network
from ._kernels import caches, epochs, tuning
from ._version import __version__
from .model import MLP
from .train import OPTIMIZERS, evaluate, train

# Per-dataset defaults: the practical's settings for circles, the usual ones for MNIST.
DEFAULTS = {
    "circles": {"hidden": 10, "lr": 0.03, "batch_size": 10, "epochs": 100},
    "mnist": {"hidden": 100, "lr": 0.1, "batch_size": 64, "epochs": 10},
}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


_CLONES = {4: "x86-64-v4 (AVX-512)", 3: "x86-64-v3 (AVX2 + FMA)", 1: "the x86-64 baseline"}


def _clone_description(level):
    """What `fastmlp info` says about the C kernels' build (_cy.clone_level)."""
    if level == 0:
        return (
            "built once (a compiler other than gcc 11+, or not x86-64 Linux): "
            "the instructions of the build's compiler flags run here"
        )
    asked = os.environ.get("FASTMLP_KERNEL_LEVEL")
    why = f" (FASTMLP_KERNEL_LEVEL={asked})" if asked else ", the best this CPU has"
    return f"built for x86-64-v4, v3 and the baseline, each with its own vector width; this runs {_CLONES[level]}{why}"


def _number(kind, minimum, what, strict=False):
    """An argparse type: a finite number of ``kind`` at least ``minimum`` (above it
    if ``strict``)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not np.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def _comma_list(kind, what, words=()):
    """An argparse type: comma-separated values of ``kind`` (or one of ``words``)."""

    def parse(text):
        try:
            return [v if v in words else kind(v) for v in text.split(",")]
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return parse


positive_int = _number(int, 1, "a positive integer")
nonnegative_int = _number(int, 0, "a non-negative integer")
positive_float = _number(float, 0.0, "a positive number", strict=True)


def _check_output_dir(path, option):
    import os

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CLIError(f"{option}: directory {directory!r} does not exist")


def _load_data(args, n_circles):
    if args.dataset == "circles":
        X, y = datasets.circles(n_circles, noise=args.noise, seed=args.seed)
        X_test, y_test = datasets.circles(n_circles, noise=args.noise, seed=args.seed + 1)
        return X, y, X_test, y_test
    return datasets.load_mnist(args.data_dir, download=args.data_dir is None)


def cmd_train(args):
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.save:
        _check_output_dir(args.save, "--save")
    if args.plot:
        _check_plot_target(args.plot)
    X, y, X_test, y_test = _load_data(args, args.n_samples)
    n_out = int(max(y.max(), y_test.max())) + 1
    widths = tuple(args.hidden) if isinstance(args.hidden, list) else (args.hidden,)
    model = MLP(
        X.shape[1],
        widths if len(widths) > 1 else widths[0],
        n_out,
        dtype=args.dtype,
        init=args.init,
        seed=args.seed,
        activation=args.activation,
    )
    backend = backends.resolve(args.backend, deep=model.network.deep)
    shape = "-".join(str(n) for n in model.network.sizes)
    print(
        f"fastmlp {__version__}: {args.dataset} {shape} {args.activation}, "
        f"{len(X)} train / {len(X_test)} test, batch {args.batch_size}, lr {args.lr}, "
        f"loss {args.loss}, {args.optimizer}, {args.dtype}, backend {backend}"
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    history = train(
        model,
        X,
        y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        loss=args.loss,
        backend=backend,
        seed=args.seed,
        validation_data=(X_test, y_test),
        progress=progress,
        n_threads=args.threads,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        optimizer=args.optimizer,
        lr_schedule=args.lr_schedule,
    )
    for e in range(history.epochs):
        print(
            f"epoch {e + 1:3d}  loss {history.loss[e]:.4f}  accuracy {history.accuracy[e]:.4f}  "
            f"test_loss {history.val_loss[e]:.4f}  test_accuracy {history.val_accuracy[e]:.4f}  "
            f"{history.seconds[e] * 1e3:.2f} ms"
        )
    test_loss, test_acc = evaluate(model, X_test, y_test, args.loss)
    print(
        f"test accuracy {test_acc:.4f}  (test loss {test_loss:.4f}, "
        f"{sum(history.seconds):.3f} s training, {history.path} path, {history.threads} thread(s))"
    )
    if args.save:
        model.save(args.save)
        print(f"saved {args.save}")
    if args.plot:
        from .plot import training_figure

        fig = training_figure(model, history, X_test, y_test)
        fig.savefig(args.plot, dpi=100)
        print(f"wrote {args.plot}")
    return 0


def _check_plot_target(path):
    try:
        import matplotlib
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install fastmlp[plot]") from None
    matplotlib.use("Agg")
    _check_output_dir(path, "--plot")


def cmd_info(args):
    import scipy
    from threadpoolctl import threadpool_info

    from . import bench

    print(f"fastmlp {__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"backends available: {', '.join(backends.available_backends())}")
    for name, reason in backends.unavailable_backends().items():
        hint = backends.install_hint(name)
        print(f"backend {name} unavailable: {reason}" + (f"; {hint}" if hint else ""))
    print(f"auto backend: {backends.resolve('auto')} at every batch size (the first of {backends.AUTO} that loads)")
    from . import tables

    print(f"activations: {', '.join(tables.ACTIVATIONS)}; losses: {', '.join(tables.LOSSES)}; on every backend")
    for (name, feature), reason in backends.DIFFERENCES.items():
        print(f"backend {name} lacks {feature}: {reason}")
    kern = backends.kernels("auto")
    limit = kern.max_threads() if hasattr(kern, "max_threads") else 1
    print(
        f"threads: {epochs.wanted_threads(None, kern)} by default (cores this process may use: "
        f"{epochs.available_cpus()}; OpenMP's limit here: {limit}), shared by concurrent trainings; "
        f"the results do not depend on them"
    )
    print(
        f"BLAS threads: 1 on the compiled paths; the NumPy reference: 1 below batch "
        f"{epochs.BLAS_THREADS_MIN_BATCH}, else the pool's default"
    )
    middle = (
        "at every batch size (OpenBLAS runs kernels without AVX-512 here)"
        if not epochs.blas_has_avx512_kernels()
        else f"at batches up to {epochs.SMALL_BATCH_MAX} and from {epochs.LARGE_BATCH_MIN}"
    )
    print(
        f"sparse inputs: scipy.sparse always, dense inputs with at most {epochs.SPARSE_DENSITY_MAX:.0%} "
        f"non-zero entries, or {epochs.MIDDLE_DENSITY_MAX:.0%} {middle} (converted to CSR once per fit)"
    )
    print(f"caches: {caches.describe()}; L1d sets the sparse path's blocks of examples (below)")
    chunk, group = getattr(kern, "SPARSE_CHUNK_ROWS", 0), getattr(kern, "SPARSE_GROUP_MIN", 0)
    if group:
        group_bytes = epochs.GROUP_LINES * network.CACHE_LINE
        chunk_rows, (_, block) = epochs.sparse_blocks(kern, group_bytes)
        narrow = epochs.sparse_blocks(kern, network.CACHE_LINE)[1][1]
        print(
            f"batches of {group}+ examples on the sparse path: each touched row of Wh updated once with the "
            f"batch's sum, where the batch's non-zeros are at least the inputs; with one hidden layer, up to "
            f"{block} examples at a time (their dl/dh~ for a group of {epochs.GROUP_LINES} cache lines of hidden "
            f"units, {block} x {group_bytes} bytes, fits in {caches.L1D_SHARE:.0%} of L1d; {narrow} for groups of "
            f"one line)"
        )
    if chunk:
        taken = f"{chunk_rows} (one hidden layer; several: {chunk})" if group else chunk
        print(
            f"large batches on the sparse path: taken {taken} examples at a time (gradient summed, one step) "
            f"where the inputs are no more than the batch's examples, or where the batch is larger than the "
            f"grouped update takes at once and its blocks are not"
        )
    else:
        print("large batches on the sparse path: taken whole")
    crossing = None
    if "blas" in kern.PATHS:
        threads = epochs.wanted_threads(None, kern)
        shapes = (tuning.SHAPE, tuning.SMALL_SHAPE)
        if any(tuning.cached(kern, np.float32, threads, shape) is None for shape in shapes):
            print("measuring where GEMMs overtake dense rows (once on this machine, a few seconds)...", flush=True)
        crossing, small = (tuning.crossover(kern, np.float32, threads, shape) for shape in shapes)
        print(
            f"dense inputs (over {epochs.MIDDLE_DENSITY_MAX:.0%} non-zero), float32: row by row on the sparse path "
            f"up to batch {crossing.rows_max}, GEMMs above ({crossing.source}); for first layers of fewer than "
            f"{tuning.LARGE_LAYER_MIN} weights up to batch {small.rows_max} ({small.source}); {tuning.VAR} pins both"
        )
    print("epoch path of the compiled backends (auto), by batch size and input density:")
    for batch in (1, 4, 10, 32, 64, 256, 60000):
        for kind, density in (("dense", 1.0), ("40% non-zero", 0.4), ("19% non-zero (MNIST)", 0.19)):
            if crossing is None and epochs.needs_crossing(batch, density):
                continue
            path, _, why = epochs.auto_path(batch, density, crossing=crossing)
            print(f"  batch {batch:>5}, {kind:<20} {path:<6} {why}")
    for pool in threadpool_info():
        print(
            f"threadpool {pool.get('internal_api')} {pool.get('version', '')} "
            f"kernel={pool.get('architecture', '?')} threads={pool.get('num_threads')} "
            f"({pool.get('filepath', '').rsplit('/', 1)[-1]})"
        )
    model, simd = bench.cpu_description()
    print(f"CPU: {model} ({simd})")
    if "cython" in backends.available_backends():
        print(f"C kernels: {_clone_description(backends.kernels('cython').clone_level())}")
    if args.explain:
        if "blas" not in getattr(kern, "PATHS", ()):
            raise CLIError("--explain compares the compiled paths; no compiled backend is available")
        print("\nmeasuring both paths at each density and batch size (a few seconds)...", flush=True)
        bench.print_explanation(bench.explain_paths())
    else:
        print("(fastmlp info --explain times both paths here and shows how close auto's choice is to the fastest)")
    return 0


def cmd_bench(args):
    import os

    from . import bench

    present = [v for v in bench.OPENBLAS_VARS if v in os.environ]
    if args.best_blas and present:
        # OpenBLAS reads these once, when it loads: rerun this command without them.
        import subprocess

        env = {k: v for k, v in os.environ.items() if k not in bench.OPENBLAS_VARS}
        print(f"fastmlp bench: unset {', '.join(present)} for this run (OpenBLAS picks its best kernel)", flush=True)
        return subprocess.run([sys.executable, "-m", "fastmlp.cli", *sys.argv[1:]], env=env).returncode
    names = args.backends.split(",") if args.backends else None
    for name in names or ():
        known = backends.available_backends() + ["torch-autograd", "torch-manual", "sklearn"]
        if name not in known:
            raise CLIError(f"--backends: unknown or unavailable backend {name!r}; known: {known}")
    if args.json is not None:
        _check_output_dir(args.json, "--json")
    nets = bench.networks(args.data_dir, args.networks.split(","), tuple(args.hidden) if args.hidden else None)
    rows = bench.run(
        nets,
        args.batch_sizes,
        np.dtype(args.dtype),
        names,
        budget=args.budget,
        activation=args.activation,
        optimizer=args.optimizer,
    )
    if args.json is not None:
        bench.write_json(args.json, bench.environment(np.dtype(args.dtype)), rows)
        print(f"wrote {args.json}")
    if args.gil and "mnist" in nets:
        X, labels, shape = nets["mnist"]
        params = bench.init_params(shape, np.dtype(args.dtype))
        for backend in [b for b in backends.available_backends() if b != "numpy"]:
            one, two = bench.gil_release_ratio(params, np.ascontiguousarray(X, args.dtype), labels, 64, backend)
            print(
                f"GIL: {backend}, MNIST batch 64: one model {one:.3f} s/epoch, two models in two threads "
                f"{two:.3f} s ({two / one:.2f}x the time of one)"
            )
    return 0


def cmd_sweep(args):
    from .sweeps import plot_sweep, sweep

    if args.plot:
        _check_plot_target(args.plot)
    if args.out:
        _check_output_dir(args.out, "--out")
    grid = {
        key: values
        for key, values in [
            ("lr", args.lr),
            ("n_hidden", args.hidden),
            ("activation", args.activation),
            ("batch_size", args.batch_size),
            ("n_samples", args.n_samples),
            ("momentum", args.momentum),
            ("weight_decay", args.weight_decay),
            ("lr_schedule", args.lr_schedule),
        ]
        if values
    }
    if args.nesterov:
        grid["nesterov"] = [True]
    defaults = DEFAULTS[args.dataset]
    grid.setdefault("lr", [defaults["lr"]])
    grid.setdefault("n_hidden", [defaults["hidden"]])
    grid.setdefault("batch_size", [defaults["batch_size"]])
    grid["backend"] = [args.backend]
    grid["dtype"] = [args.dtype]
    args.seed = 0
    X, y, X_test, y_test = _load_data(args, max(grid.get("n_samples", [1000])))
    client = None
    if args.scheduler:
        from dask.distributed import Client

        client = Client(args.scheduler)
    try:
        table = sweep(
            X,
            y,
            grid,
            validation_data=(X_test, y_test),
            epochs=args.epochs,
            repeats=args.repeats,
            client=client,
            n_jobs=args.n_jobs,
            progress=sys.stderr.isatty(),
            as_frame=True,
        )
    finally:
        if client is not None:
            client.close()
    cols = [
        c
        for c in (
            "lr",
            "n_hidden",
            "activation",
            "batch_size",
            "n_samples",
            "momentum",
            "nesterov",
            "weight_decay",
            "lr_schedule",
            "seed",
            "accuracy",
            "val_accuracy",
            "seconds",
            "error",
        )
        if c in table and (c not in ("activation", "momentum", "nesterov", "weight_decay", "lr_schedule") or c in grid)
    ]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = table["error"].notna().sum()
    print(f"{len(table)} trainings, {failed} failed, {table['seconds'].sum():.2f} s of training")
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    if args.plot:
        plot_sweep(table, args.plot)
        print(f"wrote {args.plot}")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # one line, like every other error of the command (argparse adds the usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


fraction = _number(float, 0, "a number in [0, 1)")


def _momentum(text):
    value = fraction(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _add_sgd_options(p, lists=False):
    """The SGD options of train (single values) or of sweep (comma-separated lists)."""
    from . import schedules

    if lists:
        p.add_argument(
            "--momentum",
            default=None,
            type=_comma_list(_momentum, "numbers in [0, 1)"),
            help="comma-separated momenta (torch.optim.SGD's)",
        )
        p.add_argument(
            "--weight-decay",
            default=None,
            type=_comma_list(_number(float, 0, "non-negative numbers"), "non-negative numbers"),
            help="comma-separated weight decays (on Wh and Wy)",
        )
        p.add_argument(
            "--lr-schedule",
            default=None,
            type=_comma_list(str, f"names of {schedules.NAMES}", words=schedules.NAMES),
            help=f"comma-separated schedules: {', '.join(schedules.NAMES)}",
        )
    else:
        p.add_argument(
            "--optimizer",
            choices=OPTIMIZERS,
            default="sgd",
            help="the step: torch.optim.SGD's, Adam's or AdamW's; or lbfgs, L-BFGS on the whole training set "
            "with --epochs its iterations (default: sgd)",
        )
        p.add_argument("--momentum", type=_momentum, default=0.0, help="momentum (torch.optim.SGD's), in [0, 1)")
        p.add_argument(
            "--weight-decay",
            type=_number(float, 0, "a non-negative number"),
            default=0.0,
            help="weight decay on Wh and Wy",
        )
        p.add_argument(
            "--lr-schedule",
            choices=schedules.NAMES,
            default="constant",
            help="the learning rate per epoch (default: constant)",
        )
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum (needs --momentum > 0)")


def _add_activation(p, lists=False):
    from . import tables

    names = tuple(tables.ACTIVATIONS)
    if lists:
        p.add_argument(
            "--activation",
            default=None,
            type=_comma_list(str, f"names of {names}", words=names),
            help=f"comma-separated hidden activations: {', '.join(names)}",
        )
    else:
        p.add_argument("--activation", choices=names, default="tanh", help="the hidden activation (default: tanh)")


def build_parser():
    parser = _Parser(prog="fastmlp", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastmlp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a network and report test accuracy")
    t.add_argument("--dataset", choices=sorted(DEFAULTS), default="circles")
    t.add_argument(
        "--data-dir", default=None, help="directory of the MNIST IDX files (default: the cache, downloading if needed)"
    )
    t.add_argument("--n-samples", type=positive_int, default=1000, help="circles: points per split")
    t.add_argument(
        "--noise", type=_number(float, 0, "a non-negative number"), default=0.1, help="circles: radial noise"
    )
    t.add_argument(
        "--hidden",
        type=_comma_list(positive_int, "comma-separated positive integers"),
        default=None,
        help="hidden units, one width per hidden layer: 100, or 256,128 for two layers",
    )
    _add_activation(t)
    t.add_argument("--epochs", type=nonnegative_int, default=None)
    t.add_argument("--batch-size", type=positive_int, default=None)
    t.add_argument("--lr", type=positive_float, default=None, help="learning rate")
    t.add_argument("--loss", choices=["ce", "mse"], default="ce")
    t.add_argument("--init", choices=["xavier", "normal"], default="xavier")
    t.add_argument("--backend", choices=list(backends.NAMES), default="auto")
    t.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    t.add_argument("--seed", type=nonnegative_int, default=0)
    t.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="threads for the compiled epochs (default: the cores this process may use)",
    )
    _add_sgd_options(t)
    t.add_argument("--save", default=None, metavar="PATH", help="write the trained model (.npz)")
    t.add_argument(
        "--plot",
        default=None,
        metavar="PNG",
        help="write learning curves (and, for 2-D data, the decision boundary) to PNG",
    )
    t.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="time one epoch per backend and batch size, print a table")
    b.add_argument("--networks", default="mnist,circles", help="comma-separated: mnist, circles")
    b.add_argument(
        "--hidden",
        type=_comma_list(positive_int, "comma-separated positive integers"),
        default=None,
        help="the hidden layers' widths of every network (default: 100 for MNIST, 10 for circles); 256,128: two",
    )
    b.add_argument("--data-dir", default=None, help="directory of the MNIST IDX files")
    b.add_argument(
        "--batch-sizes",
        default=[1, 10, 64, 256, "full"],
        type=_comma_list(positive_int, "positive integers or 'full'", words=("full",)),
    )
    b.add_argument(
        "--backends", default=None, help="comma-separated (default: every available one, and torch if installed)"
    )
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    b.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default="sgd",
        help="plain SGD, or Adam at scikit-learn's and PyTorch's defaults (lr 0.001), every peer alike",
    )
    _add_activation(b)
    b.add_argument(
        "--budget", type=positive_float, default=1.0, help="seconds: slower epochs are timed on a prefix and scaled"
    )
    b.add_argument(
        "--best-blas",
        action="store_true",
        help="run with OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset, so OpenBLAS uses its best kernel",
    )
    b.add_argument("--no-gil", dest="gil", action="store_false", help="skip the two-models-in-two-threads measurement")
    b.add_argument(
        "--json", default=None, metavar="PATH", help="also write the measurements and the machine they ran on as JSON"
    )
    b.set_defaults(func=cmd_bench)

    w = sub.add_parser("sweep", help="train many models over a grid of settings (process pool or Dask)")
    w.add_argument("--dataset", choices=sorted(DEFAULTS), default="circles")
    w.add_argument("--data-dir", default=None, help="directory of the MNIST IDX files")
    w.add_argument(
        "--noise", type=_number(float, 0, "a non-negative number"), default=0.1, help="circles: radial noise"
    )
    w.add_argument(
        "--lr", default=None, type=_comma_list(float, "comma-separated numbers"), help="comma-separated learning rates"
    )
    w.add_argument(
        "--hidden", default=None, type=_comma_list(int, "comma-separated integers"), help="comma-separated hidden sizes"
    )
    w.add_argument(
        "--batch-size",
        default=None,
        type=_comma_list(int, "comma-separated integers"),
        help="comma-separated batch sizes",
    )
    w.add_argument(
        "--n-samples",
        default=None,
        type=_comma_list(int, "comma-separated integers"),
        help="comma-separated training-set sizes (first N examples)",
    )
    _add_activation(w, lists=True)
    _add_sgd_options(w, lists=True)
    w.add_argument("--epochs", type=nonnegative_int, default=2)
    w.add_argument("--repeats", type=positive_int, default=1, help="seeds per grid point")
    w.add_argument("--backend", choices=list(backends.NAMES), default="auto")
    w.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    w.add_argument("--n-jobs", type=positive_int, default=None, help="local worker processes (default: cores)")
    w.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a Dask scheduler, e.g. tcp://host:8786, instead of the local pool",
    )
    w.add_argument("--out", default=None, metavar="CSV", help="write the results table")
    w.add_argument("--plot", default=None, metavar="PNG", help="accuracy against learning rate")
    w.set_defaults(func=cmd_sweep)

    i = sub.add_parser("info", help="version, backends, BLAS and threads")
    i.add_argument(
        "--explain",
        action="store_true",
        help="time the sparse and BLAS paths over input densities and batch sizes on this machine",
    )
    i.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (fastmlp info | head): stop quietly, as the
        # Python documentation recommends, instead of reporting an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (ValueError, TypeError, OSError, CLIError) as exc:
        print(f"fastmlp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastmlp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
