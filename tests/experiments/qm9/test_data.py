"""QM9 data layer: parsing, units and atomrefs, cache integrity, splits, node features (fast: slices only)."""

from __future__ import annotations

import csv
import io
import json
import re
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from egnn.experiments.qm9 import data as qm9

PACKAGED = qm9.qm9pack_data_dir()
needs_qm9pack = pytest.mark.skipif(PACKAGED is None, reason="qm9pack is not installed")
HA_TO_MEV = 27211.4
N_SLICE = 300

# The first three rows of qm9pack's qm9_part1.csv, as written there (Hartree, bohr, debye, cal/mol K).
CSV_VALUES = {
    1: {  # methane, CH4
        "Dipole_debye": "0.",
        "Polarizability_bohr3": "13.21",
        "HOMO_au": "-0.3877",
        "LUMO_au": "0.1171",
        "HOMO_LUMO_gap_au": "0.5048",
        "R2_bohr2": "35.3641",
        "ZPVE_au": "0.044749",
        "InternalEnergy_0K_au": "-40.47893",
        "InternalEnergy_298K_au": "-40.476062",
        "Enthalphy_298K_au": "-40.475117",
        "GibbsFreeEnergy_298K_au": "-40.498597",
        "Heatcapacity_Cv_cal_mol_K": "6.469",
    },
    2: {  # ammonia, NH3
        "Dipole_debye": "1.6256",
        "Polarizability_bohr3": "9.46",
        "HOMO_au": "-0.257",
        "LUMO_au": "0.0829",
        "HOMO_LUMO_gap_au": "0.3399",
        "R2_bohr2": "26.1563",
        "ZPVE_au": "0.034358",
        "InternalEnergy_0K_au": "-56.525887",
        "InternalEnergy_298K_au": "-56.523026",
        "Enthalphy_298K_au": "-56.522082",
        "GibbsFreeEnergy_298K_au": "-56.544961",
        "Heatcapacity_Cv_cal_mol_K": "6.316",
    },
    3: {  # water, H2O
        "Dipole_debye": "1.8511",
        "Polarizability_bohr3": "6.31",
        "HOMO_au": "-0.2928",
        "LUMO_au": "0.0687",
        "HOMO_LUMO_gap_au": "0.3615",
        "R2_bohr2": "19.0002",
        "ZPVE_au": "0.021375",
        "InternalEnergy_0K_au": "-76.404702",
        "InternalEnergy_298K_au": "-76.401867",
        "Enthalphy_298K_au": "-76.400922",
        "GibbsFreeEnergy_298K_au": "-76.422349",
        "Heatcapacity_Cv_cal_mol_K": "6.002",
    },
}

# Expected targets with the atomref arithmetic written out (Hartree -> meV: x 27211.4; Cv: 2.981 per atom).
EXPECTED = {
    1: {
        "U0": (-40.47893 - (-37.846772 + 4 * -0.500273)) * HA_TO_MEV,
        "U": (-40.476062 - (-37.845355 + 4 * -0.498857)) * HA_TO_MEV,
        "H": (-40.475117 - (-37.844411 + 4 * -0.497912)) * HA_TO_MEV,
        "G": (-40.498597 - (-37.861317 + 4 * -0.510927)) * HA_TO_MEV,
        "Cv": 6.469 - 5 * 2.981,
        "homo": -0.3877 * HA_TO_MEV,
        "lumo": 0.1171 * HA_TO_MEV,
        "gap": 0.5048 * HA_TO_MEV,
        "zpve": 0.044749 * HA_TO_MEV,
        "alpha": 13.21,
        "mu": 0.0,
        "r2": 35.3641,
    },
    2: {
        "U0": (-56.525887 - (-54.583861 + 3 * -0.500273)) * HA_TO_MEV,
        "U": (-56.523026 - (-54.582445 + 3 * -0.498857)) * HA_TO_MEV,
        "H": (-56.522082 - (-54.581501 + 3 * -0.497912)) * HA_TO_MEV,
        "G": (-56.544961 - (-54.598897 + 3 * -0.510927)) * HA_TO_MEV,
        "Cv": 6.316 - 4 * 2.981,
        "homo": -0.257 * HA_TO_MEV,
        "lumo": 0.0829 * HA_TO_MEV,
        "gap": 0.3399 * HA_TO_MEV,
        "zpve": 0.034358 * HA_TO_MEV,
        "alpha": 9.46,
        "mu": 1.6256,
        "r2": 26.1563,
    },
    3: {
        "U0": (-76.404702 - (-75.064579 + 2 * -0.500273)) * HA_TO_MEV,
        "U": (-76.401867 - (-75.063163 + 2 * -0.498857)) * HA_TO_MEV,
        "H": (-76.400922 - (-75.062219 + 2 * -0.497912)) * HA_TO_MEV,
        "G": (-76.422349 - (-75.079532 + 2 * -0.510927)) * HA_TO_MEV,
        "Cv": 6.002 - 3 * 2.981,
        "homo": -0.2928 * HA_TO_MEV,
        "lumo": 0.0687 * HA_TO_MEV,
        "gap": 0.3615 * HA_TO_MEV,
        "zpve": 0.021375 * HA_TO_MEV,
        "alpha": 6.31,
        "mu": 1.8511,
        "r2": 19.0002,
    },
}
ATOMIC_NUMBERS = {1: [6, 1, 1, 1, 1], 2: [7, 1, 1, 1], 3: [8, 1, 1]}

# Hand-written QM9 xyz files for the same molecules; some numbers use Mathematica's "*^" exponent notation.
XYZ_FILES = {
    1: """5
gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t\
0.5048\t35.3641\t0.044749\t-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469
C\t-1.26981359*^-2\t 1.0858041578\t 8.0009958*^-3\t-0.535689
H\t 2.150416*^-3\t-6.0313176*^-3\t 1.9761204*^-3\t 0.133921
H\t 1.0117308433\t 1.4637511618\t 2.765748*^-4\t 0.133922
H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923
H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923
1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t3151.7078
C\tC
InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4
""",
    2: """4
gdb 2\t293.60975\t293.54111\t191.39397\t1.6256\t9.46\t-0.257\t0.0829\t\
0.3399\t26.1563\t0.034358\t-56.525887\t-56.523026\t-56.522082\t-56.544961\t6.316
N\t-4.04260543*^-2\t 1.0241077531\t 6.25637998*^-2\t-0.707143
H\t 1.72574639*^-2\t 1.25452063*^-2\t-2.73771593*^-2\t 0.235712
H\t 0.9157893661\t 1.3587451948\t-2.87577581*^-2\t 0.235712
H\t-0.5202777357\t 1.3435321258\t-0.7755426124\t 0.23572
1103.8733\t1684.1158\t1684.3072\t3458.7145\t3575.2414\t3575.3343
N\tN
InChI=1S/H3N/h1H3\tInChI=1S/H3N/h1H3
""",
    3: """3
gdb 3\t799.58812\t437.90386\t282.94545\t1.8511\t6.31\t-0.2928\t0.0687\t\
0.3615\t19.0002\t0.021375\t-76.404702\t-76.401867\t-76.400922\t-76.422349\t6.002
O\t-3.43604951*^-2\t 0.9775395708\t 7.6015923*^-3\t-0.589706
H\t 6.47664923*^-2\t 2.05721989*^-2\t 1.5346341*^-3\t 0.294853
H\t 0.8717903737\t 1.3007924048\t 6.931336*^-4\t 0.294853
1671.4222\t3803.6305\t3907.698
O\tO
InChI=1S/H2O/h1H2\tInChI=1S/H2O/h1H2
""",
}


@pytest.fixture(scope="module")
def csv_rows() -> dict[int, dict[str, str]]:
    """The first rows of the first packaged CSV file, read independently of the parser."""
    assert PACKAGED is not None
    first = sorted(PACKAGED.glob("qm9_part*.csv"), key=lambda p: int(re.findall(r"\d+", p.name)[-1]))[0]
    rows = {}
    with open(first, newline="") as fh:
        for row in csv.DictReader(fh):
            rows[int(row["Index"])] = row
            if len(rows) == 3:
                break
    return rows


@pytest.fixture(scope="module")
def small() -> qm9.QM9Data:
    return qm9.read_source(limit=N_SLICE, progress=False)


def _write_archive(path: Path, order=(3, 1, 2)) -> Path:
    with tarfile.open(path, "w:bz2") as tar:
        for i in order:
            blob = XYZ_FILES[i].encode()
            info = tarfile.TarInfo(f"dsgdb9nsd_{i:06d}.xyz")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_target_table() -> None:
    assert qm9.TARGET_NAMES == ("alpha", "gap", "homo", "lumo", "mu", "Cv", "G", "H", "r2", "U", "U0", "zpve")
    units = {t.name: t.unit for t in qm9.TARGETS}
    assert units == {
        "alpha": "bohr^3", "gap": "meV", "homo": "meV", "lumo": "meV", "mu": "D", "Cv": "cal/mol K",
        "G": "meV", "H": "meV", "r2": "bohr^2", "U": "meV", "U0": "meV", "zpve": "meV",
    }  # fmt: skip
    assert {t.name for t in qm9.TARGETS if t.atomref} == {"U0", "U", "H", "G", "Cv"}
    assert qm9.HARTREE_TO_MEV == pytest.approx(27211.4, rel=1e-12)
    assert {t.csv_column for t in qm9.TARGETS} == set(qm9.RAW_CSV_COLUMNS.values())


@needs_qm9pack
@pytest.mark.parametrize("gdb", [1, 2, 3])
def test_known_answers(small: qm9.QM9Data, csv_rows: dict, gdb: int) -> None:
    row = csv_rows[gdb]
    for column, text in CSV_VALUES[gdb].items():  # the literals above are the CSV's own values
        assert row[column] == text, column
    mol = small.molecule(small.rows_of([gdb])[0])
    assert mol.index == gdb
    assert mol.z.tolist() == ATOMIC_NUMBERS[gdb]
    assert [qm9.ELEMENTS[s] for s in json.loads(row["Elements"].replace("'", '"'))] == ATOMIC_NUMBERS[gdb]
    np.testing.assert_array_equal(mol.pos, np.asarray(json.loads(row["XYZ_Ang"]), dtype=np.float32))
    for name, expected in EXPECTED[gdb].items():
        assert mol.target(name) == pytest.approx(expected, rel=1e-12, abs=1e-9), name
    # non-atomref targets are plain conversions of the CSV values
    for target in qm9.TARGETS:
        if not target.atomref:
            assert mol.target(target.name) == float(row[target.csv_column]) * target.scale


@needs_qm9pack
def test_slice_structure(small: qm9.QM9Data) -> None:
    assert len(small) == N_SLICE
    assert small.index.tolist() == sorted(small.index.tolist()) and small.index[0] == 1
    assert small.offsets[0] == 0 and small.offsets[-1] == len(small.z) == len(small.pos)
    assert small.z.dtype == np.uint8 and small.pos.dtype == np.float32
    assert small.offsets.dtype == np.int64 and small.index.dtype == np.int64
    assert small.targets.shape == (N_SLICE, 12) and small.targets.dtype == np.float64
    assert set(np.unique(small.z)) <= {1, 6, 7, 8, 9}
    assert np.all(np.isfinite(small.targets))


def test_node_features() -> None:
    water = qm9.node_features(torch.tensor([8, 1, 1]))
    assert water.shape == (3, 15) and water.dtype == torch.float32
    expected_o = torch.zeros(15)
    expected_o[9:12] = torch.tensor([1.0, 8 / 9, (8 / 9) ** 2])  # O block: columns 9, 10, 11
    expected_h = torch.zeros(15)
    expected_h[0:3] = torch.tensor([1.0, 1 / 9, (1 / 9) ** 2])  # H block: columns 0, 1, 2
    torch.testing.assert_close(water[0], expected_o)
    torch.testing.assert_close(water[1], expected_h)
    torch.testing.assert_close(water[2], expected_h)
    all_species = qm9.node_features(np.array([1, 6, 7, 8, 9], dtype=np.uint8))
    for s, zz in enumerate((1, 6, 7, 8, 9)):
        row = torch.zeros(15)
        row[3 * s : 3 * s + 3] = torch.tensor([1.0, zz / 9, (zz / 9) ** 2])
        torch.testing.assert_close(all_species[s], row)
    assert qm9.node_features(torch.ones(2, 4, dtype=torch.long)).shape == (2, 4, 15)
    assert qm9.node_features([6], max_power=0).shape == (1, 5)
    with pytest.raises(ValueError, match="17"):
        qm9.node_features([6, 17])


def _synthetic_gdb() -> np.ndarray:
    rng = np.random.default_rng(123)
    excluded = rng.choice(np.arange(1, qm9.N_GDB9 + 1), qm9.N_GDB9 - qm9.N_QM9, replace=False)
    return np.setdiff1d(np.arange(1, qm9.N_GDB9 + 1), excluded)


def test_splits() -> None:
    gdb = _synthetic_gdb()
    assert len(gdb) == 130831
    splits = qm9.make_splits(130831, gdb)
    assert {k: len(v) for k, v in splits.items()} == {"train": 100000, "valid": 17748, "test": 13083}
    together = np.concatenate([splits["train"], splits["valid"], splits["test"]])
    assert len(np.unique(together)) == 130831  # disjoint ...
    np.testing.assert_array_equal(np.sort(together), np.arange(130831))  # ... and covering everything
    again = qm9.make_splits(130831, gdb)
    for name in splits:
        np.testing.assert_array_equal(splits[name], again[name])
    # identical to Cormorant's `np.random.seed(0); np.random.permutation(130831)`; global state untouched
    state = np.random.get_state()
    try:
        np.random.seed(0)
        perm = np.random.permutation(130831)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(together, perm)
    with pytest.raises(ValueError):
        qm9.make_splits(130831, gdb[::-1])
    with pytest.raises(ValueError):
        qm9.make_splits(130830, gdb)


@needs_qm9pack
def test_prepare_load_and_reuse(tmp_path: Path, small: qm9.QM9Data) -> None:
    cache = qm9.prepare(tmp_path, progress=False, limit=N_SLICE)
    assert cache == tmp_path / "qm9.npz"
    loaded = qm9.load(tmp_path, rebuild=False)
    for name in ("z", "pos", "offsets", "targets", "index"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(small, name))
    assert loaded.meta["format_version"] == qm9.FORMAT_VERSION
    with np.load(cache, allow_pickle=False) as npz:  # no pickles anywhere
        assert set(npz.files) == {"meta", "z", "pos", "offsets", "targets", "index"}
    splits = qm9.load_splits(tmp_path)
    together = np.concatenate(list(splits.values()))
    np.testing.assert_array_equal(np.sort(together), loaded.index)
    rows = qm9.make_splits(len(loaded), loaded.index)
    np.testing.assert_array_equal(loaded.rows_of(splits["test"]), rows["test"])
    mtime = cache.stat().st_mtime_ns
    qm9.prepare(tmp_path, progress=False, limit=N_SLICE)
    assert cache.stat().st_mtime_ns == mtime  # valid cache from the same source: reused
    qm9.prepare(tmp_path, progress=False, limit=N_SLICE - 1)
    assert len(qm9.load(tmp_path, rebuild=False)) == N_SLICE - 1  # other options: rebuilt


def _corrupt_and_check(tmp_path: Path, reference: qm9.QM9Data, corrupt) -> None:
    cache = tmp_path / "qm9.npz"
    corrupt(cache)
    with pytest.raises(qm9.CacheError):
        qm9.load(tmp_path, rebuild=False)
    qm9.prepare(tmp_path, progress=False, limit=50)
    rebuilt = qm9.load(tmp_path, rebuild=False)
    np.testing.assert_array_equal(rebuilt.pos, reference.pos)
    np.testing.assert_array_equal(rebuilt.targets, reference.targets)


@needs_qm9pack
def test_truncated_cache_is_rebuilt(tmp_path: Path) -> None:
    reference = qm9.load(qm9.prepare(tmp_path, progress=False, limit=50), rebuild=False)
    for keep in (0.5, 0.99):

        def truncate(path: Path, keep: float = keep) -> None:
            blob = path.read_bytes()
            path.write_bytes(blob[: int(len(blob) * keep)])

        _corrupt_and_check(tmp_path, reference, truncate)


def _member_data_span(path: Path, member: str) -> tuple[int, int]:
    """Byte range of one npz member's stored data inside the zip file."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member + ".npy")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.compress_size


@needs_qm9pack
@pytest.mark.parametrize("member", ["meta", "z", "pos", "offsets", "targets", "index"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_bit_flipped_cache_is_rebuilt(tmp_path: Path, member: str, where: float) -> None:
    reference = qm9.load(qm9.prepare(tmp_path, progress=False, limit=50), rebuild=False)

    def flip(path: Path) -> None:
        start, end = _member_data_span(path, member)
        blob = bytearray(path.read_bytes())
        blob[start + int((end - start) * where)] ^= 0x04
        path.write_bytes(bytes(blob))

    _corrupt_and_check(tmp_path, reference, flip)


@needs_qm9pack
def test_checksum_catches_consistent_zip_with_wrong_data(tmp_path: Path) -> None:
    cache = qm9.prepare(tmp_path, progress=False, limit=50)
    with np.load(cache, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    # a valid zip (fresh CRCs) whose data no longer matches the recorded sha256
    arrays["targets"][0, 0] += 1.0
    np.savez(cache, **arrays)
    with pytest.raises(qm9.CacheError, match="sha256"):
        qm9.load(tmp_path, rebuild=False)


@needs_qm9pack
def test_other_format_version_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(qm9.cache, "FORMAT_VERSION", qm9.FORMAT_VERSION + 100)  # where the cache reads it
        qm9.prepare(tmp_path, progress=False, limit=20)
    with pytest.raises(qm9.CacheError, match="format version"):
        qm9.load(tmp_path, rebuild=False)
    qm9.prepare(tmp_path, progress=False, limit=20)
    assert qm9.cache_info(tmp_path)["format_version"] == qm9.FORMAT_VERSION


@needs_qm9pack
def test_xyz_archive_and_folder(tmp_path: Path, small: qm9.QM9Data) -> None:
    archive = _write_archive(tmp_path / "dsgdb9nsd.xyz.tar.bz2")
    reference = small.subset(small.rows_of([1, 2, 3]))
    cache = qm9.prepare(tmp_path / "out", source=archive, progress=False, exclude=None)
    from_archive = qm9.load(cache, rebuild=False)
    folder = tmp_path / "xyz"
    folder.mkdir()
    for i, text in XYZ_FILES.items():
        (folder / f"dsgdb9nsd_{i:06d}.xyz").write_text(text)
    from_folder = qm9.read_source(folder, progress=False, exclude=None)
    for data in (from_archive, from_folder):
        assert data.index.tolist() == [1, 2, 3]  # sorted although the archive holds 3, 1, 2
        for name in ("z", "pos", "offsets", "targets"):
            np.testing.assert_array_equal(getattr(data, name), getattr(reference, name))
    assert qm9.cache_info(cache)["source"]["kind"] == "xyz-archive"
    # 3 molecules: all train, in the order of np.random.RandomState(0).permutation(3) == [2, 1, 0]
    assert qm9.load_splits(tmp_path / "out")["train"].tolist() == [3, 2, 1]


@needs_qm9pack
def test_xyz_exclusions(tmp_path: Path) -> None:
    archive = _write_archive(tmp_path / "dsgdb9nsd.xyz.tar.bz2")
    # qm9pack holds 1, 2 and 3, so "auto" without uncharacterized.txt keeps all three
    assert qm9.read_source(archive, progress=False).index.tolist() == [1, 2, 3]
    (tmp_path / "uncharacterized.txt").write_text(" Index  GDB  B3LYP\n     2  N  N  0.1\n\n")
    data = qm9.read_source(archive, progress=False)  # auto: uses uncharacterized.txt next to the archive
    assert data.index.tolist() == [1, 3] and data.meta["n_excluded"] == 1
    assert qm9.read_source(archive, progress=False, exclude="none").index.tolist() == [1, 2, 3]


def test_malformed_xyz_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "dsgdb9nsd_000001.xyz"
    bad.write_text(XYZ_FILES[1].replace("\nH\t 2.150416", "\nXx\t 2.150416"))
    with pytest.raises(qm9.QM9DataError, match="dsgdb9nsd_000001.xyz"):
        qm9.read_source(tmp_path, progress=False, exclude=None)


def test_missing_source_mentions_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qm9.sources, "qm9pack_data_dir", lambda: None)
    with pytest.raises(qm9.QM9DataError, match=re.escape("pip install 'qm9pack==1.0.3'")):
        qm9.prepare(tmp_path / "out")
    with pytest.raises(qm9.QM9DataError, match=re.escape("pip install 'qm9pack==1.0.3'")):
        qm9.load(tmp_path / "out")  # missing cache -> rebuild -> no source
    with pytest.raises(qm9.QM9DataError, match="does not exist"):
        qm9.prepare(tmp_path / "out", source=tmp_path / "nope.tar.bz2")

    from egnn.experiments.cli import main

    assert main(["qm9", "prepare", "--out", str(tmp_path / "cli")]) == 2


@needs_qm9pack
def test_cli_prepare(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from egnn.experiments.cli import main

    archive = _write_archive(tmp_path / "dsgdb9nsd.xyz.tar.bz2")
    out = tmp_path / "out"
    assert main(["qm9", "prepare", "--out", str(out), "--source", str(archive), "--exclude", "none"]) == 0
    printed = capsys.readouterr().out
    assert "3 molecules" in printed and "MB" in printed and "time:" in printed
    assert (out / "qm9.npz").is_file() and (out / "splits.npz").is_file()


@pytest.mark.timing
def test_subset_is_torch_free() -> None:
    script = """
import sys
import numpy as np
from egnn.experiments.qm9.data import QM9Data
d = QM9Data(np.array([6, 1, 8, 1, 1], np.uint8), np.arange(15, dtype=np.float32).reshape(5, 3),
            np.array([0, 2, 5]), np.arange(24, dtype=float).reshape(2, 12), np.array([4, 9]))
s = d.subset([1, 0])
assert s.index.tolist() == [9, 4] and s.z.tolist() == [8, 1, 1, 6, 1] and s.offsets.tolist() == [0, 3, 5]
assert s.pos[0].tolist() == [6.0, 7.0, 8.0] and s.targets[0, 0] == 12.0
assert d.subset(np.array([False, True])).index.tolist() == [9] and d.rows_of([9, 4]).tolist() == [1, 0]
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=600)  # a hang guard, not a race
