"""``egnn data pack`` / ``egnn data info``: pack ASE-readable files into an on-disk, checksummed store of frames
(:mod:`egnn.atoms.store`) for data sets larger than memory, and check and describe a store.

Errors in the user's input (:class:`~egnn.atoms.data.AtomsDataError`, :class:`CLIError`) become one
``egnn: error: ...`` line and exit code 2 in :func:`~egnn.experiments.commands.run_command`.
"""

from __future__ import annotations

import argparse
import json

from egnn.experiments.commands import ArgumentParser, add_command


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group (``pack``, ``info``) to the top-level ``egnn`` parser."""
    p = subparsers.add_parser("data", help="pack data files into an on-disk store for data larger than memory",
                              description="pack ASE-readable files into an on-disk, checksummed store of frames "
                              "(read frame by frame, so data sets larger than memory fit), and inspect one")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True, parser_class=ArgumentParser)
    pack = add_command(
        actions, "pack", _run_pack, "pack ASE-readable files into a new store (one streaming pass)", progress=True,
        description="Read FILE... in order (extxyz, ASE .db, .traj ...) frame by frame with bounded memory, validate "
        "every frame (atomic numbers, finite values, the requested keys) and write a new store folder: flat .npy "
        "arrays and a store.json manifest with the SHA-256 of every array and input file. Prints a JSON summary.")
    pack.add_argument("files", nargs="+", metavar="FILE", help="input files, packed in this order")
    pack.add_argument("--out", required=True, metavar="STORE", help="the store folder to create (must not exist)")
    pack.add_argument("--energy", type=_key, default="energy", metavar="KEY|none",
                      help="graph-level target key of every frame (default: energy; none: no target, for "
                      "prediction-only data)")
    pack.add_argument("--forces", type=_key, default=None, metavar="KEY|none",
                      help="per-atom forces key of every frame (default: none)")
    info = add_command(actions, "info", _run_info, "check a store (checksums included) and print its summary, JSON")
    info.add_argument("store", metavar="STORE", help="a store folder written by egnn data pack")
    info.add_argument("--no-verify", action="store_true",
                      help="check headers and sizes only, not the checksums (reads nothing but the manifest)")


def _key(text: str) -> str | None:
    """A data key, or ``none`` for "not stored"."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("expected a key or 'none', got an empty string")
    return None if name.lower() == "none" else name


_key.__name__ = "a key or 'none'"


def _run_pack(args: argparse.Namespace) -> int:
    from egnn.atoms.packing import pack

    summary = pack(args.files, args.out, energy_key=args.energy, forces_key=args.forces,
                   progress=not args.no_progress)
    print(json.dumps(summary, indent=1))
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from egnn.atoms.store import open_store

    store = open_store(args.store, verify=not args.no_verify)
    with store:
        info = store.summary()
    info.update(verified=store.verified, sources=store.meta.get("sources", []), created=store.meta.get("created"))
    print(json.dumps(info, indent=1))
    return 0
