"""Numba-specific promises: the backend works where nothing can be cached, compiles
user code as without fastmlp, and lists non-zeros correctly on every target.
(tests/test_optional_numba.py checks that everything else works without it.)"""

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
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)))
        assert out.returncode == 0, out.stderr[-3000:]
        # the instructions only: symbol names (and the strings holding them) carry a
        # per-process counter of compiled functions
        lines = [line.strip() for line in out.stdout.splitlines()]
        return "\n".join(re.sub(r"_ZN\w+|\.L\w+", "SYMBOL", line) for line in lines if line[:1].isalpha())

    alone = instructions(textwrap.dedent(user_code))
    after = instructions(textwrap.dedent(use_fastmlp) + textwrap.dedent(user_code))
    assert "vfmadd" in alone or "mul" in alone, alone[:2000]
    assert after == alone


NONZERO_CHECK = """
    import numpy as np
    from fastmlp._kernels import _nb
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        for n in (1, 15, 16, 17, 33, 784):
            for density in (0.0, 0.05, 0.2, 0.9, 1.0):
                x = (rng.random(n) * (rng.random(n) < density)).astype(dtype)
                x[rng.random(n) < 0.05] = -0.0
                if n > 3:
                    x[1], x[2], x[3] = np.nan, np.inf, np.finfo(dtype).smallest_subnormal
                idx = np.full(n, -1, np.intp)
                k = _nb._nonzeros(x, idx)
                expected = np.flatnonzero((x != 0) | np.isnan(x))
                assert k == len(expected) and (idx[:k] == expected).all(), (dtype, n, density)
    print("ok", _nb._COMPRESS)
"""


def test_nonzero_scan_with_and_without_avx512(tmp_path):
    """The scan that lists the non-zero inputs has a compress-store version (AVX-512
    targets) and a scalar one (others); both must list exactly the non-zeros, NaN
    included and -0.0 excluded. NUMBA_CPU_NAME=generic makes Numba compile for a
    target without AVX-512, as on such machines."""
    import os
    runs = {"host": {}, "generic": {"NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(tmp_path)}}
    seen = {}
    for name, extra in runs.items():
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(NONZERO_CHECK)], capture_output=True,
                             text=True, timeout=600, env=dict(os.environ, **extra))
        assert out.returncode == 0, (name, out.stderr[-3000:])
        assert out.stdout.split()[0] == "ok"
        seen[name] = out.stdout.split()[1]
    assert seen["generic"] == "False"  # the generic target takes the scalar loop
    avx512 = " avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else None
    if avx512 is not None:
        assert seen["host"] == str(avx512)
