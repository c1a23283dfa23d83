"""``egnn qm9 ship``: the best checkpoint of each finished grid target as a shipped pretrained model ``qm9-<target>``
(:func:`egnn.pretrained.export_pretrained`), with a card that says how it was made and a recorded MAE on a fixed
slice of the test split that the test suite reproduces.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from egnn.experiments.qm9.fit import PRESETS, evaluate_rows, unit
from egnn.experiments.qm9.grid import planned_epochs, run_state, train_command
from egnn.experiments.qm9.train import PAPER_MAE

SLICE = 500  # the first 500 molecules of the test split (Cormorant / paper split of egnn qm9 prepare)
SPLIT = ("paper split of egnn qm9 prepare (Cormorant): 100,000 train / 17,748 valid / 13,083 test, "
         "GDB-9 indices in splits.npz")


def pretrained_name(target: str) -> str:
    return f"qm9-{target}"


def ship_target(grid: str | Path, target: str, preset: str, data_dir: str | Path,
                folder: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Export ``grid/<target>/best`` as ``qm9-<target>``; returns the index entry's card.

    Raises:
        ValueError: the target's run is missing or unfinished.
    """
    from egnn.atoms.model import load_model
    from egnn.pretrained import QM9_DOMAIN, export_pretrained

    grid = Path(grid)
    state = run_state(grid / target, target, planned_epochs(preset, [target])[target])
    if not state.finished:
        raise ValueError(f"{grid / target}: the {target} run is not finished (epoch {state.epoch} of "
                         f"{state.epochs}); run egnn qm9 table first")
    model = load_model(grid / target)
    try:  # the code that trained it (the run layer records it in run.json)
        code = json.loads((grid / target / "run.json").read_text()).get("code", "unknown")
    except (OSError, ValueError):
        code = "unknown"
    slice_mae, n = evaluate_rows(model, data_dir, "test", limit=SLICE)
    fam = PRESETS.get(preset).recipe(target)
    card = {
        "target": target, "unit": unit(target),
        "quantity": (f"{target} minus the QM9 atomic reference values (atomisation quantity), as in the paper"
                     if target in ("U0", "U", "H", "G", "Cv") else target),
        "data": SPLIT, "preset": preset, "readout": fam.readout, "reference_energies": fam.reference,
        "recipe": PRESETS.get(preset).description,
        "test_mae": state.test_mae, "best_epoch": state.best_epoch, "epochs": state.epoch,
        "train_minutes": None if state.minutes is None else round(state.minutes, 1),
        "paper_mae": PAPER_MAE[target], "ratio_to_paper": None if state.test_mae is None else
        state.test_mae / PAPER_MAE[target],
        "slice": {"split": "test", "first": n, "mae": slice_mae},
        "command": shlex.join(train_command(target, preset, Path("runs") / f"qm9_{target}", "data/qm9")),
        "code": code,
        "domain": QM9_DOMAIN,
    }
    export_pretrained(model, pretrained_name(target), card, folder=folder, overwrite=overwrite)
    return card
