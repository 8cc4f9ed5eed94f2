"""Sphinx configuration: numpydoc, sphinx-gallery, MyST, pydata-sphinx-theme; builds
offline (``python -m sphinx -W -b html docs docs/_build/html``)."""

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import unfolded_sbl  # noqa: E402

project = "unfolded_sbl"
author = "the unfolded_sbl developers"
copyright = "2026, the unfolded_sbl developers"
release = version = unfolded_sbl.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary", "sphinx.ext.mathjax",
              "numpydoc", "sphinx_gallery.gen_gallery", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.md5", "auto_examples/*.json"]
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]

autosummary_generate = True
autodoc_default_options = {"inherited-members": False}
numpydoc_show_class_members = False
numpydoc_validation_checks = set()

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

html_theme = "pydata_sphinx_theme"
html_title = "unfolded_sbl"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2,
                      "use_edit_page_button": False}
html_static_path = []


def _results_page(source, target, title):
    """A benchmark results file as a page, its figure links pointing at the repository's
    figures (the files are written by the benchmark scripts, not by hand)."""
    text = source.read_text()
    text = re.sub(r"^# .*\n", f"# {title}\n", text, count=1)
    figures = os.path.relpath(ROOT / "benchmarks" / "figures", target.parent)
    text = re.sub(r"\]\((?:\.\./)?figures/", f"]({figures}/", text)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


_results_page(ROOT / "benchmarks" / "RESULTS.md", DOCS / "findings" / "results.md",
              "Benchmark results")
_results_page(ROOT / "benchmarks" / "studies" / "RESULTS.md", DOCS / "findings" / "studies.md",
              "Studies")
