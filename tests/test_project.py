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
