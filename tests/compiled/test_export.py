"""egnn export: the compiled file equals the eager model (any atom and edge count, one file), carries its metadata,
and every wrong file or input is refused in one line."""

import hashlib
import json
import shutil
import warnings
import zipfile

import numpy as np
import pytest
import torch

from egnn.atoms.model import AtomsModel, AtomsModelConfig, load_model, save_model
from egnn.atoms.neighbors import neighbor_list
from egnn.compiled import ExportedModel, ExportError
from egnn.compiled.export import export_model
from egnn.compiled.trace import energy_forces_function, trace_energy_forces
from egnn.experiments.cli import main


def graph_of(pos, cell, pbc, cutoff=4.0):
    edges, shifts = neighbor_list(pos, cutoff, cell, pbc, True)
    return (torch.as_tensor(pos), torch.as_tensor(edges).long(),
            torch.as_tensor(shifts.astype(np.float64) @ cell))


def test_export_checked_against_eager_on_three_sizes(exported):
    for name in ("vector", "invariant"):
        report = exported[name][1]
        assert [r["structure"] for r in report.checks] == ["isolated atom", "5-atom cluster", "27-atom periodic cell"]
        assert all(r["ok"] for r in report.checks)
        assert report.checks[0]["edges"] == 0 and report.checks[2]["edges"] > 100
    assert max(r["max_force_diff"] for r in exported["vector"][1].checks) < 1e-10  # float64
    assert "max_virial_diff" in exported["vector"][1].checks[2]


def test_metadata(exported):
    ckpt, report = exported["vector"]
    m = ExportedModel(report.path)
    meta = m.meta
    assert meta["species"] == [1, 6, 8] and meta["cutoff"] == 4.0 and meta["images"] is True
    assert meta["dtype"] == "float64" and meta["stress"] is True and m.dtype == torch.float64
    assert meta["torch"] == torch.__version__ and meta["units"]["energy"] == "eV"
    assert meta["source_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert meta["model"]["vector_channels"] == 2
    assert ExportedModel(exported["invariant"][1].path).meta["stress"] is False


@pytest.mark.parametrize("name", ["vector", "invariant"])
def test_equal_to_eager_for_many_sizes_with_one_file(exported, name):
    """One loaded file serves molecules and periodic cells of every size and edge count, no recompilation."""
    ckpt, report = exported[name]
    compiled = ExportedModel(report.path)
    dtype = compiled.dtype
    model = load_model(ckpt, dtype=dtype)
    eager = energy_forces_function(model, stress=compiled.stress)
    rng = np.random.default_rng(0)
    edge_counts = set()
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for n in (1, 2, 3, 8, 20, 40):
        periodic = n >= 8
        side = 2.2 * n ** (1 / 3)
        pos = rng.uniform(0, side, (n, 3))
        cell = np.eye(3) * side if periodic else np.zeros((3, 3))
        pbc = np.full(3, periodic)
        x, e, s = graph_of(pos, cell, pbc)
        edge_counts.add(e.shape[1])
        species = compiled.species_index(rng.choice([1, 6, 8], n))
        want = eager(species, x.to(dtype), e, s.to(dtype))
        got = compiled(species, x, e, s)
        assert got[0].shape == (n,) and got[1].shape == (n, 3)
        assert float((got[1] - want[1]).abs().max()) <= tol * (1 + float(want[1].abs().max()))
        assert abs(float(got[0].double().sum() - want[0].double().sum())) <= tol * (n + abs(float(want[0].sum())))
        if compiled.stress:
            assert float((got[2] - want[2]).abs().max()) <= tol * (1 + float(want[2].abs().max()))
    assert len(edge_counts) == 6


def test_tracing_leaves_the_model_alone():
    model = AtomsModel(AtomsModelConfig(species=[1, 8], cutoff=3.0, hidden_channels=8, num_layers=1,
                                        vector_channels=1))
    trace_energy_forces(model, torch.float64)
    p = next(model.parameters())
    assert p.dtype == torch.float32 and p.requires_grad


def run_cli(argv):
    """``egnn ARGV``'s exit code (argparse's refusals raise SystemExit, the commands' return 2)."""
    try:
        return main(argv)
    except SystemExit as err:
        return err.code


def _rewrite(src, dst, change):
    """Copy an archive, passing each member's bytes through ``change(name, data)``."""
    with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w") as b:
        for info in a.infolist():
            b.writestr(info, change(info.filename, a.read(info.filename)))


def test_refuses_broken_files(exported, tmp_path):
    good = exported["vector"][1].path
    data = good.read_bytes()
    (tmp_path / "truncated.pt2").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match="truncated or corrupt"):
        ExportedModel(tmp_path / "truncated.pt2")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # inside the compiled library
    (tmp_path / "flipped.pt2").write_bytes(bytes(flipped))
    with pytest.raises(ExportError, match="corrupt"):
        ExportedModel(tmp_path / "flipped.pt2")
    (tmp_path / "text.pt2").write_text("hello")
    with pytest.raises(ExportError, match="not a readable .pt2"):
        ExportedModel(tmp_path / "text.pt2")
    with pytest.raises(ExportError, match="no such file"):
        ExportedModel(tmp_path / "absent.pt2")

    def other_torch(name, raw):
        if not name.endswith("metadata.json"):
            return raw
        d = json.loads(raw)
        meta = json.loads(d["egnn_export"])
        meta["torch"] = "2.0.0"
        d["egnn_export"] = json.dumps(meta)
        return json.dumps(d).encode()

    _rewrite(good, tmp_path / "old.pt2", other_torch)
    with pytest.raises(ExportError, match=r"compiled with torch 2\.0\.0; this is torch"):
        ExportedModel(tmp_path / "old.pt2")

    def not_ours(name, raw):
        if not name.endswith("metadata.json"):
            return raw
        d = json.loads(raw)
        d.pop("egnn_export")
        return json.dumps(d).encode()

    _rewrite(good, tmp_path / "foreign.pt2", not_ours)
    with pytest.raises(ExportError, match="not an egnn export"):
        ExportedModel(tmp_path / "foreign.pt2")


def test_unknown_element_named(exported):
    m = ExportedModel(exported["vector"][1].path)
    with pytest.raises(ValueError, match=r"Cl \(Z=17\) not in the training set"):
        m.species_index(np.array([1, 17]))


def test_disagreement_refused_and_nothing_written(exported, tmp_path, monkeypatch):
    import egnn.compiled.export as ex

    monkeypatch.setitem(ex.TOLERANCE, "float32", {"atol": 0.0, "rtol": 0.0})
    ckpt = exported["invariant"][0]
    with warnings.catch_warnings(), pytest.raises(ExportError, match="disagrees with the eager model"):
        warnings.simplefilter("ignore")
        export_model(ckpt, tmp_path / "m.pt2", dtype="float32")
    assert list(tmp_path.iterdir()) == []


def test_cli_refusals(exported, tmp_path, capsys):
    ckpt = exported["vector"][0]
    existing = tmp_path / "there.pt2"
    existing.write_text("mine")
    cases = [
        ([str(ckpt), "--out", str(existing)], "exists; choose another --out"),
        ([str(tmp_path / "absent"), "--out", str(tmp_path / "a.pt2")], "RUN: no run folder or checkpoint"),
        ([str(ckpt), "--out", str(tmp_path / "a.onnx")], "--out must end in .pt2"),
        ([str(ckpt), "--out", str(tmp_path / "no" / "a.pt2")], "is not a folder"),
        ([str(ckpt), "--out", str(tmp_path / "a.pt2"), "--dtype", "float16"], "invalid choice"),
    ]
    for argv, message in cases:
        assert run_cli(["export", *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("egnn: error:") and message in lines[0], lines
    assert existing.read_text() == "mine"


def test_cli_refuses_a_model_without_forces(tmp_path, capsys):
    config = AtomsModelConfig(species=[1, 6], cutoff=3.0, hidden_channels=8, num_layers=1, readout="mlp",
                              target="homo")
    ckpt = save_model(AtomsModel(config), tmp_path / "homo")
    assert run_cli(["export", str(ckpt), "--out", str(tmp_path / "m.pt2")]) == 2
    line = capsys.readouterr().err.strip()
    assert "is not an energy model (readout 'mlp', target 'homo')" in line and "\n" not in line


def test_cli_writes_a_file(exported, tmp_path, capsys):
    shutil.copy(exported["invariant"][0], tmp_path / "inv.safetensors")
    assert main(["export", str(tmp_path / "inv"), "--out", str(tmp_path / "m.pt2"), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "checked on the 27-atom periodic cell" in out and '"size_MB"' in out
    assert ExportedModel(tmp_path / "m.pt2").meta["dtype"] == "float32"
