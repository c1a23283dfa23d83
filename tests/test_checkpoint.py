import random

import pytest
import torch

from egnn.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, save_checkpoint
from egnn.nn import EGNN


def test_round_trip_nested_tree(tmp_path):
    model = EGNN(3, 8, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]])).pos.sum().backward()
    opt.step()
    tree = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
            "epoch": 7, "history": [(1, 0.5), (2, 0.25)], "note": None}
    save_checkpoint(tmp_path / "ck", tree, {"kind": "egnn", "config": model.config.to_dict()})
    back, meta = load_checkpoint(tmp_path / "ck")
    assert meta["kind"] == "egnn" and back["epoch"] == 7 and back["history"] == [(1, 0.5), (2, 0.25)]
    assert torch.equal(back["rng"], tree["rng"])
    clone = EGNN.from_config(meta["config"])
    load_state_dict_strict(clone, back["model"])
    opt2 = torch.optim.Adam(clone.parameters())
    opt2.load_state_dict(back["opt"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_corrupted_bytes_are_detected(tmp_path):
    model = EGNN(3, 8, 2)
    save_checkpoint(tmp_path / "ck", {"model": model.state_dict()}, {"kind": "egnn"})
    st = tmp_path / "ck.safetensors"
    original = st.read_bytes()
    rng = random.Random(0)
    for _ in range(20):
        data = bytearray(original)
        pos = rng.randrange(len(data))
        data[pos] ^= 1 << rng.randrange(8)
        st.write_bytes(bytes(data))
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "ck")
    st.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "ck")
    st.write_bytes(original)
    js = tmp_path / "ck.json"
    text = js.read_text()
    js.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path / "ck")
    js.write_text('{"format": "other"}')
    with pytest.raises(CheckpointError, match="not an egnn checkpoint"):
        load_checkpoint(tmp_path / "ck")
    js.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "ck")


def test_mismatched_model_is_reported(tmp_path):
    save_checkpoint(tmp_path / "ck", {"model": EGNN(3, 8, 2).state_dict()}, {})
    tree, _ = load_checkpoint(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_state_dict_strict(EGNN(3, 16, 2), tree["model"])
    with pytest.raises(CheckpointError, match="missing keys"):
        load_state_dict_strict(EGNN(3, 8, 3), tree["model"])
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_state_dict_strict(EGNN(3, 8, 1), tree["model"])


def test_unsupported_values_are_refused(tmp_path):
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(tmp_path / "ck", {"x": object()}, {})
