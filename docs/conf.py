"""Sphinx configuration of the egnn documentation (``make docs``; strict: ``-W --keep-going -n``).

The pages are Markdown (MyST); the API reference comes from the docstrings through autodoc + napoleon (Google
style, with the project's own ``Shapes:`` section); the CLI reference and the pretrained-model table are generated
from the code at build time by ``_ext/egnn_docs.py``. Nothing here needs the network, to build or to read: maths is
rendered in the reader's browser by MathJax 3, copied into the site from the ``sphinx-mathjax-offline`` package.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))

import egnn  # noqa: E402

project = "egnn"
author = "the egnn developers"
copyright = "the egnn developers"  # noqa: A001
version = release = egnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "myst_parser",
    "egnn_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# result folders that live beside the pages (their files are linked or shown, they are not pages)
exclude_patterns = ["_build", "_generated", "own_data", "qm9_recipe", "timing_loops", "images/README.md"]

html_theme = "furo"
html_title = f"egnn {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_class_signature = "mixed"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = ["Shapes"]
napoleon_use_rtype = False

# strict: every reference into egnn must resolve. References into other packages (torch, numpy, ase, the
# standard library) are not checked: their inventories would have to be downloaded at build time.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|ase|os|pathlib|collections|typing|argparse|dataclasses|json|io|abc)(\..*)?"),
    (r"py:.*", r"(Tensor|Path|PathLike|Any|Callable|Iterator|Iterable|Sequence|Mapping|NamedTuple|Generator)"),
    (r"py:.*", r"(ndarray|Module|Calculator|Atoms|np\.ndarray|Dataset|DataLoader|Self|T)"),
    # private helper types in signatures (``_Frame``): deliberately not documented
    (r"py:class", r"egnn\..*\._[A-Za-z]\w*"),
]
