"""The documentation builds offline with warnings as errors, its gallery makes its
figures, and the API reference lists every public name."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))
MODULES = [
    "fastmlp",
    "fastmlp.network",
    "fastmlp.tables",
    "fastmlp.datasets",
    "fastmlp.reference",
    "fastmlp.schedules",
    "fastmlp.sweeps",
    "fastmlp.plot",
    "fastmlp.sklearn",
    "fastmlp.backends",
    "fastmlp.bench",
]


def test_the_api_reference_lists_every_public_name():
    text = (DOCS / "api.rst").read_text()
    for name in MODULES:
        module = importlib.import_module(name)
        listed = set(
            re.findall(
                rf"^\.\. currentmodule:: {re.escape(name)}\n\n\.\. autosummary::\n"
                rf"   :toctree: generated\n\n((?:   \S+\n)+)",
                text,
                re.M,
            )
        )
        assert listed, f"docs/api.rst has no autosummary for {name}"
        names = set(listed.pop().split())
        public = {
            n
            for n in module.__all__
            if not (name == "fastmlp" and n in ("datasets", "reference", "tables", "__version__"))
        }
        assert public <= names, f"{name}: not in docs/api.rst: {sorted(public - names)}"


def test_the_gallery_covers_the_practicals_questions():
    titles = " ".join(p.read_text().split("\n", 3)[1].lower() for p in EXAMPLES)
    topics = ("circles", "examples", "batch", "learning rate", "backpropagation", "mnist", "sweep", "benchmark")
    for topic in topics + ("activation", "layers"):
        assert topic in titles, topic


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    pytest.importorskip("sphinx")
    pytest.importorskip("sphinx_gallery")
    out = tmp_path_factory.mktemp("html")
    env = dict(os.environ, MPLBACKEND="Agg")
    # offline: no proxy may be used, and nothing in conf.py fetches
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[var] = "http://127.0.0.1:9"
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-b", "html", "-q", str(DOCS), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    return out


def test_docs_build_with_every_page(built_docs):
    for page in (
        "index",
        "getting_started",
        "api",
        "performance",
        "changelog",
        "contributing",
        "user_guide/network",
        "user_guide/sweeps",
        "user_guide/cli",
        "auto_examples/index",
        "generated/fastmlp.train",
        "generated/fastmlp.sklearn.MLPClassifier",
    ):
        assert (built_docs / f"{page}.html").exists(), page
    cli = (built_docs / "user_guide" / "cli.html").read_text()
    assert "--momentum" in cli and "--explain" in cli  # the help of each command, made at build time


def test_every_gallery_example_has_figures_that_are_not_blank(built_docs):
    from PIL import Image

    for example in EXAMPLES:
        page = built_docs / "auto_examples" / f"{example.stem}.html"
        assert page.exists(), example.name
        images = sorted((built_docs / "_images").glob(f"sphx_glr_{example.stem}_[0-9][0-9][0-9].png"))
        assert images, f"{example.name} made no figure"
        for image in images:
            pixels = np.asarray(Image.open(image).convert("L"), dtype=float)
            assert pixels.shape[0] > 200 and pixels.shape[1] > 300, image.name
            # a blank figure is one colour; a plot has axes, text and data in many shades
            assert pixels.std() > 10 and len(np.unique(pixels)) > 20, f"{image.name} looks blank"
            assert image.name in page.read_text(), f"{image.name} is not on {page.name}"
