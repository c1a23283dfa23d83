"""Parser of the original QM9 xyz files, the exclusion of the uncharacterized molecules, and
:func:`read_source` (any source, no cache)."""

from __future__ import annotations

import logging
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from egnn.experiments.qm9.data import sources
from egnn.experiments.qm9.data.constants import ELEMENTS, N_GDB9, N_QM9, QM9DataError
from egnn.experiments.qm9.data.csv_parser import _progress, parse_csv
from egnn.experiments.qm9.data.dataset import QM9Data
from egnn.experiments.qm9.data.sources import Source, _csv_files, missing_source_message, resolve_source
from egnn.experiments.qm9.data.units import _assemble

log = logging.getLogger(__name__)


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
    folder = folder or sources.qm9pack_data_dir()
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
    folder = sources.qm9pack_data_dir()
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
