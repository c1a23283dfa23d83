"""Parser of qm9pack-style CSV files (lists stored as strings)."""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from egnn.experiments.qm9.data.constants import CSV_REQUIRED, ELEMENTS, RAW_CSV_COLUMNS, RAW_FIELDS, QM9DataError
from egnn.experiments.qm9.data.dataset import QM9Data
from egnn.experiments.qm9.data.units import _assemble

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
