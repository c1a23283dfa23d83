"""The reference pages cover the code: every public symbol of the library has a docstring, every library module
is on an API page, and the generated CLI reference lists every command and option."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys

from tests.docs import blocks as B

API_MODULES = ["egnn", "egnn.nn", "egnn.ops", "egnn.atoms.model", "egnn.atoms.data", "egnn.atoms.neighbors",
               "egnn.atoms.graphs", "egnn.atoms.store", "egnn.atoms.packing", "egnn.atoms.loader", "egnn.ase",
               "egnn.checkpoint", "egnn.pretrained", "egnn.testing", "egnn.runtime"]


def _public(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, o in vars(module).items() if not n.startswith("_")
                 and getattr(o, "__module__", None) == module.__name__
                 and (inspect.isclass(o) or inspect.isfunction(o))]
    return names


def test_every_public_symbol_has_a_docstring():
    missing = []
    for name in API_MODULES:
        module = importlib.import_module(name)
        for n in _public(module):
            obj = getattr(module, n)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if not inspect.getdoc(obj):
                missing.append(f"{name}.{n}")
            if inspect.isclass(obj):
                for m, attr in vars(obj).items():
                    if m.startswith("_") or not (inspect.isfunction(attr) or isinstance(
                            attr, (classmethod, staticmethod, property))):
                        continue
                    own = (attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)).__doc__
                    # forward must say what it computes; other overrides may inherit their base class's doc
                    if not (own or "").strip() and (m == "forward" or not inspect.getdoc(getattr(obj, m))):
                        missing.append(f"{name}.{n}.{m}")
    assert not missing, "public symbols without a docstring:\n" + "\n".join(missing)


def test_every_library_module_is_on_an_api_page():
    text = "\n".join(p.read_text(encoding="utf-8") for p in (B.DOCS / "api").glob("*.md"))
    documented = set(re.findall(r"\.\. automodule:: (\S+)", text)) | set(re.findall(r"autofunction:: (egnn)\.", text))
    assert set(API_MODULES) - documented == set()


def docs_extension():
    """The docs' own Sphinx extension (``docs/_ext/egnn_docs.py``), which generates the CLI and pretrained pages."""
    sys.path.insert(0, str(B.DOCS / "_ext"))
    try:
        import egnn_docs
    finally:
        sys.path.pop(0)
    return egnn_docs


def test_cli_reference_lists_every_command_and_option():
    egnn_docs = docs_extension()
    from egnn.experiments.cli import build_parser

    text = egnn_docs.cli_markdown()
    commands = list(egnn_docs.iter_commands(build_parser()))
    assert len(commands) >= 20
    for words, parser, _ in commands:
        assert f"## `{' '.join(words)}`" in text
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                for opt in action.option_strings:
                    assert f"`{opt}`" in text, (words, opt)


def test_pretrained_page_lists_every_shipped_model_with_its_domain():
    egnn_docs = docs_extension()
    from egnn import pretrained

    text = egnn_docs.pretrained_markdown()
    for name in pretrained.available(folder=pretrained.PACKAGE_DIR):
        assert f"| `{name}` |" in text
    assert "H, C, N, O, F" in text and "B3LYP/6-31G(2df,p)" in text and "29 atoms" in text
