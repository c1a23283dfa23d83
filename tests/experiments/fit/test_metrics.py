import numpy as np
import pytest

from egnn.atoms.data import AtomsData
from egnn.experiments.fit.train import error_metrics, train_baseline


def data(energy, sizes, forces=None):
    n = int(sum(sizes))
    return AtomsData(z=np.ones(n, np.int64), pos=np.zeros((n, 3)), offsets=np.concatenate([[0], np.cumsum(sizes)]),
                     cell=np.zeros((len(sizes), 3, 3)), pbc=np.zeros((len(sizes), 3), bool),
                     energy=np.asarray(energy, float), forces=forces)


def test_error_metrics_values_and_names():
    d = data([2.0, 6.0], [1, 3], forces=np.array([[1.0, -1, 0]] * 4))
    pred = {"energy": np.array([3.0, 3.0]), "forces": np.zeros((4, 3))}
    m = error_metrics(pred, d, "homo", per_atom=True, baseline=train_baseline(data([4.0], [2])))
    assert m["homo_mae"] == pytest.approx(2.0) and m["homo_rmse"] == pytest.approx(np.sqrt(5.0))
    assert m["homo_per_atom_mae"] == pytest.approx((1.0 + 1.0) / 2)
    assert m["baseline_mean_homo_mae"] == pytest.approx(2.0)  # train mean 4
    assert m["baseline_mean_homo_per_atom_mae"] == pytest.approx(0.0)  # train mean per atom 2, both frames 2
    assert m["forces_mae"] == pytest.approx(2 / 3) and m["baseline_zero_forces_mae"] == pytest.approx(2 / 3)
    intensive = error_metrics(pred, d, "gap", per_atom=False)
    assert "gap_per_atom_mae" not in intensive and intensive["baseline_mean_gap_mae"] == pytest.approx(2.0)
