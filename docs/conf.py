"""Sphinx settings for the pnn_mpi documentation site (``make docs``).

Pages are Markdown (MyST), so text moves between the README and the site as is; the API
reference is generated from the docstrings (autodoc). ``make docs`` builds with -W -n:
a warning, an unresolved reference or a broken internal link or #anchor fails the build.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pnn_mpi, not an installed one

from pnn_mpi.common.version import __version__  # noqa: E402

project = "pnn_mpi"
author = "the pnn_mpi authors"
release = version = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"pnn_mpi {__version__}"

# Every heading down to ####, and the README's section titles, are link targets: [text](page.md#anchor).
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

# The API pages import the modules: optional libraries they load lazily need not be installed.
autodoc_mock_imports = ["torch", "numba", "matplotlib"]
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures' types are in the code; -n would demand a page for numpy's and mpi4py's own
autodoc_default_options = {"members": True, "show-inheritance": False}
nitpicky = True
