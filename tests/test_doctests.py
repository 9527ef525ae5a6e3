"""The examples in the docstrings and in the README run, and print what they say."""

import doctest
import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
MODULES = [
    "fastmlp.backends",
    "fastmlp.bench",
    "fastmlp.datasets",
    "fastmlp.model",
    "fastmlp.plot",
    "fastmlp.reference",
    "fastmlp.schedules",
    "fastmlp.sklearn",
    "fastmlp.sweeps",
    "fastmlp.train",
]
OPTIONAL = {"fastmlp.sklearn": "sklearn", "fastmlp.plot": "matplotlib"}


def _run(test):
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    runner.run(test, out=sys.stdout.write)  # bound now: doctest swaps sys.stdout while it runs
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module, globs={"np": np, "fastmlp": fastmlp})
    results = [_run(t) for t in tests if t.examples]
    assert all(r.failed == 0 for r in results), f"{name}: doctest failures above"


def test_the_public_api_has_examples():
    examples = 0
    for name in MODULES:
        for test in doctest.DocTestFinder().find(importlib.import_module(name)):
            examples += len(test.examples)
    assert examples >= 30


def readme_doctest():
    """The README's ```pycon blocks as one doctest (the fences are not part of it)."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```pycon\n(.*?)^```", text, re.S | re.M)
    assert blocks, "the README has no ```pycon examples"
    source = "\n".join(blocks)
    return doctest.DocTestParser().get_doctest(source, {"np": np, "fastmlp": fastmlp}, "README.md", str(ROOT), 0)


def test_readme_examples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the README saves a model file
    result = _run(readme_doctest())
    assert result.attempted >= 5 and result.failed == 0
