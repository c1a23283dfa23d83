"""Where ``egnn fit/eval/predict`` read frames from: an ASE-readable file (parsed once, through the verified cache,
held in memory) or a packed store (:mod:`egnn.atoms.store`, read by row, never whole), and the streaming passes
that keep a store's memory flat: element checks, descriptions and error metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from egnn.atoms.data import DEFAULT_CACHE_DIR, AtomsData, load_dataset
from egnn.atoms.loader import FrameRows
from egnn.atoms.model import check_species, element_name

# force components kept for a store's parity plot (a uniform sample; the metrics use every component)
PARITY_SAMPLE = 20_000


def is_store(path: str | Path) -> bool:
    from egnn.atoms.store import is_store as _is_store

    return _is_store(path)


def open_frames(path: str | Path, target: str | None, forces: str | None, cache_dir: str | None = DEFAULT_CACHE_DIR,
                progress: bool = False) -> AtomsData | FrameRows:
    """A file as an in-memory :class:`AtomsData`, a store as :class:`FrameRows` (its keys must be the ones asked
    for: a store holds the targets it was packed with)."""
    if not is_store(path):
        return load_dataset(path, target, forces, cache_dir=cache_dir, progress=progress)
    from egnn.atoms.data import AtomsDataError
    from egnn.atoms.store import open_store

    store = open_store(path)
    for flag, asked, held in (("--target", target, store.energy_key), ("--forces", forces, store.forces_key)):
        if asked is not None and asked != held:
            raise AtomsDataError(
                f"{path}: the store holds {'no ' + flag[2:] if held is None else repr(held)} "
                f"({flag} {asked!r} asked); it was packed with --energy {store.energy_key} --forces "
                f"{store.forces_key} (egnn data pack FILE... --energy KEY --forces KEY)")
    return FrameRows(store)


def first_frame_periodic(path: str | Path) -> bool | None:
    """Whether the first frame of a file or store is periodic in some direction (``None``: it cannot be read here;
    the fit that follows says why). One frame is read, not the file."""
    try:
        if is_store(path):
            from egnn.atoms.store import open_store

            with open_store(path, verify=False) as store:
                return bool(store.read([0]).pbc.any()) if len(store) else None
        import ase.io

        return bool(ase.io.read(str(path), index=0).pbc.any())
    except Exception:  # noqa: BLE001 - any unreadable input is reported by the fit itself, with its own message
        return None


def graph_size(path: str | Path, cutoff: float | None, images: bool = True,
               frames: int = 8) -> tuple[float, float] | None:
    """Mean atoms and edges per frame of the first ``frames`` frames of a file or store (``None``: they cannot be
    read here; the fit that follows says why). Only those frames are read."""
    from egnn.atoms.neighbors import neighbor_list

    try:
        if is_store(path):
            from egnn.atoms.store import open_store

            with open_store(path, verify=False) as store:
                if not len(store):
                    return None
                data = store.read(np.arange(min(frames, len(store))))
                sample = [data.frame(i) for i in range(len(data))]
        else:
            import ase.io

            sample = [{"pos": a.positions, "cell": np.asarray(a.cell), "pbc": a.pbc}
                      for a in ase.io.read(str(path), index=f":{frames}")]
        if not sample:
            return None
        edges = [neighbor_list(f["pos"], cutoff, f["cell"], f["pbc"], images)[0].shape[1] for f in sample]
        return float(np.mean([len(f["pos"]) for f in sample])), float(np.mean(edges))
    except Exception:  # noqa: BLE001 - any unreadable input is reported by the fit itself, with its own message
        return None


def has_forces(d: AtomsData | FrameRows) -> bool:
    return (d.forces_key if isinstance(d, FrameRows) else d.forces) is not None


def check_elements(d: AtomsData | FrameRows, species: list[int]) -> None:
    """``ValueError`` naming the first frame with an element outside ``species`` (a store: chunk by chunk)."""
    if isinstance(d, AtomsData):
        check_species(d, species)
        return
    if set(d.base.elements()) <= set(species):  # the store's manifest lists every element it holds
        return
    known = np.zeros(119, dtype=bool)
    known[species] = True
    done = 0
    for chunk in d.chunks():
        bad = ~known[chunk.z]
        if bad.any():
            atom = int(np.flatnonzero(bad)[0])
            frame = done + int(np.searchsorted(chunk.offsets, atom, side="right") - 1)
            z = int(chunk.z[atom])
            raise ValueError(f"{d.source}: frame {int(d.rows[frame])}: key 'numbers': element {element_name(z)} "
                             f"(Z={z}) is not in the training set (trained on: "
                             f"{', '.join(element_name(v) for v in species)})")
        done += len(chunk)


def describe(d: AtomsData | FrameRows) -> dict[str, Any]:
    if isinstance(d, FrameRows):
        return {"store": d.source, "frames": len(d), "atoms": int(d.n_atoms.sum()), "elements": d.base.elements(),
                "energy_key": d.energy_key, "forces_key": d.forces_key}
    info: dict[str, Any] = {"file": d.source, "frames": len(d), "atoms": int(len(d.z)),
                            "elements": d.elements(), "periodic_frames": int(d.pbc.any(axis=1).sum()),
                            "energy_key": d.energy_key, "forces_key": d.forces_key}
    if "cache" in d.meta:
        info["cache"] = d.meta["cache"]
    return info


def content_id(d: AtomsData | FrameRows) -> str | None:
    """The SHA-256 of a file's bytes or of a store's arrays (identifies the data of a run)."""
    return d.base.meta.get("sha256") if isinstance(d, FrameRows) else d.meta.get("sha256")


class StreamedPredictions:
    """Predictions and labels of a store's frames gathered chunk by chunk: per-frame energies (F numbers) in
    full, force errors as running sums plus a uniform sample of components for the parity plot. Has the
    attributes :func:`~egnn.experiments.fit.train.error_metrics` and ``parity_plots`` read."""

    def __init__(self, model: Any, frames: FrameRows, forces: bool, batch_size: int = 64, seed: int = 0) -> None:
        e_pred, e_true, n_atoms = [], [], []
        f_abs = f_sq = f_true_abs = 0.0
        f_count = 0
        sample_pred, sample_true = [], []
        rng = np.random.default_rng(seed)
        total_components = 3 * int(frames.n_atoms.sum())
        keep = min(1.0, PARITY_SAMPLE / max(total_components, 1))
        for chunk in frames.chunks(1024):
            pred = model.predict(chunk, forces=forces, batch_size=batch_size)
            e_pred.append(pred["energy"])
            n_atoms.append(chunk.n_atoms)
            if chunk.energy is not None:
                e_true.append(chunk.energy)
            if forces and chunk.forces is not None:
                err = pred["forces"] - chunk.forces
                f_abs += float(np.abs(err).sum())
                f_sq += float(np.square(err).sum())
                f_true_abs += float(np.abs(chunk.forces).sum())
                f_count += err.size
                pick = rng.random(err.size) < keep
                sample_pred.append(pred["forces"].ravel()[pick])
                sample_true.append(chunk.forces.ravel()[pick])
        self.pred = {"energy": np.concatenate(e_pred)}
        self.energy = np.concatenate(e_true) if e_true else None
        self.n_atoms = np.concatenate(n_atoms)
        self.frames, self.atoms, self.source = len(frames), int(self.n_atoms.sum()), frames.source
        self.forces_sums = (f_abs, f_sq, f_true_abs, f_count) if f_count else None
        if f_count:
            self.pred["forces"] = np.concatenate(sample_pred)
            self.forces = np.concatenate(sample_true)
        else:
            self.forces = None
