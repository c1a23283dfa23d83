import numpy as np
import pytest

from egnn.experiments.qm9 import data as qm9
from egnn.experiments.qm9.export import export_extxyz

pytest.importorskip("ase")


def small_qm9(n=5, seed=0):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 6, n)
    z = rng.choice(qm9.SPECIES, int(sizes.sum())).astype(np.uint8)
    return qm9.QM9Data(z=z, pos=rng.normal(size=(len(z), 3)).astype(np.float32),
                       offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                       targets=rng.normal(size=(n, 12)) * 1000, index=np.arange(1, n + 1) * 7)


def test_export_reads_back_through_ase_and_load_dataset(tmp_path):
    import ase.io

    from egnn.atoms.data import load_dataset

    data = small_qm9()
    labels = np.array([0, 2, 1, 0, -1])
    path = export_extxyz(data, tmp_path / "qm9.extxyz", labels)
    frames = ase.io.read(str(path), index=":")
    assert len(frames) == 5
    assert [a.info.get("split") for a in frames] == ["train", "test", "valid", "train", None]
    assert [a.info["gdb_index"] for a in frames] == data.index.tolist()
    np.testing.assert_array_equal(np.concatenate([a.numbers for a in frames]), data.z)
    for name in qm9.TARGET_NAMES:
        got = load_dataset(path, name, cache_dir=None, progress=False)
        np.testing.assert_array_equal(got.energy, data.target(name))  # repr() round-trips exactly
        np.testing.assert_array_equal(got.pos, data.pos.astype(np.float64))
        assert not got.pbc.any()
    with pytest.raises(FileExistsError):
        export_extxyz(data, path)
    only = export_extxyz(data, tmp_path / "test.extxyz", labels, rows=np.flatnonzero(labels == 2))
    assert len(ase.io.read(str(only), index=":")) == 1


def test_export_command_writes_the_cached_qm9_with_its_splits(tmp_path, capsys):
    import ase.io

    from egnn.experiments.cli import main

    data = small_qm9(20, seed=1)
    qm9.save_cache(data, tmp_path / "qm9" / qm9.CACHE_NAME)
    qm9.write_splits(tmp_path / "qm9" / qm9.SPLITS_NAME, data)
    out = tmp_path / "test.extxyz"
    assert main(["qm9", "export", "--data", str(tmp_path / "qm9"), "--out", str(out), "--split", "test",
                 "--no-progress"]) == 0
    frames = ase.io.read(str(out), index=":")
    test_index = qm9.load_splits(tmp_path / "qm9")["test"]
    assert len(frames) == len(test_index) == 2
    assert sorted(a.info["gdb_index"] for a in frames) == sorted(test_index.tolist())
    assert {a.info["split"] for a in frames} == {"test"}
    row = int(data.rows_of([frames[0].info["gdb_index"]])[0])
    assert frames[0].info["homo"] == data.target("homo")[row]
    capsys.readouterr()
    assert main(["qm9", "export", "--data", str(tmp_path / "qm9"), "--out", str(out)]) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err
