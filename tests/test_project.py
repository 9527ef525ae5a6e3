"""The project's promises about itself: README commands, CI and version agree."""

from pathlib import Path

import fastmlp

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    test_line = next(line for line in lines if "pytest" in line)
    assert test_line in (ROOT / "README.md").read_text().splitlines()
    assert "bash tools/build_wheels.sh" in lines
    assert "bash tools/check_c.sh" in lines


def test_version_is_defined_once():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in text and "fastmlp._version.__version__" in text
    assert fastmlp.__version__.count(".") == 2


def test_ruff_lint_and_format_are_clean():
    import shutil
    import subprocess

    import pytest

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]' installs it)")
    for args in (["check", "."], ["format", "--check", "."]):
        run = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, f"ruff {' '.join(args)}:\n{run.stdout}{run.stderr}"


def test_public_functions_have_type_hints_and_the_package_says_so():
    import inspect

    import fastmlp.datasets
    import fastmlp.reference
    import fastmlp.schedules

    assert (ROOT / "fastmlp" / "py.typed").exists()
    assert 'fastmlp = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()
    functions = [fastmlp.train, fastmlp.evaluate, fastmlp.sweep, fastmlp.MLP.__init__, fastmlp.MLP.predict]
    for module in (fastmlp.datasets, fastmlp.reference, fastmlp.schedules):
        functions += [
            f
            for name, f in vars(module).items()
            if inspect.isfunction(f) and not name.startswith("_") and f.__module__ == module.__name__
        ]
    for f in functions:
        sig = inspect.signature(f)
        missing = [
            p for p in sig.parameters if p not in ("self", "cls") and sig.parameters[p].annotation is inspect._empty
        ]
        assert not missing, f"{f.__qualname__}: parameters without type hints: {missing}"
        assert sig.return_annotation is not inspect._empty or f.__name__ == "__init__", f.__qualname__
