"""Where the QM9 data comes from: the qm9pack wheel, CSV files, or the original xyz archive or folder."""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.resources
import importlib.util
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egnn.experiments.qm9.data.constants import CSV_REQUIRED, INSTALL_HINT, QM9DataError


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
