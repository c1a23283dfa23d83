"""QM9 constants: file names, split sizes, units, elements, the target table, and the errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from egnn.experiments.commands import UserError

CACHE_NAME = "qm9.npz"
SPLITS_NAME = "splits.npz"
QM9PACK_VERSION = "1.0.3"
INSTALL_HINT = f"pip install 'qm9pack=={QM9PACK_VERSION}'  (in this repository: pip install -e '.[qm9]')"

N_GDB9 = 133_885  # molecules in the original QM9 release
N_QM9 = 130_831  # after removing the 3,054 that failed the consistency check
N_TRAIN = 100_000  # paper / Cormorant split sizes: 100,000 train, int(0.1 * N) test, the rest valid
TEST_FRACTION = 0.1
SPLIT_SEED = 0

HARTREE_TO_EV = 27.2114
HARTREE_TO_MEV = HARTREE_TO_EV * 1000.0  # 27211.4

ELEMENTS: dict[str, int] = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
SPECIES: tuple[int, ...] = (1, 6, 7, 8, 9)  # one-hot order of node_features

# Raw QM9 properties in xyz comment-line order after "gdb N A B C" (Hartree, bohr, debye, cal/mol K).
RAW_FIELDS: tuple[str, ...] = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")
RAW_CSV_COLUMNS: dict[str, str] = {
    "mu": "Dipole_debye",
    "alpha": "Polarizability_bohr3",
    "homo": "HOMO_au",
    "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au",
    "r2": "R2_bohr2",
    "zpve": "ZPVE_au",
    "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au",
    "H": "Enthalphy_298K_au",  # sic, as spelled in qm9pack
    "G": "GibbsFreeEnergy_298K_au",
    "Cv": "Heatcapacity_Cv_cal_mol_K",
}
CSV_REQUIRED = ("Index", "Elements", "XYZ_Ang", *RAW_CSV_COLUMNS.values())

# QM9 atomref table (B3LYP/6-31G(2df,p)): energies in Hartree, Cv in cal/mol K. Its ZPVE column is zero.
ATOMREF: dict[str, dict[int, float]] = {
    "U0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "U": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "H": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "G": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
    "Cv": {z: 2.981 for z in SPECIES},
}


@dataclass(frozen=True)
class Target:
    """One regression target: ``value = (raw - atomref_sum if atomref else raw) * scale`` in ``unit``."""

    name: str
    unit: str
    raw: str  # entry of RAW_FIELDS
    scale: float  # raw unit -> paper unit
    atomref: bool  # subtract the summed atomic reference values (in the raw unit) first
    description: str

    @property
    def csv_column(self) -> str:
        return RAW_CSV_COLUMNS[self.raw]


# The paper's Table 3 column order (also the order of the reference code's --property help text).
TARGETS: tuple[Target, ...] = (
    Target("alpha", "bohr^3", "alpha", 1.0, False, "isotropic polarizability"),
    Target("gap", "meV", "gap", HARTREE_TO_MEV, False, "HOMO-LUMO gap"),
    Target("homo", "meV", "homo", HARTREE_TO_MEV, False, "HOMO energy"),
    Target("lumo", "meV", "lumo", HARTREE_TO_MEV, False, "LUMO energy"),
    Target("mu", "D", "mu", 1.0, False, "dipole moment"),
    Target("Cv", "cal/mol K", "Cv", 1.0, True, "heat capacity at 298.15 K"),
    Target("G", "meV", "G", HARTREE_TO_MEV, True, "free energy at 298.15 K"),
    Target("H", "meV", "H", HARTREE_TO_MEV, True, "enthalpy at 298.15 K"),
    Target("r2", "bohr^2", "r2", 1.0, False, "electronic spatial extent"),
    Target("U", "meV", "U", HARTREE_TO_MEV, True, "internal energy at 298.15 K"),
    Target("U0", "meV", "U0", HARTREE_TO_MEV, True, "internal energy at 0 K"),
    Target("zpve", "meV", "zpve", HARTREE_TO_MEV, False, "zero point vibrational energy"),
)
TARGET_NAMES: tuple[str, ...] = tuple(t.name for t in TARGETS)
ARRAY_DTYPES: dict[str, np.dtype] = {
    "z": np.dtype(np.uint8),
    "pos": np.dtype(np.float32),
    "offsets": np.dtype(np.int64),
    "targets": np.dtype(np.float64),
    "index": np.dtype(np.int64),
}


class QM9DataError(UserError, RuntimeError):
    """QM9 data cannot be found, parsed or loaded (the message says what to do)."""


class CacheError(QM9DataError):
    """The cache file is missing, corrupt, or from another format version."""


def target_index(name: str) -> int:
    """Column of ``name`` in ``QM9Data.targets``."""
    try:
        return TARGET_NAMES.index(name)
    except ValueError:
        raise KeyError(f"unknown QM9 target {name!r}; choose from {', '.join(TARGET_NAMES)}") from None
