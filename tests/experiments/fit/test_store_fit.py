"""``egnn fit/eval/predict`` on a packed store give what they give on the file it was packed from."""

import json

import numpy as np
import pytest

pytest.importorskip("ase")
import ase.io  # noqa: E402

from egnn.experiments.cli import main  # noqa: E402
from tests.experiments.fit.test_cli import files, fit_args, one_line_error  # noqa: E402, F401


def test_store_gives_the_files_result(files, tmp_path, capsys):  # noqa: F811
    store = tmp_path / "train.store"
    assert main(["data", "pack", str(files / "train.extxyz"), "--out", str(store), "--forces", "forces",
                 "--no-progress"]) == 0
    test = str(files / "test.extxyz")
    assert main(fit_args(files, tmp_path / "from_file", "--test", test)) == 0
    args = fit_args(files, tmp_path / "from_store", "--test", test, "--workers", "0")
    args[args.index("--data") + 1] = str(store)
    assert main(args) == 0
    a = json.loads((tmp_path / "from_file" / "summary.json").read_text())
    b = json.loads((tmp_path / "from_store" / "summary.json").read_text())
    assert a["fit"] == {**b["fit"], "train_seconds": a["fit"]["train_seconds"]}
    for split in ("valid", "test"):
        assert a[split].keys() == b[split].keys()
        np.testing.assert_allclose([a[split][k] for k in a[split]], [b[split][k] for k in a[split]], rtol=1e-6)
    # eval: same keys and numbers from the file and from its store (the store streams the force sums)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "from_file"), "--data", str(files / "train.extxyz"), "--no-cache"]) == 0
    on_file = json.loads(capsys.readouterr().out)
    assert main(["eval", str(tmp_path / "from_file"), "--data", str(store)]) == 0
    on_store = json.loads(capsys.readouterr().out)
    assert on_file.keys() == on_store.keys()
    numbers = [k for k, v in on_file.items() if isinstance(v, float)]
    assert numbers and [on_file[k] for k in numbers] == pytest.approx([on_store[k] for k in numbers], rel=1e-9)
    assert {k: on_file[k] for k in on_file if k not in numbers and k != "file"} == \
        {k: on_store[k] for k in on_store if k not in numbers and k != "file"}
    # predict from a store: every frame, with its stored labels and the predictions
    assert main(["predict", "--model", str(tmp_path / "from_file"), str(store), "--out",
                 str(tmp_path / "p.extxyz")]) == 0
    frames = ase.io.read(str(tmp_path / "p.extxyz"), index=":")
    assert len(frames) == 20 and all("energy_pred" in f.info and "forces_pred" in f.arrays for f in frames)
    # asking the store for keys it was not packed with: one line
    args[args.index("--forces") + 1] = "dft_forces"
    args[args.index("--out") + 1] = str(tmp_path / "nope")
    one_line_error(capsys, args, str(store), "'dft_forces'")
    assert not (tmp_path / "nope").exists()
