"""A periodic alloy data set computed with ASE's EMT potential (no downloads): rattled and strained fcc supercells
of random composition, energies and forces attached as calculator results (as ASE's extxyz reader returns them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Elements ASE's EMT covers
EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O")
FCC_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")


@dataclass(frozen=True)
class EMTConfig:
    """How the structures are drawn.

    Attributes:
        elements: fcc metals mixed on the lattice.
        n_frames: number of structures.
        repeat: supercell of the 4-atom cubic fcc cell (``(2, 2, 2)``: 32 atoms).
        rattle: standard deviation of the Gaussian displacement of every atom (Angstrom).
        strain: standard deviation of the entries of the symmetric strain applied to the cell.
        vacancy_fraction: chance that a frame has one atom removed (varies the atom count).
        seed: random seed.
    """

    elements: tuple[str, ...] = ("Cu", "Au")
    n_frames: int = 400
    repeat: tuple[int, int, int] = (2, 2, 2)
    rattle: float = 0.1
    strain: float = 0.03
    vacancy_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [e for e in self.elements if e not in FCC_METALS]
        if bad or not self.elements:
            raise ValueError(f"elements must be among the EMT fcc metals {', '.join(FCC_METALS)}; got {bad or 'none'}")
        if self.n_frames < 1 or min(self.repeat) < 1 or self.rattle < 0 or self.strain < 0:
            raise ValueError("n_frames and repeat must be >= 1, rattle and strain >= 0")


def generate(cfg: EMTConfig, progress: bool = False) -> list[Any]:
    """The structures, each with a ``SinglePointCalculator`` holding its EMT ``energy`` and ``forces``."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.data import atomic_numbers, reference_states
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    lattice = {e: reference_states[atomic_numbers[e]]["a"] for e in cfg.elements}
    calc = EMT()
    frames = []
    for _ in tqdm(range(cfg.n_frames), desc="EMT", unit="frame", disable=not progress, leave=False):
        weights = rng.dirichlet(np.ones(len(cfg.elements)))
        n_sites = 4 * int(np.prod(cfg.repeat))
        symbols = rng.choice(cfg.elements, size=n_sites, p=weights)
        a0 = float(sum(lattice[s] for s in symbols) / n_sites)  # Vegard's law
        atoms = bulk(cfg.elements[0], "fcc", a=a0, cubic=True).repeat(cfg.repeat)
        atoms.set_chemical_symbols(list(symbols))
        if rng.random() < cfg.vacancy_fraction:
            del atoms[int(rng.integers(len(atoms)))]
        eps = rng.normal(0.0, cfg.strain, (3, 3))
        eps = 0.5 * (eps + eps.T)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
        atoms.positions += rng.normal(0.0, cfg.rattle, atoms.positions.shape)
        atoms.calc = calc
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces().copy()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def write_dataset(path: str | Path, cfg: EMTConfig, progress: bool = False) -> Path:
    """Generate and write an extxyz file (refuses to overwrite an existing file)."""
    import ase.io

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another path (nothing is overwritten)")
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = generate(cfg, progress)
    tmp = path.with_name(f".{path.name}.tmp")
    ase.io.write(str(tmp), frames, format="extxyz")
    tmp.replace(path)
    return path
