"""Sphinx configuration of the manual: ``make docs`` builds it into docs/_build/html.

The reference (docs/reference/) is rendered from the code by the local extension
docs/_ext/batchprof_reference.py; nothing in it is copied by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

from pytest_batchprof._version import __version__  # noqa: E402

project = "pytest-batchprof"
author = "the pytest-batchprof authors"
copyright = "the pytest-batchprof authors"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "batchprof_reference",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"

html_theme = "furo"
html_title = f"pytest-batchprof {release}"
html_static_path: list[str] = []

# Quotes and ellipses only: "--batchprof-epochs" in prose keeps its two hyphens.
smartquotes_action = "qe"
