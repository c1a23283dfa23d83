"""Every ``egnn`` command fed invalid values: one ``egnn: error:`` line, exit code 2, no traceback, nothing
written. Property-based over every option of every action (hypothesis), plus the mistakes that only show
once files are read."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from egnn.experiments.cli import build_parser, main
from egnn.experiments.nbody.files import save_split_files, split_file_names
from egnn.experiments.nbody.simulate import generate_dataset
from egnn.experiments.nbody.train import train_nbody


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, p in subs[0].choices.items():
        yield from _leaves(p, (*path, name))


def _checked_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Options whose values are validated when parsed (a type other than str, or choices)."""
    return [a for a in parser._actions if a.option_strings and a.nargs is None and (
        (a.type is not None and a.type is not str) or a.choices)]


LEAVES = [(path, p) for path, p in _leaves(build_parser()) if _checked_options(p)]
# the minimum each action needs besides the option under test (all valid, none of them read)
REQUIRED = {("nbody", "generate"): ["--out", "gen"], ("qm9", "train"): ["--target", "homo"]}

BAD_VALUES = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "abc", "0x1f", "1_0", "-0", "3.5", "cuda", "tpu",
                     "cuda:7", "cpu:0", "None", "true"]),
    st.text(max_size=6),
)


def _valid(action: argparse.Action, value: str) -> bool:
    try:
        converted = action.type(value) if action.type is not None else value
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return not action.choices or converted in action.choices


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_invalid_option_values_give_one_line_and_exit_2(data, tmp_path_factory, monkeypatch, capsys):
    work = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(work)  # relative defaults (runs/..., data/...) land here, and must not appear
    path, parser = data.draw(st.sampled_from(LEAVES), label="command")
    action = data.draw(st.sampled_from(_checked_options(parser)), label="option")
    value = data.draw(BAD_VALUES, label="value")
    assume(not _valid(action, value))
    capsys.readouterr()
    code = main([*path, f"{action.option_strings[-1]}={value}", *REQUIRED.get(path, [])])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egnn: error:") and "Traceback" not in err, err
    assert action.option_strings[-1] in lines[0]
    assert not list(work.iterdir())


# --------------------------------------------------------------------------- mistakes found when files are read


@pytest.fixture(scope="module")
def nbody_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nbody")
    save_split_files(out, generate_dataset(24, 12, 12, seed=3, progress=False))
    return out


@pytest.fixture(scope="module")
def nbody_run(nbody_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    train_nbody("egnn", nbody_data, out, preset="quick", hparams={"hidden_nf": 8, "n_layers": 1}, epochs=1,
                progress=False, max_samples=24)
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _error(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egnn: error:"), err
    return lines[0]


def test_bad_data_files_are_named_with_the_problem(nbody_data, tmp_path, capsys):
    name = split_file_names("valid")["loc"]
    pickled = _copy(nbody_data, tmp_path / "pickled")
    np.save(pickled / name, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    msg = _error(["nbody", "train", "--data", str(pickled), "--out", str(tmp_path / "r1"), "--no-progress"], capsys)
    assert name in msg and "pickled" in msg and "allow_pickle" not in msg
    text = _copy(nbody_data, tmp_path / "text")
    (text / name).write_text("not an array")
    assert name in _error(["nbody", "train", "--data", str(text), "--out", str(tmp_path / "r2")], capsys)
    nan = _copy(nbody_data, tmp_path / "nan")
    arr = np.load(nan / name)
    arr[1, 2, 0, 3] = np.nan
    np.save(nan / name, arr)
    msg = _error(["nbody", "train", "--data", str(nan), "--out", str(tmp_path / "r3")], capsys)
    assert name in msg and "NaN or Inf" in msg and "[1, 2, 0, 3]" in msg
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3))


def test_resume_with_other_data_is_refused(nbody_data, nbody_run, tmp_path, capsys):
    other = tmp_path / "other"
    save_split_files(other, generate_dataset(24, 12, 12, seed=4, progress=False))
    run = _copy(nbody_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    msg = _error(["nbody", "train", "--data", str(other), "--out", str(run), "--resume", "--epochs", "2",
                  "--no-progress"], capsys)
    assert "cannot resume" in msg and "data: run" in msg
    assert before == {p.name: p.read_bytes() for p in run.iterdir()}


def test_eval_accepts_a_run_folder_and_refuses_bad_checkpoints(nbody_data, nbody_run, tmp_path, capsys):
    assert main(["nbody", "eval", str(nbody_run), "--data", str(nbody_data), "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["test_mse"] > 0
    from egnn.checkpoint import load_checkpoint, save_checkpoint

    tree, meta = load_checkpoint(nbody_run / "best")
    tree["model"] = {k: v * float("nan") for k, v in tree["model"].items()}
    save_checkpoint(tmp_path / "nan", tree, meta)
    assert "non-finite weights" in _error(["nbody", "eval", str(tmp_path / "nan"), "--data", str(nbody_data)], capsys)
    save_checkpoint(tmp_path / "huge", load_checkpoint(nbody_run / "best")[0],
                    {**meta, "hparams": {**meta["hparams"], "hidden_nf": 30000}})
    assert "shape mismatch" in _error(["nbody", "eval", str(tmp_path / "huge"), "--data", str(nbody_data)], capsys)
    save_checkpoint(tmp_path / "nokey", load_checkpoint(nbody_run / "best")[0], {"experiment": "nbody"})
    assert "'model'" in _error(["nbody", "eval", str(tmp_path / "nokey"), "--data", str(nbody_data)], capsys)


@pytest.mark.parametrize("argv", [
    ["nbody", "train", "--batch-size", "-5"],
    ["nbody", "train", "--epochs", "0"],
    ["nbody", "train", "--max-samples", "0"],
    ["nbody", "train", "--device", "cuda"],
    ["nbody", "train", "--device", "tpu"],
    ["nbody", "train", "--seed", str(2**70)],
    ["nbody", "train", "--lr", "nan"],
    ["qm9", "train", "--target", "homo", "--epochs", "0"],
    ["nbody", "generate", "--out", "gen", "--num-train", "0"],
    ["nbody", "generate", "--out", "gen", "--num-train", "-5"],
    ["nbody", "rollout", "x", "--out", "/nodir/x.png"],
    ["demo", "--minutes", "-1"],
    ["ae", "overfit", "--epochs", "0"],
])
def test_the_reported_mistakes(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _error(argv, capsys)
    assert not list(tmp_path.iterdir())


def test_a_stray_argument_is_named_once(tmp_path, monkeypatch, capsys):
    # the top-level parser reports it: "egnn: error: unrecognized arguments: r2", not "egnn: error: egnn: ..."
    monkeypatch.chdir(tmp_path)
    msg = _error(["qm9", "table", "--targets", "U0", "r2"], capsys)
    assert msg.startswith("egnn: error: unrecognized arguments: r2"), msg
    assert "egnn: egnn" not in msg


def test_out_that_is_a_file_and_generate_never_overwrites(nbody_data, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    assert "not a folder" in _error(["nbody", "train", "--data", str(nbody_data), "--out", str(tmp_path / "file")],
                                    capsys)
    assert (tmp_path / "file").read_text() == "mine"
    msg = _error(["nbody", "generate", "--out", str(nbody_data), "--num-train", "2"], capsys)
    assert "already exists" in msg


def test_version_and_help_on_every_option(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("egnn ")
    for path, parser in _leaves(build_parser()):
        for a in parser._actions:
            if a.option_strings and a.dest != "help":
                assert a.help, f"{' '.join(path)} {a.option_strings[0]} has no help text"
