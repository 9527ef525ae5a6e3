"""Numba is an optional extra: without it, everything but the "numba" backend works,
and nothing but that backend ever imports it."""

import subprocess
import sys
import textwrap


def run_python(code):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600)


def test_import_and_auto_training_never_import_numba():
    out = run_python("""
        import sys, numpy as np
        import fastmlp
        assert "numba" not in sys.modules, "import fastmlp imported numba"
        X, y = fastmlp.datasets.circles(200, seed=0)
        for batch in (1, 10, 200):
            h = fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, epochs=2, batch_size=batch)
        fastmlp.evaluate(fastmlp.MLP(2, 4, 2), X, y)
        assert "numba" not in sys.modules, "training with backend='auto' imported numba"
        print("ok", h.backend)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["ok", "cython"]


def test_package_works_without_numba():
    out = run_python("""
        import sys
        sys.modules["numba"] = None          # import numba -> ImportError, as where it is not installed
        import numpy as np, fastmlp
        assert "numba" not in fastmlp.available_backends()
        assert "numba" in fastmlp.backends.unavailable_backends()
        X, y = fastmlp.datasets.circles(100, seed=0)
        h = fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, backend="auto")
        try:
            fastmlp.train(fastmlp.MLP(2, 4, 2), X, y, backend="numba")
        except ValueError as e:
            message = str(e)
        else:
            raise AssertionError("no error")
        print(h.backend)
        print(message)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    backend, message = out.stdout.strip().split("\n")
    assert backend == "cython"
    assert message.startswith("backend 'numba' is not available")
    assert 'pip install "fastmlp[numba]"' in message and "['numpy', 'cython']" in message


def test_cli_works_without_numba():
    out = run_python("""
        import sys
        sys.modules["numba"] = None
        from fastmlp.cli import main
        assert main(["train", "--epochs", "3"]) == 0
        assert main(["info"]) == 0
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy" in out.stdout
    assert "backend numba unavailable" in out.stdout and "fastmlp[numba]" in out.stdout
