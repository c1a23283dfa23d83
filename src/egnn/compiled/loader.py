"""Load and call an ``egnn export`` file (``.pt2``): checks first, then PyTorch's AOTInductor loader.

The file is a PyTorch package archive (a zip) holding the compiled energy + forces graph of
:mod:`egnn.compiled.trace` and its metadata (JSON under the key ``egnn_export``): what it needs at run time is
PyTorch and this module. Everything that can be checked without loading the compiled code is checked first, so a
wrong file gives one line (:class:`ExportError`) rather than a crash inside the loader.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

FORMAT = "egnn-export/1"
META_KEY = "egnn_export"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# AOTInductor's names of the CPU instruction sets a file was compiled for -> the check of this CPU
_ISA_CHECKS = {
    "AVX2": "_is_avx2_supported", "AVX512": "_is_avx512_supported", "AVX512_VNNI": "_is_avx512_vnni_supported",
    "AVX512_BF16": "_is_avx512_bf16_supported", "AMX_TILE": "_is_amx_tile_supported",
}


class ExportError(ValueError):
    """An export file that cannot be used here (one line: the file and what is wrong)."""


def read_metadata(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The egnn metadata and AOTInductor's own entries of an export file, read from the archive alone (no compiled
    code is loaded). Raises :class:`ExportError` for a missing, truncated or corrupt file or one that is not an egnn
    export."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p}: no such file (expected a .pt2 file written by 'egnn export')")
    try:
        with zipfile.ZipFile(p) as archive:
            bad = archive.testzip()  # every member's CRC: a flipped byte anywhere is caught here
            if bad is not None:
                raise ExportError(f"{p} is corrupt (member {bad} fails its checksum); export it again")
            names = [n for n in archive.namelist() if n.endswith("wrapper_metadata.json")]
            if not names:
                raise ExportError(f"{p} is not a compiled PyTorch model (no AOTInductor metadata)")
            raw = json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError) as err:
        raise ExportError(f"{p} is not a readable .pt2 archive (truncated or corrupt: {err}); export it again"
                          ) from None
    if META_KEY not in raw:
        raise ExportError(f"{p} is a compiled PyTorch model but not an egnn export (no {META_KEY!r} metadata)")
    try:
        meta = json.loads(raw[META_KEY])
    except (TypeError, json.JSONDecodeError):
        raise ExportError(f"{p}: its egnn metadata is not valid JSON; export it again") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"{p}: export format {meta.get('format')!r}, this egnn reads {FORMAT!r}; export it again")
    return meta, {k: v for k, v in raw.items() if k != META_KEY}


def check_runnable(path: Path, meta: dict[str, Any], aoti: dict[str, str]) -> None:
    """:class:`ExportError` when this PyTorch or this CPU cannot run the file (compiled code is tied to both)."""
    made, here = meta.get("torch"), torch.__version__
    if made != here:
        raise ExportError(f"{path} was compiled with torch {made}; this is torch {here}: export it again with this "
                          "torch (compiled code runs only with the version that made it)")
    if aoti.get("AOTI_DEVICE_KEY", "cpu") != "cpu":
        raise ExportError(f"{path} was compiled for {aoti['AOTI_DEVICE_KEY']}; egnn exports run on the CPU")
    missing = [isa for isa in aoti.get("AOTI_CPU_ISA", "").split()
               if isa in _ISA_CHECKS and not getattr(torch._C._cpu, _ISA_CHECKS[isa], lambda: True)()]
    if missing:
        raise ExportError(f"{path} was compiled for CPU instructions this CPU lacks ({', '.join(missing)}); export "
                          "it again on this machine")


class ExportedModel:
    """A compiled energy + forces model read from an ``egnn export`` file.

    Args:
        path: the ``.pt2`` file.

    Attributes:
        meta: the file's metadata (``species``, ``cutoff``, ``images``, ``dtype``, ``stress``, ``units``, ``egnn``
            and ``torch`` versions, ``source`` and ``source_sha256`` of the checkpoint, the check made at export).
        species: atomic numbers, in the order of the model's species index.
        cutoff: neighbour radius in Angstrom.
        dtype: the floating precision the file was compiled for.

    Raises:
        ExportError: missing, truncated or corrupt file, not an egnn export, another torch version or CPU.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta, aoti = read_metadata(self.path)
        check_runnable(self.path, self.meta, aoti)
        try:
            self.runner = torch._inductor.aoti_load_package(str(self.path))
        except Exception as err:  # the compiled library failed to load: say which file, in one line
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"{self.path}: PyTorch cannot load the compiled model ({first})") from None
        self.species: list[int] = [int(z) for z in self.meta["species"]]
        self.cutoff: float | None = self.meta["cutoff"]
        self.images: bool = bool(self.meta["images"])
        self.dtype: torch.dtype = _DTYPES[self.meta["dtype"]]
        self.stress: bool = bool(self.meta["stress"])
        self._table = np.full(119, -1, dtype=np.int64)
        self._table[self.species] = np.arange(len(self.species))

    def species_index(self, numbers: np.ndarray) -> Tensor:
        """Index of each atomic number in :attr:`species`; ``ValueError`` naming elements not trained on."""
        from egnn.atoms.model import element_name

        z = np.asarray(numbers, dtype=np.int64)
        if z.size and (z.min() < 1 or z.max() > 118):
            raise ValueError(f"atomic numbers must be in 1..118, got {int(z.min())}..{int(z.max())}")
        idx = self._table[z]
        if (idx < 0).any():
            unseen = sorted({int(v) for v in z[idx < 0]})
            raise ValueError(
                f"element(s) {', '.join(f'{element_name(v)} (Z={v})' for v in unseen)} not in the training set "
                f"(trained on: {', '.join(element_name(v) for v in self.species)})")
        return torch.from_numpy(idx)

    def __call__(self, species: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor) -> tuple[Tensor, ...]:
        """Per-atom energies ``[N]``, forces ``[N, 3]`` and (files exported with ``--stress``) ``dE/d(strain)``
        ``[3, 3]``, from species indices (:meth:`species_index`), positions, edges and Cartesian shifts."""
        dt = self.dtype
        return tuple(self.runner(species.long().contiguous(), pos.to(dt).contiguous(),
                                 edge_index.long().contiguous(), edge_shift.to(dt).contiguous()))

    def __repr__(self) -> str:
        return (f"ExportedModel({str(self.path)!r}, species={self.species}, cutoff={self.cutoff}, "
                f"dtype={self.meta['dtype']}, stress={self.stress})")


def load_exported(path: str | Path) -> ExportedModel:
    """:class:`ExportedModel` of ``path``."""
    return ExportedModel(path)
