"""scikit-learn's own tests of its MLPs, run against fastmlp's estimators.

The module ``sklearn/neural_network/tests/test_mlp.py`` ships in the scikit-learn
wheel. The test copies it, swaps its import of ``MLPClassifier`` and
``MLPRegressor`` for fastmlp's, and runs it in a fresh pytest: every test passes
except those listed below, each with its reason.
"""

import subprocess
import sys
from pathlib import Path

import pytest

sklearn = pytest.importorskip("sklearn")

IMPORT = "from sklearn.neural_network import MLPClassifier, MLPRegressor"

# The tests left out: each reads or writes scikit-learn's private attributes.
EXCLUDED = {
    "test_fit": "assigns coefs_ and calls the private _forward_pass",
    "test_gradient": "calls the private _loss_grad_lbfgs (fastmlp's gradient is tested against finite differences)",
    "test_learning_rate_warmstart": "reads the private _optimizer",
    "test_adaptive_learning_rate": "reads the private _optimizer",
}

# scikit-learn's conftest gives its tests this fixture
CONFTEST = """
import pytest


@pytest.fixture
def global_random_seed():
    return 42
"""


def test_scikit_learns_mlp_tests_pass_against_fastmlps_estimators(tmp_path):
    source = Path(sklearn.__file__).parent / "neural_network" / "tests" / "test_mlp.py"
    if not source.exists():
        pytest.skip(f"this scikit-learn ships without its tests ({source})")
    text = source.read_text()
    assert text.count(IMPORT) == 1, "scikit-learn's test module no longer imports its estimators in one line"
    (tmp_path / "test_mlp_fastmlp.py").write_text(
        text.replace(IMPORT, "from fastmlp.sklearn import MLPClassifier, MLPRegressor")
    )
    (tmp_path / "conftest.py").write_text(CONFTEST)
    deselect = [arg for name in EXCLUDED for arg in ("--deselect", f"test_mlp_fastmlp.py::{name}")]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore",
            "test_mlp_fastmlp.py",
            *deselect,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "failed" not in summary and "error" not in summary and " passed" in summary, summary
    assert f"{len(EXCLUDED)} deselected" in summary, summary
