"""E(n)-equivariant graph neural networks (Satorras, Hoogeboom & Welling, ICML 2021).

The model library (``egnn.ops``, ``egnn.nn``, ``egnn.testing``, ``egnn.checkpoint``, ``egnn.atoms``, ``egnn.ase``,
``egnn.pretrained``) knows nothing of experiments; ``egnn.experiments`` (data, training, evaluation, CLI) builds on
it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(path: Any, device: Any = "cpu", dtype: Any = None) -> Any:
    """The trained energy/force model of a checkpoint or run folder (:func:`egnn.atoms.model.load_model`), with
    its species map, reference energies, normalisation and cut-off; imported lazily."""
    from egnn.atoms.model import load_model as _load

    return _load(path, device=device, dtype=dtype)


def load_pretrained(name: str, device: Any = "cpu", dtype: Any = None, folder: Any = None) -> Any:
    """A pretrained model shipped with the package (:func:`egnn.pretrained.load_pretrained`: its file's SHA-256
    is checked against the index first); ``egnn.pretrained.available()`` lists the names. Imported lazily."""
    from egnn.pretrained import load_pretrained as _load

    return _load(name, device=device, dtype=dtype, folder=folder)
