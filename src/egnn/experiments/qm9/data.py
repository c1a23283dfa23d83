"""QM9 data layer: parse QM9 once into a compact, verified ``.npz`` cache, the paper's splits, node features.

Sources (``source=None`` means the first one):

* the CSV files shipped inside the ``qm9pack==1.0.3`` wheel (``qm9pack/data/qm9_part*.csv``, 130,831
  molecules, i.e. the 133,885 GDB-9 molecules minus the 3,054 that failed QM9's consistency check);
* a folder holding such CSV files, or one CSV file with the same columns;
* the original archive ``dsgdb9nsd.xyz.tar.bz2`` or a folder of its ``dsgdb9nsd_NNNNNN.xyz`` files (see
  :func:`parse_xyz` for how the uncharacterized molecules are excluded there).

Targets are stored in the units of the paper's Table 3 (meV for energies, see :data:`TARGETS`) with the
atomic reference energies already subtracted from U0, U, H, G and Cv, as the pipeline of the paper (taken
from Cormorant, Anderson et al. 2019) does by default (``subtract_thermo=True``).

The cache is a single ``qm9.npz`` (no pickles) holding ``z`` (uint8, concatenated over molecules), ``pos``
(float32 [n_atoms, 3], Angstrom), ``offsets`` (int64 [n_mol + 1]), ``targets`` (float64 [n_mol, 12]),
``index`` (int64 GDB-9 index, 1-based as in ``dsgdb9nsd_000001.xyz``, ascending) and ``meta`` (JSON as
uint8 bytes: format version, source description, sha256/dtype/shape of every array). A cache that cannot be
read, fails a checksum, or was written by another format version is rejected (:class:`CacheError`) and
rebuilt by :func:`prepare`, never used.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import tarfile
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from egnn.experiments.commands import UserError

if TYPE_CHECKING:  # torch is only needed by node_features and imported there
    import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
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


# ----------------------------------------------------------------------------------------------- data class


@dataclass(frozen=True, eq=False)
class Molecule:
    """One molecule (views into the dataset arrays)."""

    index: int
    z: np.ndarray
    pos: np.ndarray
    targets: np.ndarray

    def target(self, name: str) -> float:
        return float(self.targets[target_index(name)])


@dataclass(eq=False, repr=False)
class QM9Data:
    """Molecules as concatenated atom arrays; molecule ``i`` owns atoms ``offsets[i]:offsets[i + 1]``."""

    z: np.ndarray  # uint8 [n_atoms]
    pos: np.ndarray  # float32 [n_atoms, 3], Angstrom
    offsets: np.ndarray  # int64 [n_mol + 1]
    targets: np.ndarray  # float64 [n_mol, 12], TARGET_NAMES order, paper units
    index: np.ndarray  # int64 [n_mol], 1-based GDB-9 index
    meta: dict[str, Any] = field(default_factory=dict)

    target_names: ClassVar[tuple[str, ...]] = TARGET_NAMES

    def __post_init__(self) -> None:
        n = len(self.index)
        problems = []
        if self.offsets.shape != (n + 1,):
            problems.append(f"offsets shape {self.offsets.shape} for {n} molecules")
        elif n and (
            self.offsets[0] != 0 or self.offsets[-1] != len(self.z) or np.any(np.diff(self.offsets) < 1)
        ):
            problems.append("offsets are not 0 .. n_atoms with at least one atom per molecule")
        if self.pos.shape != (len(self.z), 3):
            problems.append(f"pos shape {self.pos.shape} for {len(self.z)} atoms")
        if self.targets.shape != (n, len(TARGETS)):
            problems.append(f"targets shape {self.targets.shape}, expected {(n, len(TARGETS))}")
        if problems:
            raise ValueError("inconsistent QM9Data: " + "; ".join(problems))

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"QM9Data({len(self)} molecules, {len(self.z)} atoms)"

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per molecule (int64 [n_mol])."""
        return np.diff(self.offsets)

    def molecule(self, i: int) -> Molecule:
        """Molecule at row ``i`` (not GDB index ``i``; see :meth:`rows_of`)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"molecule {i} out of range for {n} molecules")
        i %= n
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Molecule(int(self.index[i]), self.z[a:b], self.pos[a:b], self.targets[i])

    def target(self, name: str) -> np.ndarray:
        """Column of one target (float64 [n_mol])."""
        return self.targets[:, target_index(name)]

    def subset(self, rows: Sequence[int] | np.ndarray) -> QM9Data:
        """New dataset of the given rows (integer positions or boolean mask), in that order; numpy only."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"boolean mask of shape {rows.shape} for {len(self)} molecules")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64, copy=False).reshape(-1)
        if rows.size and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"rows out of range for {len(self)} molecules")
        rows = rows % max(len(self), 1)
        atoms, offsets = _gather_atoms(self.offsets, rows)
        meta = {k: v for k, v in self.meta.items() if k not in ("arrays", "n_molecules", "n_atoms")}
        meta["subset_of"] = len(self)
        return QM9Data(self.z[atoms], self.pos[atoms], offsets, self.targets[rows], self.index[rows], meta)

    def rows_of(self, gdb_index: Iterable[int] | np.ndarray) -> np.ndarray:
        """Row positions of the given GDB-9 indices (raises KeyError if one is absent)."""
        query = np.asarray(gdb_index, dtype=np.int64).reshape(-1)
        order = np.argsort(self.index, kind="stable")
        ordered = self.index[order]
        where = np.minimum(np.searchsorted(ordered, query), max(len(ordered) - 1, 0))
        found = ordered[where] == query if len(ordered) else np.zeros(len(query), bool)
        if not np.all(found):
            raise KeyError(f"GDB-9 indices not in this dataset: {query[~found][:10].tolist()}")
        return order[where]

    def arrays(self) -> dict[str, np.ndarray]:
        """The five arrays with their cache dtypes (C-contiguous)."""
        return {
            name: np.ascontiguousarray(getattr(self, name), dtype=dtype)
            for name, dtype in ARRAY_DTYPES.items()
        }


def _gather_atoms(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Atom indices of ``rows`` (concatenated, in row order) and the matching new offsets."""
    starts = offsets[rows]
    counts = offsets[rows + 1] - starts
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    atoms = np.repeat(starts - new_offsets[:-1], counts) + np.arange(new_offsets[-1], dtype=np.int64)
    return atoms, new_offsets


# ------------------------------------------------------------------------------------------ unit conversion


def convert_targets(raw: np.ndarray, z: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Raw QM9 values ([n_mol, 12], RAW_FIELDS order and units) -> targets (TARGET_NAMES order, paper units).

    For U0, U, H, G and Cv the per-molecule sum of atomic reference values is subtracted in the raw unit
    (Hartree, cal/mol K) before converting (Hartree -> meV: x 27211.4).
    """
    raw = np.asarray(raw, dtype=np.float64)
    n = len(offsets) - 1
    molecule_of_atom = np.repeat(np.arange(n), np.diff(offsets))
    out = np.empty((n, len(TARGETS)), dtype=np.float64)
    for j, target in enumerate(TARGETS):
        value = raw[:, RAW_FIELDS.index(target.raw)].copy()
        if target.atomref:
            table = np.zeros(max(SPECIES) + 1)
            for zz, ref in ATOMREF[target.name].items():
                table[zz] = ref
            value -= np.bincount(molecule_of_atom, weights=table[z], minlength=n)
        out[:, j] = value * target.scale
    return out


def _assemble(
    z: np.ndarray, pos: np.ndarray, n_atoms: np.ndarray, raw: np.ndarray, index: np.ndarray, meta: dict
) -> QM9Data:
    """Order molecules by GDB-9 index, check uniqueness, convert targets."""
    offsets = np.zeros(len(index) + 1, dtype=np.int64)
    np.cumsum(n_atoms, out=offsets[1:])
    if np.any(np.diff(index) <= 0):
        order = np.argsort(index, kind="stable")
        atoms, offsets = _gather_atoms(offsets, order)
        z, pos, raw, index = z[atoms], pos[atoms], raw[order], index[order]
        duplicated = index[1:][np.diff(index) == 0]
        if len(duplicated):
            raise QM9DataError(
                f"duplicate GDB-9 indices in the source: {np.unique(duplicated)[:10].tolist()}"
            )
    targets = convert_targets(raw, z, offsets)
    meta = {**meta, "n_molecules": int(len(index)), "n_atoms": int(len(z))}
    return QM9Data(z.astype(np.uint8), pos.astype(np.float32), offsets, targets, index.astype(np.int64), meta)


# ---------------------------------------------------------------------------------------------- sources


def qm9pack_data_dir() -> Path | None:
    """Folder of the CSV files inside the installed ``qm9pack`` wheel, or None if it is not installed.

    qm9pack's ``__init__`` imports pandas and ``pkg_resources`` (gone from setuptools >= 81), so this looks
    the folder up through the distribution's metadata, then ``importlib.util.find_spec`` (which locates the
    package without executing it); ``importlib.resources.files`` (which does execute it) comes last.
    """
    candidates: list[Path] = []
    try:
        candidates.append(Path(str(importlib.metadata.distribution("qm9pack").locate_file("qm9pack/data"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        spec = importlib.util.find_spec("qm9pack")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates.extend(Path(loc) / "data" for loc in spec.submodule_search_locations)
    for candidate in candidates:
        if candidate.is_dir() and _csv_files(candidate):
            return candidate
    if spec is None:
        return None
    try:
        resource = Path(str(importlib.resources.files("qm9pack") / "data"))
    except Exception:  # importing qm9pack itself failed (e.g. missing pkg_resources / pandas)
        return None
    return resource if resource.is_dir() and _csv_files(resource) else None


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return next(csv.reader(fh), [])


def _csv_files(folder: Path) -> list[Path]:
    """CSV files in ``folder`` that have the molecule columns (so qm9_polarizability.csv is skipped)."""
    files = [p for p in folder.glob("*.csv") if p.is_file() and set(CSV_REQUIRED) <= set(_csv_header(p))]
    return sorted(files, key=_natural_key)


@dataclass(frozen=True)
class Source:
    """A located QM9 source: ``kind`` is qm9pack, csv, xyz-archive or xyz-dir."""

    kind: str
    path: Path
    files: tuple[Path, ...]

    def describe(self) -> dict[str, Any]:
        """JSON-able description (stored in the cache; a different description triggers a rebuild)."""
        info: dict[str, Any] = {"kind": self.kind, "path": str(self.path)}
        if self.kind == "qm9pack":
            try:
                info["version"] = importlib.metadata.version("qm9pack")
            except importlib.metadata.PackageNotFoundError:
                info["version"] = None
        if self.kind == "xyz-dir":
            info["n_files"] = len(self.files)
            info["bytes"] = sum(p.stat().st_size for p in self.files)
        else:
            info["files"] = [[p.name, p.stat().st_size] for p in self.files]
        return info


def missing_source_message() -> str:
    return (
        "QM9 data not found: the 'qm9pack' package (which ships QM9 as CSV files) is not installed and no "
        f"source was given. Install it with: {INSTALL_HINT}; or pass the original archive "
        "dsgdb9nsd.xyz.tar.bz2, a folder of its .xyz files, or a folder of qm9pack-style CSV files as source."
    )


def resolve_source(source: str | os.PathLike | None = None) -> Source:
    """Locate the data: ``None`` = the installed qm9pack wheel, else a CSV / xyz archive / folder path."""
    if source is None:
        folder = qm9pack_data_dir()
        if folder is None:
            raise QM9DataError(missing_source_message())
        return Source("qm9pack", folder.resolve(), tuple(_csv_files(folder)))
    path = Path(source).expanduser()
    if not path.exists():
        raise QM9DataError(
            f"QM9 source {path} does not exist. Without a source the data comes from: {INSTALL_HINT}"
        )
    path = path.resolve()
    if path.is_dir():
        if csvs := _csv_files(path):
            return Source("csv", path, tuple(csvs))
        if xyz := sorted(path.glob("*.xyz"), key=_natural_key):
            return Source("xyz-dir", path, tuple(xyz))
        archive = path / "dsgdb9nsd.xyz.tar.bz2"
        if archive.is_file():
            return Source("xyz-archive", archive, (archive,))
        raise QM9DataError(f"{path} holds no QM9 CSV files, no .xyz files and no dsgdb9nsd.xyz.tar.bz2")
    if path.suffix.lower() == ".csv":
        missing = sorted(set(CSV_REQUIRED) - set(_csv_header(path)))
        if missing:
            raise QM9DataError(f"{path} lacks the QM9 columns {missing}")
        return Source("csv", path, (path,))
    if tarfile.is_tarfile(path):
        return Source("xyz-archive", path, (path,))
    raise QM9DataError(f"{path} is neither a QM9 CSV file, a tar archive of .xyz files, nor a folder")


# ---------------------------------------------------------------------------------------------- CSV parser

_DROP_BRACKETS = str.maketrans("", "", "[] \t\r\n")
_DROP_ELEMENT_DELIMITERS = str.maketrans("", "", "[]'\", \t\r\n")


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="mol", disable=not enabled, leave=False, mininterval=0.5)


def _count_rows(files: Sequence[Path]) -> int:
    rows = 0
    for path in files:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 24):
                rows += chunk.count(b"\n")
        rows -= 1  # header
    return rows


def _floats(text: str, expected: int, what: str) -> np.ndarray:
    """Comma-separated numbers (``*^`` exponents allowed) -> float64 array of exactly ``expected`` values."""
    text = text.replace("*^", "e")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.fromstring only warns when it stops early
        try:
            values = np.fromstring(text, dtype=np.float64, sep=",") if text else np.zeros(0)
        except (ValueError, DeprecationWarning) as err:
            raise QM9DataError(f"malformed {what}: {err}") from err
    if len(values) != expected:
        raise QM9DataError(f"malformed {what}: {len(values)} numbers, expected {expected}")
    return values


def _atomic_numbers(symbols: str, expected: int) -> np.ndarray:
    """Concatenated one-letter element symbols (QM9 only has H, C, N, O, F) -> atomic numbers."""
    table = np.zeros(256, dtype=np.uint8)
    for symbol, number in ELEMENTS.items():
        table[ord(symbol)] = number
    try:
        z = table[np.frombuffer(symbols.encode("ascii"), dtype=np.uint8)]
    except UnicodeEncodeError as err:
        raise QM9DataError(f"unexpected element symbol: {err}") from err
    if len(z) != expected or np.any(z == 0):
        bad = sorted(set(re.findall(r"[^HCNOF]", symbols)))[:10]
        raise QM9DataError(f"unexpected element symbols {bad} (QM9 has H, C, N, O, F only)")
    return z


def parse_csv(files: Sequence[str | os.PathLike], limit: int | None = None, progress: bool = True) -> QM9Data:
    """Parse qm9pack-style CSV files (lists stored as strings) into a :class:`QM9Data`.

    ``limit`` keeps only the first ``limit`` rows in file order (the packaged files are in GDB-9 order).
    """
    files = [Path(f) for f in files]
    index: list[int] = []
    counts: list[int] = []
    elements: list[str] = []
    coords: list[str] = []
    raw: list[list[float]] = []
    total = limit if limit is not None else _count_rows(files)
    with _progress(total, "QM9 csv", progress) as bar:
        for path in files:
            if limit is not None and len(index) >= limit:
                break
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh)
                header = next(reader, [])
                column = {name: i for i, name in enumerate(header)}
                missing = [name for name in CSV_REQUIRED if name not in column]
                if missing:
                    raise QM9DataError(f"{path} lacks the QM9 columns {missing}")
                c_index, c_el, c_xyz = column["Index"], column["Elements"], column["XYZ_Ang"]
                c_natoms = column.get("N_atoms")
                c_raw = [column[RAW_CSV_COLUMNS[name]] for name in RAW_FIELDS]
                for row in reader:
                    if not row:
                        continue
                    try:
                        el = row[c_el]
                        n = el.count(",") + 1
                        if c_natoms is not None and int(row[c_natoms]) != n:
                            raise ValueError(f"N_atoms {row[c_natoms]} but {n} elements")
                        if row[c_xyz].count(",") + 1 != 3 * n:
                            raise ValueError(f"XYZ_Ang does not hold {n} x 3 coordinates")
                        raw.append([float(row[c].replace("*^", "e")) for c in c_raw])
                        index.append(int(row[c_index]))
                    except (ValueError, IndexError) as err:
                        raise QM9DataError(f"{path}, line {reader.line_num}: {err}") from err
                    counts.append(n)
                    elements.append(el)
                    coords.append(row[c_xyz])
                    if len(index) % 4096 == 0:
                        bar.update(4096)
                    if limit is not None and len(index) >= limit:
                        break
        bar.update(len(index) % 4096)
    n_atoms = np.asarray(counts, dtype=np.int64)
    total_atoms = int(n_atoms.sum())
    z = _atomic_numbers("".join(elements).translate(_DROP_ELEMENT_DELIMITERS), total_atoms)
    pos = _floats(",".join(coords).translate(_DROP_BRACKETS), 3 * total_atoms, "XYZ_Ang coordinates")
    meta = {"parsed_from": [str(f) for f in files]}
    return _assemble(
        z,
        pos.reshape(-1, 3),
        n_atoms,
        np.asarray(raw, dtype=np.float64).reshape(-1, 12),
        np.asarray(index, dtype=np.int64),
        meta,
    )


# ---------------------------------------------------------------------------------------------- xyz parser


def parse_xyz_text(text: str, name: str = "<xyz>") -> tuple[int, list[int], list[float], list[float]]:
    """One QM9 xyz file -> (GDB-9 index, atomic numbers, flat coordinates in Angstrom, 12 raw properties).

    Format: natoms; ``gdb N A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv``; natoms lines
    ``El x y z mulliken_charge``; then frequencies, SMILES and InChI (ignored). ``1.2*^-6`` means 1.2e-6.
    """
    lines = text.replace("*^", "e").splitlines()
    try:
        n = int(lines[0])
        props = lines[1].split()
        if len(props) != 17 or props[0] != "gdb":
            raise ValueError(f"comment line has {len(props)} fields, expected 'gdb' + 16")
        index = int(props[1])
        raw = [float(v) for v in props[5:17]]
        z: list[int] = []
        xyz: list[float] = []
        for line in lines[2 : 2 + n]:
            parts = line.split()
            z.append(ELEMENTS[parts[0]])
            xyz.extend((float(parts[1]), float(parts[2]), float(parts[3])))
        if len(z) != n or n < 1:
            raise ValueError(f"{len(z)} atom lines, expected {n}")
    except (ValueError, IndexError, KeyError) as err:
        raise QM9DataError(f"{name}: malformed QM9 xyz file: {err!r}") from err
    return index, z, xyz, raw


def read_uncharacterized(path: str | os.PathLike) -> set[int]:
    """GDB-9 indices listed in QM9's ``uncharacterized.txt`` (lines whose first field is an integer)."""
    excluded = set()
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if fields and fields[0].isdigit():
            excluded.add(int(fields[0]))
    if len(excluded) != N_GDB9 - N_QM9:
        log.warning(
            "%s lists %d molecules; QM9's uncharacterized.txt lists %d", path, len(excluded), N_GDB9 - N_QM9
        )
    return excluded


def qm9pack_indices(folder: Path | None = None) -> set[int]:
    """GDB-9 indices present in the qm9pack CSV files (read with a regex over the file names, ~1 s)."""
    folder = folder or qm9pack_data_dir()
    if folder is None:
        raise QM9DataError(missing_source_message())
    found: set[int] = set()
    pattern = re.compile(rb'^"?dsgdb9nsd_(\d+)\.xyz"?,', re.MULTILINE)
    for path in _csv_files(folder):
        found.update(int(m) for m in pattern.findall(path.read_bytes()))
    return found


def _iter_xyz(source: Source) -> Iterator[tuple[str, str]]:
    if source.kind == "xyz-dir":
        for path in source.files:
            yield path.name, path.read_text(encoding="utf-8")
        return
    with tarfile.open(source.path, "r:*") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xyz"):
                handle = tar.extractfile(member)
                if handle is not None:
                    yield member.name, handle.read().decode("utf-8")


def parse_xyz(
    source: str | os.PathLike | Source,
    limit: int | None = None,
    progress: bool = True,
    exclude: Iterable[int] | None = None,
) -> QM9Data:
    """Parse the original QM9 archive ``dsgdb9nsd.xyz.tar.bz2`` or a folder of its ``.xyz`` files.

    The archive holds all 133,885 molecules. QM9 lists the 3,054 that failed its geometry consistency check in
    a separate file, ``uncharacterized.txt``, which cannot be fetched offline here; pass its indices as
    ``exclude`` (see :func:`read_uncharacterized`). :func:`prepare` does so automatically when that file lies
    next to the archive (or in the folder), otherwise uses the complement of the installed qm9pack set (whose
    130,831 molecules are exactly the characterized ones), and otherwise keeps all molecules with a warning;
    the paper's split sizes then do not apply. ``limit`` keeps the first ``limit`` kept molecules read.
    """
    src = source if isinstance(source, Source) else resolve_source(source)
    if src.kind not in ("xyz-archive", "xyz-dir"):
        raise QM9DataError(f"{src.path} is not a QM9 xyz archive or folder")
    skip = set(exclude or ())
    index: list[int] = []
    counts: list[int] = []
    z: list[int] = []
    xyz: list[float] = []
    raw: list[list[float]] = []
    skipped = 0
    total = limit if limit is not None else (len(src.files) if src.kind == "xyz-dir" else None)
    with _progress(total, "QM9 xyz", progress) as bar:
        for name, text in _iter_xyz(src):
            i, zz, coords, props = parse_xyz_text(text, name)
            if i in skip:
                skipped += 1
                continue
            index.append(i)
            counts.append(len(zz))
            z.extend(zz)
            xyz.extend(coords)
            raw.append(props)
            bar.update(1)
            if limit is not None and len(index) >= limit:
                break
    if not index:
        raise QM9DataError(f"no molecules read from {src.path}")
    meta = {"parsed_from": [str(src.path)], "n_excluded": skipped}
    return _assemble(
        np.asarray(z, dtype=np.uint8),
        np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
        np.asarray(counts, dtype=np.int64),
        np.asarray(raw, dtype=np.float64),
        np.asarray(index, dtype=np.int64),
        meta,
    )


def _exclusion(source: Source, exclude: str | os.PathLike | None) -> tuple[set[int] | None, str]:
    """Which GDB-9 indices to drop from an xyz source, and a description for the cache metadata."""
    if source.kind not in ("xyz-archive", "xyz-dir"):
        return None, "as in the CSV source (qm9pack's files already lack the 3,054 uncharacterized molecules)"
    if exclude is None or exclude == "none":
        return None, "none (all molecules of the source kept)"
    if exclude != "auto":
        return read_uncharacterized(exclude), f"listed in {Path(exclude).resolve()}"
    beside = (source.path if source.kind == "xyz-dir" else source.path.parent) / "uncharacterized.txt"
    if beside.is_file():
        return read_uncharacterized(beside), f"listed in {beside}"
    folder = qm9pack_data_dir()
    if folder is not None:
        keep = qm9pack_indices(folder)
        return set(range(1, N_GDB9 + 1)) - keep, f"absent from qm9pack ({folder})"
    log.warning(
        "cannot tell the 3,054 uncharacterized QM9 molecules offline (no uncharacterized.txt next to %s and "
        "qm9pack not installed): keeping all molecules, so the paper's split sizes do not apply",
        source.path,
    )
    return None, "none (uncharacterized list unavailable offline)"


def read_source(
    source: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    progress: bool = True,
    exclude: str | os.PathLike | None = "auto",
) -> QM9Data:
    """Parse a source (see :func:`resolve_source`) without touching any cache."""
    src = resolve_source(source)
    return _parse(src, limit, progress, exclude)


def _parse(src: Source, limit: int | None, progress: bool, exclude: str | os.PathLike | None) -> QM9Data:
    if src.kind in ("qm9pack", "csv"):
        data = parse_csv(src.files, limit=limit, progress=progress)
        _, how = _exclusion(src, exclude)
    else:
        excluded, how = _exclusion(src, exclude)
        data = parse_xyz(src, limit=limit, progress=progress, exclude=excluded)
    data.meta.update(source=src.describe(), exclusion=how)
    if limit is None and src.kind == "qm9pack" and len(data) != N_QM9:
        log.warning(
            "qm9pack holds %d molecules, expected %d: splits will differ from the paper", len(data), N_QM9
        )
    return data


# ---------------------------------------------------------------------------------------------- cache


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed npz via a temporary file + rename: a crash never leaves a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_cache(data: QM9Data, path: str | os.PathLike, build: dict[str, Any] | None = None) -> Path:
    """Write ``data`` as a verified cache file (see the module docstring for the layout)."""
    path = Path(path)
    arrays = data.arrays()
    meta = {
        "format": "egnn-qm9-cache",
        "format_version": FORMAT_VERSION,
        "build": build or {},
        "source": data.meta.get("source"),
        "exclusion": data.meta.get("exclusion"),
        "n_molecules": len(data),
        "n_atoms": int(len(data.z)),
        "targets": [
            {
                "name": t.name,
                "unit": t.unit,
                "raw": t.raw,
                "csv_column": t.csv_column,
                "scale": t.scale,
                "atomref_subtracted": t.atomref,
            }
            for t in TARGETS
        ],
        "arrays": {
            name: {"dtype": a.dtype.str, "shape": list(a.shape), "sha256": _sha256(a)}
            for name, a in arrays.items()
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_savez(path, {"meta": blob, **arrays})
    return path


def _cache_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.suffix == ".npz" and not path.is_dir() else path / CACHE_NAME


def _read_cache(path: Path) -> QM9Data:
    if not path.is_file():
        raise CacheError(f"no QM9 cache at {path}; build it with: egnn qm9 prepare --out {path.parent}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "meta" not in npz.files:
                raise CacheError(f"{path} is not a QM9 cache (no metadata)")
            meta = json.loads(npz["meta"].tobytes().decode("utf-8"))
            if not isinstance(meta, dict) or meta.get("format") != "egnn-qm9-cache":
                raise CacheError(f"{path} is not a QM9 cache")
            if meta.get("format_version") != FORMAT_VERSION:
                raise CacheError(
                    f"{path} has cache format version {meta.get('format_version')}, this code writes "
                    f"version {FORMAT_VERSION}"
                )
            arrays = {name: npz[name] for name in ARRAY_DTYPES}
    except CacheError:
        raise
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, zlib.error) as err:
        raise CacheError(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from err
    for name, array in arrays.items():
        spec = meta["arrays"].get(name, {}) if isinstance(meta.get("arrays"), dict) else {}
        if (
            array.dtype != ARRAY_DTYPES[name]
            or spec.get("dtype") != array.dtype.str
            or spec.get("shape") != list(array.shape)
            or spec.get("sha256") != _sha256(array)
        ):
            raise CacheError(
                f"{path} is corrupt: array '{name}' does not match its recorded dtype/shape/sha256"
            )
    try:
        return QM9Data(**arrays, meta=meta)
    except ValueError as err:
        raise CacheError(f"{path} is inconsistent: {err}") from err


def cache_info(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a verified cache (reads and checks the whole file; raises :class:`CacheError`)."""
    return _read_cache(_cache_path(path)).meta


def load(
    path: str | os.PathLike,
    *,
    rebuild: bool = True,
    source: str | os.PathLike | None = None,
    progress: bool = True,
) -> QM9Data:
    """Load a cache (``out_dir`` or the ``.npz`` itself), verifying format version and checksums.

    A missing, corrupt or outdated cache is rebuilt with :func:`prepare` from ``source`` (default: qm9pack)
    when ``rebuild`` is true, otherwise :class:`CacheError` is raised. The data is never used unverified.
    """
    cache = _cache_path(path)
    try:
        return _read_cache(cache)
    except CacheError as err:
        if not rebuild:
            raise
        log.warning("%s: rebuilding", err)
    _prepare(cache, cache.parent / SPLITS_NAME, source, progress, None, "auto", force=True)
    return _read_cache(cache)


def prepare(
    out_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    limit: int | None = None,
    exclude: str | os.PathLike | None = "auto",
    force: bool = False,
) -> Path:
    """Build ``out_dir/qm9.npz`` and ``out_dir/splits.npz``; returns the cache path.

    A valid cache built from the same source and options is reused unless ``force``; anything else
    (missing, corrupt, other format version, other source) is rebuilt. ``limit`` parses only the first
    molecules (for tests). ``exclude`` applies to xyz sources only: ``"auto"``, ``"none"``/``None`` or the
    path of an ``uncharacterized.txt`` (see :func:`parse_xyz`).
    """
    out = Path(out_dir)
    return _prepare(out / CACHE_NAME, out / SPLITS_NAME, source, progress, limit, exclude, force)


def _prepare(
    cache: Path,
    splits_path: Path,
    source: str | os.PathLike | None,
    progress: bool,
    limit: int | None,
    exclude: str | os.PathLike | None,
    force: bool,
) -> Path:
    src = resolve_source(source)
    exclude_spec = None if exclude is None or exclude == "none" else str(exclude)
    build = json.loads(json.dumps({"source": src.describe(), "limit": limit, "exclude": exclude_spec}))
    data = None
    if cache.exists() and not force:
        try:
            existing = _read_cache(cache)
        except CacheError as err:
            log.warning("%s: rebuilding", err)
        else:
            if existing.meta.get("build") == build:
                data = existing
            else:
                log.warning("%s was built from another source or with other options: rebuilding", cache)
    if data is None:
        data = _parse(src, limit, progress, exclude)
        save_cache(data, cache, build)
    write_splits(splits_path, data)
    return cache


# ---------------------------------------------------------------------------------------------- splits


def split_sizes(n_molecules: int) -> tuple[int, int, int]:
    """(train, valid, test): Cormorant's 100,000 / rest / int(0.1 N) -> 100,000 / 17,748 / 13,083 for QM9.

    For fewer than ~125k molecules (test subsets) train shrinks to N - 2 int(0.1 N) so valid keeps as many
    molecules as test; Cormorant itself only handles the full set.
    """
    n_test = int(TEST_FRACTION * n_molecules)
    n_train = max(0, min(N_TRAIN, n_molecules - 2 * n_test))
    return n_train, n_molecules - n_train - n_test, n_test


def make_splits(n_molecules: int, gdb_index: np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
    """Paper splits as row positions into the molecules ordered by ascending GDB-9 index.

    Same as Cormorant: ``np.random.seed(0); perm = np.random.permutation(N)``, then the first 100,000
    entries of ``perm`` are train, the next 17,748 valid, the last 13,083 test (for N = 130,831). Uses a
    private ``RandomState(0)`` (identical stream) so the global numpy state is left alone.
    """
    gdb_index = np.asarray(gdb_index)
    if gdb_index.shape != (n_molecules,):
        raise ValueError(f"gdb_index has shape {gdb_index.shape}, expected ({n_molecules},)")
    if np.any(np.diff(gdb_index) <= 0):
        raise ValueError("gdb_index must be strictly increasing (molecules ordered by GDB-9 index)")
    n_train, n_valid, _ = split_sizes(n_molecules)
    perm = np.random.RandomState(SPLIT_SEED).permutation(n_molecules).astype(np.int64)
    return {
        "train": perm[:n_train],
        "valid": perm[n_train : n_train + n_valid],
        "test": perm[n_train + n_valid :],
    }


def write_splits(path: str | os.PathLike, data: QM9Data) -> Path:
    """Write ``splits.npz``: keys train / valid / test with 1-based GDB-9 indices in split order."""
    path = Path(path)
    splits = make_splits(len(data), data.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_savez(path, {name: data.index[rows].astype(np.int64) for name, rows in splits.items()})
    return path


def load_splits(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """GDB-9 indices per split from ``splits.npz`` (or its folder); rows via ``QM9Data.rows_of``."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".npz":
        path = path / SPLITS_NAME
    try:
        with np.load(path, allow_pickle=False) as npz:
            splits = {name: npz[name].astype(np.int64) for name in ("train", "valid", "test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CacheError(
            f"cannot read QM9 splits {path} ({err}); run: egnn qm9 prepare --out {path.parent}"
        ) from err
    return splits


# ---------------------------------------------------------------------------------------------- features


def node_features(
    z: torch.Tensor | np.ndarray | Sequence[int], charge_scale: float = 9, max_power: int = 2
) -> torch.Tensor:
    """Paper node features: one-hot(H, C, N, O, F) times [1, Z/9, (Z/9)^2] -> float32 [..., 15].

    Column ``3 * s + p`` holds ``onehot_s * (Z / charge_scale) ** p`` for species s in (H, C, N, O, F) and
    power p in 0..max_power, i.e. [H, H Z/9, H (Z/9)^2, C, C Z/9, C (Z/9)^2, N, ..., F (Z/9)^2], matching the
    reference code's ``preprocess_input`` (charge_power=2, charge_scale = max Z = 9).
    """
    import torch

    if isinstance(z, torch.Tensor):
        zt = z.to(torch.int64)
    else:
        zt = torch.from_numpy(np.asarray(z, dtype=np.int64))
    species = torch.tensor(SPECIES, dtype=torch.int64, device=zt.device)
    one_hot = zt.unsqueeze(-1) == species
    if not bool(one_hot.any(-1).all()):
        bad = torch.unique(zt[~one_hot.any(-1)]).tolist()
        raise ValueError(f"atomic numbers {bad} are not H, C, N, O or F")
    exponents = torch.arange(max_power + 1, dtype=torch.float32, device=zt.device)
    powers = (zt.to(torch.float32).unsqueeze(-1) / charge_scale) ** exponents
    features = one_hot.to(torch.float32).unsqueeze(-1) * powers.unsqueeze(-2)
    return features.reshape(*zt.shape, len(SPECIES) * (max_power + 1))
