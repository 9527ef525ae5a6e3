"""Sphinx configuration of the fastmlp documentation.

Build (offline; the gallery's examples run and make their figures):

    python -m sphinx -W -b html docs docs/_build/html

MNIST examples read the IDX files from $FASTMLP_MNIST_DIR and otherwise use
scikit-learn's bundled 8x8 digits as a stand-in.
"""

import os
import sys
import warnings
from pathlib import Path

import fastmlp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `examples` imports nothing from here, but autodoc finds the package either way

project = "fastmlp"
author = "fastmlp developers"
copyright = "fastmlp developers"
version = release = fastmlp.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "auto_examples/*.ipynb", "auto_examples/*.py"]
templates_path = ["_templates"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ---- API reference: autosummary pages from the docstrings (numpydoc style) ----
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_default_options = {
    "members": True,
    "inherited-members": False,
    "show-inheritance": False,
    # scikit-learn's metadata-routing methods, which every estimator gets; documented there
    "exclude-members": "set_fit_request, set_partial_fit_request, set_score_request, get_metadata_routing",
}
autodoc_typehints = "none"  # the signatures keep their hints; numpydoc's sections carry the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# ---- the gallery: examples run at build time, their figures saved as PNG ----
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg", category=UserWarning)
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "matplotlib_animations": False,
    "show_memory": False,
    "reset_modules": ("matplotlib",),
    "capture_repr": ("_repr_html_", "__repr__"),
    "min_reported_time": 1,
}

# ---- HTML ----
html_theme = "pydata_sphinx_theme"
html_title = f"fastmlp {release}"
html_static_path = ["_static"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False


# ---- the command line's help, written at every build (user_guide/cli.md includes it) ----
def _write_cli_help():
    import contextlib
    import io

    from fastmlp.cli import build_parser

    out = Path(__file__).parent / "_generated"
    out.mkdir(exist_ok=True)
    for command in ("train", "bench", "sweep", "info"):
        text = io.StringIO()
        with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
            build_parser().parse_args([command, "--help"])
        os.environ.setdefault("COLUMNS", "100")
        (out / f"cli_{command}.txt").write_text(text.getvalue())


os.environ["COLUMNS"] = "100"  # argparse wraps the help at this width
_write_cli_help()
