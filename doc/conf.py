"""Sphinx configuration of the skdeepcluster documentation.

Build (runs the gallery examples, a few minutes on a laptop CPU)::

    python -m sphinx -W -b html doc doc/_build/html

Build without running the examples (CI)::

    python -m sphinx -W -b html -D plot_gallery=0 doc doc/_build/html
"""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("MPLBACKEND", "Agg")

import skdeepcluster  # noqa: E402

project = "skdeepcluster"
author = "the skdeepcluster developers"
copyright = "2026, the skdeepcluster developers"
release = skdeepcluster.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = []
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.rst"]
html_theme = "alabaster"
html_static_path = []
html_title = f"skdeepcluster {release}"

# autodoc / autosummary / numpydoc
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks = set()

# sphinx-gallery: examples are run by default; `-D plot_gallery=0` skips running them.
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
}
