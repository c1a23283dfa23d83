import numpy as np
import pytest

from egnn.atoms.data import AtomsDataError, load_dataset, read_dataset

pytest.importorskip("ase")
import ase.io  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402


def make_frames(n=4, seed=0, calc=True):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        m = 2 + k % 3
        a = Atoms(numbers=rng.choice([1, 6, 8], m), positions=rng.normal(size=(m, 3)) * 2, cell=np.eye(3) * 6,
                  pbc=bool(k % 2))
        e, f = float(rng.normal()), rng.normal(size=(m, 3))
        if calc:
            a.calc = SinglePointCalculator(a, energy=e, forces=f)
        else:
            a.info["U0"] = e
            a.arrays["dft_forces"] = f
        frames.append(a)
    return frames


@pytest.mark.parametrize("ext", ["extxyz", "traj", "db"])
def test_reads_calculator_results_from_any_ase_format(tmp_path, ext):
    frames = make_frames()
    path = tmp_path / f"data.{ext}"
    ase.io.write(str(path), frames)
    data = read_dataset(path, "energy", "forces")
    assert len(data) == 4 and list(data.n_atoms) == [2, 3, 4, 2]
    # extxyz stores 8 decimals
    np.testing.assert_allclose(data.energy, [a.get_potential_energy() for a in frames], atol=1e-7)
    np.testing.assert_allclose(data.forces, np.concatenate([a.get_forces() for a in frames]), atol=1e-7)
    np.testing.assert_allclose(data.pos, np.concatenate([a.positions for a in frames]), atol=1e-7)
    assert data.pbc[:, 0].tolist() == [False, True, False, True]
    np.testing.assert_allclose(data.cell[1], np.eye(3) * 6)


def test_reads_info_and_arrays_keys(tmp_path):
    frames = make_frames(calc=False)
    path = tmp_path / "d.extxyz"
    ase.io.write(str(path), frames)
    data = read_dataset(path, "U0", "dft_forces")
    np.testing.assert_allclose(data.energy, [a.info["U0"] for a in frames], atol=1e-7)
    np.testing.assert_allclose(data.forces, np.concatenate([a.arrays["dft_forces"] for a in frames]), atol=1e-7)
    sub = data.subset([3, 1])
    np.testing.assert_allclose(sub.pos, np.concatenate([frames[3].positions, frames[1].positions]), atol=1e-7)
    np.testing.assert_allclose(sub.energy, [frames[3].info["U0"], frames[1].info["U0"]], atol=1e-7)


def write(tmp_path, frames, name="bad.extxyz"):
    path = tmp_path / name
    ase.io.write(str(path), frames)
    return path


def test_missing_key_names_file_frame_and_key(tmp_path):
    path = write(tmp_path, make_frames(calc=False))
    with pytest.raises(AtomsDataError) as err:
        read_dataset(path, "homo")
    msg = str(err.value)
    assert msg.startswith(f"{path}: frame 0: key 'homo': not found") and "U0" in msg and "\n" not in msg


def test_forces_in_some_frames_only(tmp_path):
    frames = make_frames(calc=False)
    del frames[2].arrays["dft_forces"]
    path = write(tmp_path, frames)
    with pytest.raises(AtomsDataError, match=r"frame 2: key 'dft_forces': not found"):
        read_dataset(path, "U0", "dft_forces")
    with pytest.raises(AtomsDataError, match=r"frame 2: key 'dft_forces': missing, but frame 0 has it"):
        read_dataset(path, "U0", "dft_forces", require_targets=False)


def test_nan_inf_and_empty_frame_and_zero_volume(tmp_path):
    frames = make_frames(calc=False)
    frames[1].info["U0"] = float("nan")
    with pytest.raises(AtomsDataError, match=r"frame 1: key 'U0': contains NaN/Inf"):
        read_dataset(write(tmp_path, frames, "nan.extxyz"), "U0")
    frames = make_frames(calc=False)
    frames[3].arrays["dft_forces"][0, 1] = np.inf
    with pytest.raises(AtomsDataError, match=r"frame 3: key 'dft_forces': contains NaN/Inf"):
        read_dataset(write(tmp_path, frames, "inf.extxyz"), "U0", "dft_forces")
    frames = make_frames(calc=False)
    frames.insert(2, Atoms(cell=np.eye(3), info={"U0": 1.0}))
    with pytest.raises(AtomsDataError, match=r"frame 2: key 'numbers': the frame has no atoms"):
        read_dataset(write(tmp_path, frames, "empty.extxyz"), "U0")
    frames = make_frames(calc=False)
    frames[1].cell = [[3, 0, 0], [0, 3, 0], [3, 3, 0]]
    frames[1].pbc = True
    with pytest.raises(AtomsDataError, match=r"frame 1: key 'cell': cell has zero volume"):
        read_dataset(write(tmp_path, frames, "flat.extxyz"), "U0")


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(AtomsDataError, match="file not found"):
        load_dataset(tmp_path / "nope.extxyz", cache_dir=tmp_path)
    bad = tmp_path / "junk.extxyz"
    bad.write_text("this is not\nan xyz file\n")
    with pytest.raises(AtomsDataError, match=r"junk.extxyz: ASE cannot read it"):
        read_dataset(bad)


def test_cache_is_reused_verified_and_rebuilt(tmp_path):
    frames = make_frames(6)
    path = write(tmp_path, frames, "d.extxyz")
    cache = tmp_path / "cache"
    first = load_dataset(path, "energy", "forces", cache_dir=cache, progress=False)
    assert first.meta["cached"] is False
    second = load_dataset(path, "energy", "forces", cache_dir=cache, progress=False)
    assert second.meta["cached"] is True and second.source == str(path)
    for name, value in first.arrays().items():
        np.testing.assert_array_equal(value, second.arrays()[name])
    # a tampered array fails its checksum, a truncated file fails to load: both are rebuilt, never used
    cfile = next(cache.glob("*.npz"))
    with np.load(cfile) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["forces"] = arrays["forces"] + 1.0
    with open(cfile, "wb") as fh:
        np.savez(fh, **arrays)
    third = load_dataset(path, "energy", "forces", cache_dir=cache, progress=False)
    assert third.meta["cached"] is False
    np.testing.assert_array_equal(third.forces, first.forces)
    cfile.write_bytes(cfile.read_bytes()[:-300])
    fourth = load_dataset(path, "energy", "forces", cache_dir=cache, progress=False)
    assert fourth.meta["cached"] is False
    np.testing.assert_array_equal(fourth.forces, first.forces)
    assert load_dataset(path, "energy", "forces", cache_dir=cache, progress=False).meta["cached"] is True
    # other keys or an edited file never reuse it
    assert load_dataset(path, "energy", None, cache_dir=cache, progress=False).meta["cached"] is False
    frames[0].positions[0, 0] += 0.1
    frames[0].calc.atoms = frames[0]  # keep the results attached
    ase.io.write(str(path), frames)
    edited = load_dataset(path, "energy", "forces", cache_dir=cache, progress=False)
    assert edited.meta["cached"] is False and edited.pos[0, 0] == pytest.approx(first.pos[0, 0] + 0.1)


@pytest.mark.timing
def test_import_egnn_and_model_work_without_ase():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['ase'] = None\n"
        "import egnn, egnn.atoms, torch\n"
        "from egnn.atoms.model import AtomsModel, AtomsModelConfig\n"
        "m = AtomsModel(AtomsModelConfig(species=[1], hidden_channels=4, num_layers=1))\n"
        "from egnn.atoms.data import AtomsDataError, read_dataset\n"
        "try:\n    read_dataset(egnn.__file__)\nexcept AtomsDataError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)  # hang guard
    assert out.returncode == 0, out.stderr
    assert "pip install 'egnn[ase]'" in out.stdout


def test_fast_extxyz_reader_matches_ase(tmp_path):
    from egnn.atoms.data import from_atoms_list, read_extxyz_fast, read_frames
    from egnn.experiments.fit.emt import EMTConfig, generate

    frames = generate(EMTConfig(n_frames=6, repeat=(1, 1, 2), seed=4))  # periodic, calculator results
    frames[2].pbc = (True, False, True)
    more = make_frames(calc=False)  # info / arrays keys, molecules
    for a in more:
        a.info["tag"] = "x y"  # a quoted string value
        a.info["vec"] = np.array([1.0, 2.0, 3.0])
    for name, fr, keys in (("emt", frames, ("energy", "forces")), ("mol", more, ("U0", "dft_forces"))):
        path = tmp_path / f"{name}.extxyz"
        ase.io.write(str(path), fr)
        fast = read_extxyz_fast(path)
        assert fast is not None and len(fast) == len(fr)
        a = from_atoms_list(fast, name, *keys)
        b = from_atoms_list(read_frames(path), name, *keys)
        for key, value in b.arrays().items():
            np.testing.assert_array_equal(a.arrays()[key], value, err_msg=key)
        assert fast[0].info["vec"].tolist() == [1.0, 2.0, 3.0] if name == "mol" else True
    odd = tmp_path / "odd.extxyz"
    odd.write_text("1\nProperties=species:S:1:pos:R:3 flag energy=1.0\nH 0 0 0\n")  # a bare flag: ASE's job
    assert read_extxyz_fast(odd) is None
    assert read_dataset(odd, "energy").energy.tolist() == [1.0]
