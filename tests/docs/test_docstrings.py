"""The ``>>>`` examples in the docstrings of the library run as doctests (ELLIPSIS and NORMALIZE_WHITESPACE on)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

# the library (what the API reference documents); the experiments are documented through the CLI
LIBRARY = ["egnn", "egnn.nn", "egnn.ops", "egnn.atoms", "egnn.ase", "egnn.checkpoint", "egnn.pretrained",
           "egnn.testing", "egnn.runtime"]


def _modules() -> list[str]:
    names = []
    for name in LIBRARY:
        names.append(name)
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):
            names += [m.name for m in pkgutil.iter_modules(module.__path__, name + ".")]
    return sorted(set(names))


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name):  # each example sees its module's namespace, as in pytest --doctest-modules
        if test.examples and test.name.startswith(name):
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
