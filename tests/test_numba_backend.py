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
