"""Numba-specific promises: the backend is optional, and works where nothing can be cached."""

import subprocess
import sys
import textwrap

import pytest

import fastmlp

pytestmark = pytest.mark.skipif("numba" not in fastmlp.available_backends(), reason="numba not installed")


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=600)


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


def test_package_works_without_numba():
    out = run_python("""
        import sys
        sys.modules["numba"] = None          # import numba -> ImportError
        import numpy as np, fastmlp
        assert "numba" not in fastmlp.available_backends()
        assert "numba" in fastmlp.backends.unavailable_backends()
        X, y = fastmlp.datasets.circles(100, seed=0)
        h = fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, backend="auto")
        try:
            fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, backend="numba")
        except ValueError as e:
            assert "not available" in str(e) and "cython" in str(e), e
        else:
            raise AssertionError("no error")
        print("ok", h.backend)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", "cython"]


def test_users_numba_code_is_compiled_as_without_fastmlp():
    """fastmlp compiles its kernels with an LLVM vectoriser option; a user's own
    Numba function compiled afterwards in the same process must get LLVM's defaults."""
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
    alone = run_python(user_code)
    after = run_python(textwrap.dedent(use_fastmlp) + textwrap.dedent(user_code))
    assert alone.returncode == 0 and after.returncode == 0, alone.stderr[-2000:] + after.stderr[-2000:]
    assert "add" in alone.stdout and after.stdout == alone.stdout
