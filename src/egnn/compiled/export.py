"""``egnn export``: trace, export and compile a fitted model's energy + forces into a ``.pt2`` file, check it
against the eager model, and only then put it where it was asked to go.

The graph of :func:`~egnn.compiled.trace.trace_energy_forces` is exported with two dynamic sizes, the number of
atoms and the number of edges, so one file serves any structure and any neighbour count without recompiling, and
compiled with AOTInductor (C++ on the CPU). The file's metadata (the key ``egnn_export``) carries
what a calculator needs: species, cut-off, periodic images, dtype, units, the egnn and torch versions and the
SHA-256 of the source checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egnn.atoms.model import AtomsModel, load_model, resolve_checkpoint
from egnn.compiled.loader import FORMAT, META_KEY, ExportedModel, ExportError
from egnn.compiled.trace import check_energy_model, example_inputs, trace_energy_forces

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# compiled vs eager, same dtype: |dF| <= atol + rtol * max|F| (eV/A), |dE| <= atol * n_atoms + rtol * |E| (eV);
# float32 sums in another order than the eager kernels, so its bound is that of float32 rounding over a few layers
TOLERANCE = {"float64": {"atol": 1e-8, "rtol": 1e-9}, "float32": {"atol": 2e-4, "rtol": 2e-5}}
# upper bounds of the dynamic sizes (the compiled code checks them at each call)
MAX_ATOMS, MAX_EDGES = 10**8, 2**31 - 1


@dataclass
class ExportReport:
    """What :func:`export_model` did: the file, its size, the time spent and the check against eager."""

    path: Path
    size_bytes: int
    seconds: float
    checks: list[dict[str, Any]] = field(default_factory=list)
    tolerance: dict[str, float] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_structures(model: AtomsModel, seed: int = 0) -> list[dict[str, Any]]:
    """The structures the export is checked on: an isolated atom (no edges), a 5-atom cluster and, with a
    cut-off, a periodic 3x3x3 lattice of 27 atoms (edges through the cell's faces); jittered positions, the model's
    elements in turn."""
    rng = np.random.default_rng(seed)
    s = model.config.species
    out = [{"name": "isolated atom", "numbers": np.array([s[0]]), "positions": np.zeros((1, 3)),
            "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool)}]
    grid = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(3)], dtype=np.float64)
    cluster = grid[:5] * 1.3 + rng.normal(0, 0.1, (5, 3))
    out.append({"name": "5-atom cluster", "numbers": np.array([s[i % len(s)] for i in range(5)]),
                "positions": cluster, "cell": np.zeros((3, 3)), "pbc": np.zeros(3, bool)})
    if model.config.cutoff is not None:
        spacing = 2.0
        out.append({"name": "27-atom periodic cell", "numbers": np.array([s[i % len(s)] for i in range(27)]),
                    "positions": grid * spacing + rng.normal(0, 0.1, (27, 3)), "cell": np.eye(3) * 3 * spacing,
                    "pbc": np.ones(3, bool)})
    return out


def _graph(model_cutoff: float | None, images: bool, st: dict[str, Any], dtype: torch.dtype):
    from egnn.atoms.neighbors import neighbor_list

    edge_index, shifts = neighbor_list(st["positions"], model_cutoff, st["cell"], st["pbc"], images)
    shift = torch.as_tensor(shifts.astype(np.float64) @ st["cell"], dtype=dtype)
    return torch.as_tensor(st["positions"], dtype=dtype), torch.as_tensor(edge_index).long(), shift


def compare(model: AtomsModel, exported: ExportedModel, dtype_name: str, stress: bool) -> list[dict[str, Any]]:
    """Compiled vs eager (same dtype) on :func:`check_structures`; each entry says the largest differences and
    whether they are within ``TOLERANCE``."""
    from egnn.compiled.trace import energy_forces_function

    dtype = DTYPES[dtype_name]
    tol = TOLERANCE[dtype_name]
    eager = energy_forces_function(model, stress)
    rows = []
    for st in check_structures(model):
        pos, edges, shift = _graph(model.cutoff, model.config.images, st, dtype)
        species = exported.species_index(st["numbers"])
        ref = eager(species, pos, edges, shift)
        got = exported(species, pos, edges, shift)
        e_ref, e_got = float(ref[0].double().sum()), float(got[0].double().sum())
        df = float((ref[1] - got[1]).abs().max()) if len(pos) else 0.0
        f_max = float(ref[1].abs().max()) if len(pos) else 0.0
        de = abs(e_ref - e_got)
        ok = df <= tol["atol"] + tol["rtol"] * f_max and de <= tol["atol"] * len(pos) + tol["rtol"] * abs(e_ref)
        row = {"structure": st["name"], "atoms": len(pos), "edges": int(edges.shape[1]), "max_force_diff": df,
               "max_force": f_max, "energy_diff": de, "energy": e_ref}
        if stress and st["pbc"].all():
            dv = float((ref[2] - got[2]).abs().max())
            v_max = float(ref[2].abs().max())
            ok = ok and dv <= tol["atol"] * len(pos) + tol["rtol"] * v_max
            row["max_virial_diff"] = dv
        row["ok"] = bool(ok)
        rows.append(row)
    return rows


def thread_configs(threads: int) -> dict[str, Any]:
    """Inductor's thread settings: ``threads >= 1`` compiles that many OpenMP threads into every kernel (1: no
    parallel regions at all); 0 lets the kernels follow ``torch.get_num_threads()`` at run time."""
    if threads < 0:
        raise ExportError(f"threads must be >= 0 (0: PyTorch's setting at run time), got {threads}")
    return {"cpp.dynamic_threads": True} if threads == 0 else {"cpp.threads": threads}


def export_model(source: str | Path | AtomsModel, out: str | Path, dtype: str = "float64", stress: bool = False,
                 progress: bool = False, threads: int = 1) -> ExportReport:
    """Compile the energy + forces of a fitted model (run folder, checkpoint or
    :class:`~egnn.atoms.model.AtomsModel`) into ``out``.

    ``out`` must not exist (nothing is overwritten). The file is compiled under a temporary name beside ``out``,
    loaded, checked against the eager model (:func:`compare`) and renamed to ``out`` only when it agrees.

    Raises:
        ExportError: not an energy model, ``out`` exists, or the compiled model disagrees with the eager one.
    """
    import egnn
    from egnn.checkpoint import CheckpointError

    out = Path(out)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out.exists():
        raise ExportError(f"{out} exists; choose another --out (nothing is overwritten)")
    if out.suffix != ".pt2":
        raise ExportError(f"--out must end in .pt2 (PyTorch's package format), got {out.name!r}")
    if not out.parent.is_dir():
        raise ExportError(f"{out.parent} is not a folder (where --out should go)")
    started = time.perf_counter()
    if isinstance(source, AtomsModel):
        model, what, sha = source, "the given model", None
    else:
        try:
            model = load_model(source, dtype=torch.float64)
        except CheckpointError as err:
            raise ExportError(str(err)) from None
        what = str(resolve_checkpoint(source))
        sha = file_sha256(resolve_checkpoint(source).with_suffix(".safetensors"))
    check_energy_model(model, what)
    model = copy.deepcopy(model).to(DTYPES[dtype]).eval()  # the caller's model is left as it was
    say = print if progress else (lambda *a, **k: None)
    say(f"tracing energy + forces of {what} ({dtype}{', with stress' if stress else ''})", flush=True)
    gm = trace_energy_forces(model, DTYPES[dtype], stress)
    atoms = torch.export.Dim("n_atoms", min=1, max=MAX_ATOMS)
    edges = torch.export.Dim("n_edges", min=1, max=MAX_EDGES)
    program = torch.export.export(gm, example_inputs(model, DTYPES[dtype]),
                                  dynamic_shapes=({0: atoms}, {0: atoms}, {1: edges}, {0: edges}))
    c = model.config
    meta = {"format": FORMAT, "egnn": egnn.__version__, "torch": torch.__version__, "dtype": dtype, "stress": stress,
            "threads": threads,
            "species": list(c.species), "cutoff": c.cutoff, "images": c.images, "readout": c.readout,
            "target": c.target, "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"},
            "source": what, "source_sha256": sha, "model": c.to_dict(), "tolerance": TOLERANCE[dtype],
            "inputs": ["species_index [N] int64", "pos [N,3]", "edge_index [2,E] int64 (source j, target i)",
                       "edge_shift [E,3] (Angstrom)"],
            "outputs": ["atom_energies [N]", "forces [N,3]"] + (["dE/dstrain [3,3]"] if stress else [])}
    tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}.pt2")
    try:
        say("compiling with AOTInductor (a minute or so)", flush=True)
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp),
            # left alone, Inductor compiles the exporting process's thread count (2 here) into every kernel
            inductor_configs={"aot_inductor.metadata": {META_KEY: json.dumps(meta)}, **thread_configs(threads)})
        checks = compare(model, ExportedModel(tmp), dtype, stress)
        bad = [r for r in checks if not r["ok"]]
        if bad:
            r = bad[0]
            raise ExportError(
                f"the compiled model disagrees with the eager model on the {r['structure']}: forces by "
                f"{r['max_force_diff']:.3g} eV/A, energy by {r['energy_diff']:.3g} eV (tolerance {TOLERANCE[dtype]}); "
                f"{out} was not written")
        if out.exists():  # appeared while compiling: still not ours to replace
            raise ExportError(f"{out} exists; choose another --out (nothing is overwritten)")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(out, out.stat().st_size, time.perf_counter() - started, checks, TOLERANCE[dtype])
