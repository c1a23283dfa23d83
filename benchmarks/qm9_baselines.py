"""What a QM9 target's readout starts from: the test MAE of least-squares baselines, before any network.

    python benchmarks/qm9_baselines.py --data data/qm9

For every target: the training mean alone, and per-element least-squares references on the composition (what the
``sum`` readout of the atoms path starts from). For r2 also the spatial baseline of the ``spatial`` readout,
:math:`\\sum_i (\\alpha_{Z_i} \\|x_i - c\\|^2 + \\beta_{Z_i})`, about three centres: the centroid, the centre of
nuclear charge (what the readout uses) and the centre of mass. Fitted on the training split, reported on the test
split, in the paper's units. Deterministic (no training); prints the commit.
"""

from __future__ import annotations

import argparse

import numpy as np

from egnn.atoms.model import composition, fit_statistics
from egnn.experiments.qm9 import data as qm9
from egnn.experiments.qm9.atoms import load_atoms_splits
from egnn.experiments.qm9.train import PAPER_MAE
from egnn.experiments.run import code_version

# standard atomic weights of the QM9 elements (IUPAC), for the centre-of-mass row only
MASS = {1: 1.008, 6: 12.011, 7: 14.007, 8: 15.999, 9: 18.998}


def spatial_mae(train, test, weight) -> float:
    """Test MAE of the least-squares fit of r2 on per-element sums of ||x - c||^2 and counts (c: ``weight`` centre)."""
    def features(d):
        f = len(d)
        frame = np.repeat(np.arange(f), d.n_atoms)
        w = weight(d.z)
        c = np.stack([np.bincount(frame, w * d.pos[:, k], f) for k in range(3)], 1) / np.bincount(frame, w, f)[:, None]
        r2 = ((d.pos - c[frame]) ** 2).sum(1)
        index = np.full(119, -1)
        index[list(qm9.SPECIES)] = np.arange(len(qm9.SPECIES))
        x = np.zeros((f, 2 * len(qm9.SPECIES)))
        np.add.at(x, (frame, index[d.z]), r2)
        np.add.at(x, (frame, len(qm9.SPECIES) + index[d.z]), 1.0)
        return x

    coef, *_ = np.linalg.lstsq(features(train), train.energy, rcond=None)
    return float(np.abs(features(test) @ coef - test.energy).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="data/qm9", help="prepared cache (egnn qm9 prepare --out DIR)")
    args = parser.parse_args(argv)
    species = list(qm9.SPECIES)
    print("| target | unit | paper EGNN | mean only | per-element references | references / paper |")
    print("|---|---|---|---|---|---|")
    r2_splits = None
    for target in qm9.TARGET_NAMES:
        s = load_atoms_splits(args.data, target)
        train, test = s["train"], s["test"]
        refs = np.asarray(fit_statistics(train, species=species, reference=True)["ref_energies"])
        lsq = float(np.abs(composition(test, species) @ refs - test.energy).mean())
        mean = float(np.abs(train.energy.mean() - test.energy).mean())
        unit = qm9.TARGETS[qm9.target_index(target)].unit
        paper = PAPER_MAE[target]
        print(f"| {target} | {unit} | {paper:g} | {mean:.4g} | {lsq:.4g} | {lsq / paper:.0f}x |")
        if target == "r2":
            r2_splits = (train, test)
    assert r2_splits is not None
    print("\nr2, spatial baseline sum_i (alpha_Z |x_i - c|^2 + beta_Z), test MAE (bohr^2):")
    for name, weight in [("centroid", lambda z: np.ones(len(z))), ("centre of nuclear charge", lambda z: z * 1.0),
                         ("centre of mass", lambda z: np.array([MASS[int(v)] for v in z]))]:
        print(f"  {name}: {spatial_mae(*r2_splits, weight):.3f}")
    print(f"\nPrinted by {code_version()}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
