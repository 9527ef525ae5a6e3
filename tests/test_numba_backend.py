"""Numba-specific promises: the backend works where nothing can be cached and
compiles user code as without fastmlp. (tests/test_optional_numba.py checks that
everything else works without it.)"""

import subprocess
import sys
import textwrap

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
