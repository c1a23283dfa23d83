"""Tiny models and synthetic molecules shared by the pretrained-model tests (library and ``egnn predict``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from egnn.atoms.data import AtomsData
from egnn.atoms.model import AtomsModel, AtomsModelConfig

SPECIES = [1, 6, 7, 8, 9]  # H, C, N, O, F: QM9's elements


def tiny_model(readout: str, seed: int = 0) -> AtomsModel:
    """A float32 complete-graph model: ``"mlp"`` for an intensive target (homo), ``"sum"`` with reference
    energies for an extensive one (U0)."""
    torch.manual_seed(seed)
    if readout == "mlp":
        cfg = AtomsModelConfig(species=SPECIES, cutoff=None, hidden_channels=8, num_layers=1, readout="mlp",
                               target="homo", scale=0.3, shift=-7.0)
    else:
        cfg = AtomsModelConfig(species=SPECIES, cutoff=None, hidden_channels=8, num_layers=1, readout="sum",
                               target="U0", ref_energies=[-0.5, -38.0, -54.6, -75.0, -99.7], scale=0.05, shift=0.01)
    return AtomsModel(cfg).eval()


def molecule_arrays(n_frames: int = 6, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(numbers, positions)`` of random H/C/N/O/F molecules of 2-6 atoms (every element appears)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_frames):
        n = int(rng.integers(2, 7))
        z = rng.choice(SPECIES, n)
        z[0] = SPECIES[i % len(SPECIES)]
        out.append((z, rng.normal(size=(n, 3)) * 1.2))
    return out


def molecule_data(n_frames: int = 6, seed: int = 0) -> AtomsData:
    """The molecules of :func:`molecule_arrays` as non-periodic :class:`AtomsData` (no ASE needed)."""
    mols = molecule_arrays(n_frames, seed)
    sizes = [len(z) for z, _ in mols]
    return AtomsData(z=np.concatenate([z for z, _ in mols]), pos=np.concatenate([p for _, p in mols]),
                     offsets=np.concatenate([[0], np.cumsum(sizes)]), cell=np.zeros((n_frames, 3, 3)),
                     pbc=np.zeros((n_frames, 3), bool))


def write_molecules(path: Path, n_frames: int = 6, seed: int = 0) -> list[Any]:
    """Write the molecules of :func:`molecule_arrays` to ``path`` with ASE; returns the ``ase.Atoms``."""
    import ase.io
    from ase import Atoms

    frames = [Atoms(numbers=z, positions=p) for z, p in molecule_arrays(n_frames, seed)]
    ase.io.write(str(path), frames)
    return frames


def flip_byte(path: Path, where: float = 0.5) -> None:
    """Invert one byte of ``path`` at the fraction ``where`` of its length."""
    raw = bytearray(path.read_bytes())
    i = int(len(raw) * where)
    raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
