"""The verified ``qm9.npz`` cache: write, read with checks, rebuild when outdated (layout: see the package
docstring)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from egnn.experiments.qm9.data.constants import ARRAY_DTYPES, CACHE_NAME, SPLITS_NAME, TARGETS, CacheError
from egnn.experiments.qm9.data.dataset import QM9Data
from egnn.experiments.qm9.data.npz import _atomic_savez
from egnn.experiments.qm9.data.sources import resolve_source
from egnn.experiments.qm9.data.splits import write_splits
from egnn.experiments.qm9.data.xyz_parser import _parse

log = logging.getLogger(__name__)

# bumped when the layout changes; a cache of another version is rebuilt, never read
FORMAT_VERSION = 1


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


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
