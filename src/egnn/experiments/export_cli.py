"""``egnn export RUN --out model.pt2``: a fitted energy model compiled ahead of time (:mod:`egnn.compiled`)."""

from __future__ import annotations

import argparse
import json

from egnn.experiments.commands import CLIError, add_command, checkpoint_arg, nonnegative_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``export`` to the top-level ``egnn`` parser."""
    p = add_command(
        subparsers, "export", _run_export,
        "compile a fitted energy model's energy + forces into a .pt2 file (AOTInductor) for fast MD",
        description="Trace the energy and its forces (and with --stress the virial) of a fitted energy model into "
        "one graph, compile it ahead of time for any number of atoms and edges, check it against the eager model on "
        "structures of three sizes, and write it to --out (never overwritten). Load it with "
        "egnn.ase.EGNNCalculator('model.pt2') or egnn.openmm.create_force; the file runs with the torch version "
        "that made it.")
    p.add_argument("model", metavar="RUN", help="a run folder (its best checkpoint) or a checkpoint path")
    p.add_argument("--out", required=True, metavar="FILE.pt2", help="the file to write (must not exist)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the compiled model (default float64: forces to ~1e-8 of the eager model's "
                   "and energy-conserving MD; float32 is faster on larger structures)")
    p.add_argument("--kernel-threads", type=nonnegative_int, default=1, metavar="N",
                   help="OpenMP threads compiled into every kernel (default 1: fastest for molecules and small cells, "
                   "no parallel regions at all); 0: follow torch's thread count at run time (for large systems; "
                   "each kernel then opens a parallel region, which made an ethanol call 1.5x slower at one thread)")
    p.add_argument("--stress", action="store_true",
                   help="also compile the virial dE/d(strain), so the file gives stresses (NPT); costs time per call")


def _run_export(args: argparse.Namespace) -> int:
    import warnings

    from egnn.compiled.export import export_model

    try:
        checkpoint_arg(args.model)
    except argparse.ArgumentTypeError as err:
        raise CLIError(f"RUN: {err}") from None
    with warnings.catch_warnings():  # the compiler's internal deprecation notes are not the user's concern
        warnings.simplefilter("ignore")
        report = export_model(args.model, args.out, dtype=args.dtype, stress=args.stress, progress=True,
                              threads=args.kernel_threads)
    for row in report.checks:
        print(f"  checked on the {row['structure']} ({row['atoms']} atoms, {row['edges']} edges): forces within "
              f"{row['max_force_diff']:.2g} eV/A (largest {row['max_force']:.3g}), energy within "
              f"{row['energy_diff']:.2g} eV (of {row['energy']:.6g}) of the eager model")
    print(json.dumps({"file": str(report.path), "size_MB": round(report.size_bytes / 1e6, 2),
                      "export_seconds": round(report.seconds, 1), "tolerance": report.tolerance}, indent=1))
    return 0
