"""Numba-specific promises: the backend works where nothing can be cached and
compiles user code as without fastmlp. (tests/test_optional_numba.py checks that
everything else works without it.)"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmlp

pytestmark = pytest.mark.skipif("numba" not in fastmlp.available_backends(), reason="numba not installed")


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)


def test_works_when_no_cache_directory_is_writable():
    """A wheel in a read-only site-packages with a read-only home: Numba finds no
    cache locator and refuses cache=True; the package must still import and train."""
    out = run_python("""
        import numba.core.caching as caching
        caching.CacheImpl._locator_classes = []   # no writable cache location anywhere
        import numpy as np, fastmlp
        assert "numba" in fastmlp.available_backends(), fastmlp.backends.unavailable_backends()
        X, y = fastmlp.datasets.circles(200, seed=0)
        a, b = fastmlp.MLP(2, 5, 2, seed=0), fastmlp.MLP(2, 5, 2, seed=0)
        fastmlp.train(a, X, y, epochs=3, batch_size=7, backend="numba")
        fastmlp.train(b, X, y, epochs=3, batch_size=7, backend="cython")
        np.testing.assert_allclose(a.Wh, b.Wh, rtol=1e-4, atol=1e-6)
        print("ok")
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_users_numba_code_is_compiled_as_without_fastmlp(tmp_path):
    """fastmlp compiles its kernels with an LLVM vectoriser option; a user's own
    Numba function compiled afterwards in the same process must get LLVM's defaults.
    fastmlp's kernels are compiled afresh (an empty cache directory), as on first use."""
    import os
    import re

    user_code = """
        import numba, numpy as np
        @numba.njit
        def axpy(y, a, x):
            for i in range(y.size):
                y[i] += a * x[i]
        axpy(np.zeros(3, np.float32), np.float32(2), np.ones(3, np.float32))
        print(list(axpy.inspect_asm().values())[0])
    """
    use_fastmlp = """
        import numpy as np, fastmlp
        X, y = fastmlp.datasets.circles(100, seed=0)
        for batch in (1, 64):
            fastmlp.train(fastmlp.MLP(2, 20, 2, seed=0), X, y, epochs=1, batch_size=batch, backend="numba")
    """

    def instructions(code):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)),
        )
        assert out.returncode == 0, out.stderr[-3000:]
        # the instructions only: symbol names (and the strings holding them) carry a
        # per-process counter of compiled functions
        lines = [line.strip() for line in out.stdout.splitlines()]
        return "\n".join(re.sub(r"_ZN\w+|\.L\w+", "SYMBOL", line) for line in lines if line[:1].isalpha())

    alone = instructions(textwrap.dedent(user_code))
    after = instructions(textwrap.dedent(use_fastmlp) + textwrap.dedent(user_code))
    assert "vfmadd" in alone or "mul" in alone, alone[:2000]
    assert after == alone


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nl", [1, 2, 3, 4])
def test_lines_values_compute_line_by_line(dtype, nl):
    """The kernels' register values (_nb._Lines): a load, +, - and * with a _Lines
    or a scalar on either side, and a store, give NumPy's values at every offset;
    nothing outside the stored lines changes."""
    import numba

    from fastmlp._kernels import _nb

    n = nl * 64 // np.dtype(dtype).itemsize

    @numba.njit
    def combine(a, b, out, i, j, x, nl):
        numba.literally(nl)
        u = _nb._lines_load(a, i, nl)
        v = _nb._lines_load(b, j, nl)
        w = _nb._lines_zero(nl, a) + x * u - v * u
        _nb._lines_store(out, i, (w - x) * (2 - v) + u * x)

    rng = np.random.default_rng(nl)
    a = rng.standard_normal(3 * n).astype(dtype)
    b = rng.standard_normal(3 * n).astype(dtype)
    x = dtype(0.75)
    for i, j in ((0, n), (n + 3, 5), (2 * n, 0)):
        out = np.full(3 * n, 7, dtype)
        combine(a, b, out, i, j, x, nl)
        u, v = a[i : i + n], b[j : j + n]
        expected = ((x * u - v * u) - x) * (2 - v) + u * x
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(out[i : i + n], expected, rtol=tol, atol=tol)
        outside = np.delete(out, np.arange(i, i + n))
        assert np.all(outside == 7)


def test_lines_reject_what_they_cannot_hold():
    import numba

    from fastmlp._kernels import _nb

    @numba.njit
    def five_lines(a):
        return _nb._lines_load(a, 0, 5)

    @numba.njit
    def strided(a):
        return _nb._lines_load(a[::2], 0, 1)

    with pytest.raises(numba.core.errors.TypingError, match="1 to 4 cache lines"):
        five_lines(np.zeros(100, np.float32))
    with pytest.raises(numba.core.errors.TypingError, match="C-contiguous float array"):
        strided(np.zeros(100, np.float32))


def test_borrowed_arrays_are_the_same_arrays():
    """_nb._borrowed drops only the reference counts: the arrays it returns read and
    write the caller's memory, with the same shapes."""
    import numba

    from fastmlp._kernels import _nb

    @numba.njit
    def fill(a, b):
        a, b = _nb._borrowed((a, b))
        a[1, 2] = 5.0
        b[3] = a.shape[0] * 10 + a.shape[1]

    a, b = np.zeros((3, 4)), np.zeros(5, np.int64)
    fill(a, b)
    assert a[1, 2] == 5.0 and a.sum() == 5.0
    assert b.tolist() == [0, 0, 0, 34, 0]
