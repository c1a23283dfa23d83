"""The on-disk frame store: packing equals reading, random reads, other formats, corruption, refusals, workers."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

import egnn.atoms.packing as store_module
from egnn.atoms.data import AtomsData, AtomsDataError, file_sha256, read_dataset
from egnn.atoms.packing import StoreWriter, pack
from egnn.atoms.store import AtomsStore, is_store, open_store
from egnn.experiments.cli import main

pytest.importorskip("ase")
import ase.io  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

ARRAYS = ("z", "pos", "offsets", "cell", "pbc", "energy", "forces")


def make_frames(n: int, seed: int = 0) -> list:
    """Rattled periodic cells (1 or 2 cubic fcc cells, one slab periodic in x and y only) and molecules, with
    random energies in ``info`` and forces in ``arrays``."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        if k % 4 == 3:
            a = molecule(["H2O", "CH4", "NH3"][k % 3])
        else:
            a = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1, 1, 1 + k % 2))
            a.numbers[k % len(a)] = 79
            a.rattle(0.05, seed=seed * 1000 + k)
            if k % 4 == 2:
                a.pbc = (True, True, False)
        a.info["U"] = float(rng.normal())
        a.arrays["F"] = rng.normal(size=(len(a), 3))
        # columns and values of every kind the fast parser handles (they must not change what is packed)
        a.arrays["tag"], a.arrays["fixed"] = np.arange(len(a)), np.arange(len(a)) % 2 == 0
        a.info["note"], a.info["vec"] = "a b", np.array([1.0, 2.0, 3.0])
        frames.append(a)
    return frames


def write(path, frames) -> str:
    ase.io.write(str(path), frames)
    return str(path)


@pytest.fixture
def files(tmp_path) -> list[str]:
    return [write(tmp_path / "a.extxyz", make_frames(7, 1)), write(tmp_path / "b.xyz", make_frames(5, 2))]


def concatenated(paths: list[str], energy_key: str | None = "U", forces_key: str | None = "F") -> AtomsData:
    parts = [read_dataset(p, energy_key, forces_key) for p in paths]
    sizes = np.concatenate([d.n_atoms for d in parts])

    def cat(name):
        return None if getattr(parts[0], name) is None else np.concatenate([getattr(d, name) for d in parts])

    return AtomsData(z=cat("z"), pos=cat("pos"), offsets=np.concatenate([[0], np.cumsum(sizes)]), cell=cat("cell"),
                     pbc=cat("pbc"), energy=cat("energy"), forces=cat("forces"))


def assert_same(a: AtomsData, b: AtomsData) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


# ----------------------------------------------------------------------------------------------- packing


def test_pack_equals_read_dataset_of_each_file(files, tmp_path, capsys):
    ref = concatenated(files)
    summary = pack(files, tmp_path / "api", "U", "F", progress=False)
    assert (summary["frames"], summary["atoms"], summary["elements"]) == (12, int(ref.offsets[-1]), ref.elements())
    assert summary["frames_per_s"] > 0
    assert summary["bytes"] == sum(p.stat().st_size for p in (tmp_path / "api").iterdir())
    capsys.readouterr()
    assert main(["data", "pack", *files, "--out", str(tmp_path / "cli"), "--energy", "U", "--forces", "F",
                 "--no-progress"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["frames"] == 12 and printed["energy_key"] == "U" and printed["forces_key"] == "F"
    for name in ("api", "cli"):
        store = open_store(tmp_path / name)
        assert len(store) == 12 and store.elements() == ref.elements() and is_store(tmp_path / name)
        np.testing.assert_array_equal(store.offsets, ref.offsets)
        data = store.read(np.arange(len(store)))
        assert_same(data, ref)
        assert data.source == str(tmp_path / name) and (data.energy_key, data.forces_key) == ("U", "F")
        meta = json.loads((tmp_path / name / "store.json").read_text())
        assert [s["sha256"] for s in meta["sources"]] == [file_sha256(p) for p in files]
        assert [s["frames"] for s in meta["sources"]] == [7, 5] and meta["periodic_frames"] == 10
        # plain .npy files any NumPy reads
        np.testing.assert_array_equal(np.load(tmp_path / name / "positions.npy"), ref.pos)
        assert np.load(tmp_path / name / "numbers.npy").dtype == np.uint8
    assert open_store(tmp_path / "api").meta["sha256"] == open_store(tmp_path / "cli").meta["sha256"]
    assert main(["data", "info", str(tmp_path / "cli")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verified"] is True and info["frames"] == 12 and len(info["sources"]) == 2


def test_read_rows_in_any_order_with_repeats_and_chunks(files, tmp_path):
    pack(files, tmp_path / "s", "U", "F", progress=False)
    store = open_store(tmp_path / "s")
    ref = concatenated(files)
    rows = np.random.default_rng(3).integers(0, 12, 40)  # shuffled, with repeats
    assert_same(store.read(rows), ref.subset(rows))
    assert_same(store.read([11, -1, 0, 1, 2, 5, 4]), ref.subset([11, 11, 0, 1, 2, 5, 4]))
    assert_same(store.read(torch.tensor([2, 3])), ref.subset([2, 3]))
    assert len(store.read([])) == 0
    with pytest.raises(IndexError, match="row 12 is out of range for 12 frames"):
        store.read([0, 12])
    parts = list(store.chunks(rows, size=7))
    assert [len(r) for r, _ in parts] == [7] * 5 + [5]
    np.testing.assert_array_equal(np.concatenate([d.pos for _, d in parts]), ref.subset(rows).pos)
    assert sum(len(d) for _, d in store.chunks()) == 12
    np.testing.assert_array_equal(store.n_atoms, ref.n_atoms)


def test_other_formats_mid_file_fallback_and_small_chunks(tmp_path, monkeypatch):
    frames = make_frames(6, 4)
    for a in frames:  # .traj and .db keep calculator results, not custom arrays
        a.calc = SinglePointCalculator(a, energy=a.info.pop("U"), forces=a.arrays.pop("F"))
    traj, db = write(tmp_path / "c.traj", frames[:3]), write(tmp_path / "d.db", frames[3:])
    # a bare flag in frame 2's comment line: the fast parser hands frames 2.. to ASE
    write(tmp_path / "e.extxyz", frames)
    lines = (tmp_path / "e.extxyz").read_text().split("\n")
    first = 2 + len(frames[0]) + 2 + len(frames[1])
    assert lines[first].strip() == str(len(frames[2]))
    lines[first + 1] += " flag"
    (tmp_path / "e.extxyz").write_text("\n".join(lines))
    paths = [traj, db, str(tmp_path / "e.extxyz")]
    ref = concatenated(paths, "energy", "forces")
    chunk_sizes = []
    original = StoreWriter.append

    def spy(self, data):
        chunk_sizes.append(len(data))
        original(self, data)

    monkeypatch.setattr(StoreWriter, "append", spy)
    handed_to_ase = []
    ase_frames = store_module._ase_frames

    def ase_spy(path, fileobj=None, first=0):
        handed_to_ase.append((os.path.basename(path), first))
        return ase_frames(path, fileobj, first)

    monkeypatch.setattr(store_module, "_ase_frames", ase_spy)
    pack(paths, tmp_path / "s3", "energy", "forces", progress=False, chunk_frames=3)
    assert handed_to_ase == [("c.traj", 0), ("d.db", 0), ("e.extxyz", 2)]
    assert chunk_sizes == [3, 3, 3, 3] and sum(chunk_sizes) == len(ref)  # never more than chunk_frames in memory
    pack(paths, tmp_path / "s1", "energy", "forces", progress=False, chunk_frames=1)
    a, b = open_store(tmp_path / "s3"), open_store(tmp_path / "s1")
    assert_same(a.read(range(12)), ref)
    assert a.meta["sha256"] == b.meta["sha256"]  # the chunking does not change a byte
    for name in a.meta["arrays"]:
        assert (tmp_path / "s3" / f"{name}.npy").read_bytes() == (tmp_path / "s1" / f"{name}.npy").read_bytes()


def test_without_targets_and_writer_refusals(files, tmp_path, capsys):
    assert main(["data", "pack", files[0], "--out", str(tmp_path / "bare"), "--energy", "none", "--no-progress"]) == 0
    store = open_store(tmp_path / "bare")
    data = store.read([0, 3])
    assert store.energy_key is None and data.energy is None and data.forces is None
    assert not (tmp_path / "bare" / "energy.npy").exists() and not (tmp_path / "bare" / "forces.npy").exists()
    ref = read_dataset(files[0], "U", "F")
    with pytest.raises(AtomsDataError, match="atomic numbers must be in 1..118"):
        with StoreWriter(tmp_path / "w", "U", "F") as w:
            w.append(ref)
            bad = ref.subset([0])
            bad.z[0] = 300
            w.append(bad)
    with pytest.raises(AtomsDataError, match="no 'U' values"):
        with StoreWriter(tmp_path / "w", "U") as w:
            w.append(read_dataset(files[0], None))
    with pytest.raises(AtomsDataError, match="no frames to store"):
        with StoreWriter(tmp_path / "w"):
            pass
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(tmp_path / "w", "U", "F") as w:
            w.append(ref)
            raise KeyboardInterrupt
    assert not (tmp_path / "w").exists() and not leftovers(tmp_path)
    with StoreWriter(tmp_path / "w", "U", "F", sources=[{"file": "x", "sha256": "0", "frames": 7}]) as w:
        w.append(ref.subset(range(4)))
        w.append(ref.subset(range(4, 7)))
    assert_same(open_store(tmp_path / "w").read(range(7)), ref)


# ------------------------------------------------------------------------------------------------ errors


def test_corrupt_truncated_and_missing_manifest_are_refused(files, tmp_path):
    pack(files, tmp_path / "s", "U", "F", progress=False)
    pos = tmp_path / "s" / "positions.npy"
    good = pos.read_bytes()
    flipped = bytearray(good)
    flipped[-5] ^= 0x10
    pos.write_bytes(bytes(flipped))
    with pytest.raises(AtomsDataError) as err:
        open_store(tmp_path / "s")
    assert str(err.value) == f"{tmp_path / 's'}: array 'positions' fails its checksum (corrupt store; pack it again)"
    assert len(open_store(tmp_path / "s", verify=False)) == 12  # sizes and headers only
    pos.write_bytes(good[:-24])
    with pytest.raises(AtomsDataError, match=rf"positions.npy is truncated \(expected {len(good)} bytes, found "
                                             rf"{len(good) - 24}\)"):
        open_store(tmp_path / "s", verify=False)
    pos.write_bytes(good)
    assert len(open_store(tmp_path / "s")) == 12
    (tmp_path / "s" / "forces.npy").unlink()
    with pytest.raises(AtomsDataError, match="forces.npy is missing"):
        open_store(tmp_path / "s")
    (tmp_path / "s" / "store.json").unlink()
    assert not is_store(tmp_path / "s")
    with pytest.raises(AtomsDataError, match=r"s: not an egnn store \(no store.json\)$"):
        open_store(tmp_path / "s")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "store.json").write_text("{not json")
    with pytest.raises(AtomsDataError, match="store.json is not valid JSON"):
        open_store(tmp_path / "j")


def test_existing_output_is_refused_and_untouched(files, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AtomsDataError, match=r"taken exists; choose another --out \(nothing is overwritten\)"):
        pack(files, out, "U", "F", progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    assert not leftovers(tmp_path)


def test_missing_key_is_one_line_and_leaves_nothing(files, tmp_path):
    frames = make_frames(9, 5)
    del frames[6].arrays["F"]
    bad = write(tmp_path / "bad.extxyz", frames)
    with pytest.raises(AtomsDataError) as err:
        pack([*files, bad], tmp_path / "s", "U", "F", progress=False, chunk_frames=2)  # chunks already written
    msg = str(err.value)
    assert msg.startswith(f"{bad}: frame 6: key 'F': not found") and "\n" not in msg
    assert not (tmp_path / "s").exists() and not leftovers(tmp_path)
    with pytest.raises(AtomsDataError, match=r"b.xyz: frame 0: key 'stress': not found"):
        pack(files[::-1], tmp_path / "s", "stress", progress=False)
    assert not (tmp_path / "s").exists() and not leftovers(tmp_path)


def test_cli_errors_are_one_line_exit_2(files, tmp_path, capsys):
    def error(argv: list[str]) -> str:
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("egnn: error:") and "Traceback" not in err, err
        return lines[0]

    assert "nope.extxyz: file not found" in error(["data", "pack", str(tmp_path / "nope.extxyz"), "--out",
                                                    str(tmp_path / "s"), "--no-progress"])
    assert "key 'U2': not found" in error(["data", "pack", *files, "--out", str(tmp_path / "s"), "--energy", "U2",
                                             "--no-progress"])
    (tmp_path / "s").mkdir()
    assert "exists; choose another --out" in error(["data", "pack", *files, "--out", str(tmp_path / "s")])
    assert "not an egnn store (no store.json)" in error(["data", "info", str(tmp_path / "s")])
    assert "--energy" in error(["data", "pack", *files, "--out", str(tmp_path / "t"), "--energy="])
    assert "--out" in error(["data", "pack", *files])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.extxyz", "b.xyz", "s"]


# ----------------------------------------------------------------------------------------------- workers


class RowsDataset(torch.utils.data.Dataset):
    """Each item is a batch of rows read from the store (the way a training loop reads it)."""

    def __init__(self, store: AtomsStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, rows: list[int]) -> tuple[int, list[int], AtomsData]:
        return os.getpid(), rows, self.store.read(rows)


def first(batch):
    return batch


@pytest.mark.timing
def test_store_pickles_and_reads_in_dataloader_workers(files, tmp_path):
    pack(files, tmp_path / "s", "U", "F", progress=False)
    store = open_store(tmp_path / "s")
    ref = concatenated(files)
    store.read([0])  # the parent holds open descriptors when the workers start
    copy = pickle.loads(pickle.dumps(store))
    assert copy._fds == {} and store._fds
    assert_same(copy.read([5, 1, 5]), ref.subset([5, 1, 5]))
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(12)), batch_size=3, drop_last=False)
    loader = torch.utils.data.DataLoader(RowsDataset(store), sampler=sampler, batch_size=None, num_workers=2,
                                         collate_fn=first)
    pids, seen = set(), []
    for pid, rows, data in loader:
        pids.add(pid)
        seen += rows
        assert_same(data, ref.subset(rows))
    assert sorted(seen) == list(range(12)) and os.getpid() not in pids
    store.close()
