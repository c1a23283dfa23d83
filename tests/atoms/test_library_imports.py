"""egnn.atoms, egnn.ase, egnn.pretrained and egnn/__init__ are library code: they never import
egnn.experiments."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "egnn"


def test_atoms_package_and_calculator_do_not_import_experiments():
    files = [*sorted((SRC / "atoms").glob("*.py")), SRC / "ase.py", SRC / "pretrained" / "__init__.py",
             SRC / "__init__.py"]
    assert len(files) >= 8
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}: {n}" for n in names if n.startswith("egnn.experiments")]
    assert not bad, bad
