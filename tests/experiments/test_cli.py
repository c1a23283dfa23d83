"""The ``egnn`` command's shared options."""

import argparse

import pytest
import torch

from egnn.experiments.cli import build_parser, main


def _leaves(parser: argparse.ArgumentParser):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield parser
        return
    for p in subs[0].choices.values():
        yield from _leaves(p)


def test_every_command_takes_threads():
    leaves = list(_leaves(build_parser()))
    assert len(leaves) >= 10  # demo + the nbody, ae and qm9 actions
    for leaf in leaves:
        assert any("--threads" in a.option_strings for a in leaf._actions), leaf.prog


def test_threads_sets_torch_threads(capsys):
    before = torch.get_num_threads()
    try:
        # the command itself fails (no such data folder) after the thread count has been applied
        assert main(["nbody", "train", "--threads", "3", "--data", "/nonexistent/nbody"]) == 2
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2"])
def test_threads_must_be_positive(value, capsys):
    before = torch.get_num_threads()
    assert main(["nbody", "train", "--threads", value]) == 2
    assert f"argument --threads: expected a positive integer, got '{value}'" in capsys.readouterr().err
    assert torch.get_num_threads() == before
