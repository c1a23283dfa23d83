import hashlib
import json
import random
import struct

import pytest
import torch

from egnn import checkpoint as ck
from egnn.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    read_checkpoint_info,
    save_checkpoint,
)
from egnn.nn import EGNN


def test_round_trip_nested_tree(tmp_path):
    model = EGNN(3, 8, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([[0, 1], [1, 0]])).pos.sum().backward()
    opt.step()
    tree = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
            "epoch": 7, "history": [(1, 0.5), (2, 0.25)], "note": None, "best": float("inf")}
    meta = {"kind": "egnn", "config": model.config.to_dict(), "best": {"valid": float("inf")}, "nan": float("nan")}
    path = save_checkpoint(tmp_path / "ck", tree, meta)
    assert path == tmp_path / "ck.safetensors" and sorted(p.name for p in tmp_path.iterdir()) == ["ck.safetensors"]
    back, meta = load_checkpoint(tmp_path / "ck")
    assert meta["kind"] == "egnn" and back["epoch"] == 7 and back["history"] == [(1, 0.5), (2, 0.25)]
    assert meta["best"]["valid"] == float("inf") and meta["nan"] != meta["nan"] and back["best"] == float("inf")
    assert torch.equal(back["rng"], tree["rng"])
    clone = EGNN.from_config(meta["config"])
    load_state_dict_strict(clone, back["model"])
    opt2 = torch.optim.Adam(clone.parameters())
    opt2.load_state_dict(back["opt"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # the same path with either suffix
    assert load_checkpoint(tmp_path / "ck.safetensors")[1]["kind"] == "egnn"


def test_header_alone_gives_meta_and_shapes(tmp_path):
    model = EGNN(3, 8, 2)
    save_checkpoint(tmp_path / "ck", {"model": model.state_dict()}, {"hidden": 8})
    info = read_checkpoint_info(tmp_path / "ck")
    assert info.meta == {"hidden": 8} and info.format == ck.FORMAT
    assert info.state_shapes("model") == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="holds no 'optimizer' state"):
        info.state_shapes("optimizer")


def test_corrupted_bytes_are_detected(tmp_path):
    model = EGNN(3, 8, 2)
    save_checkpoint(tmp_path / "ck", {"model": model.state_dict()}, {"kind": "egnn"})
    st = tmp_path / "ck.safetensors"
    original = st.read_bytes()
    rng = random.Random(0)
    (n,) = struct.unpack("<Q", original[:8])
    # bit flips in the tensor bytes and in the header (metadata included)
    positions = [rng.randrange(8 + n, len(original)) for _ in range(15)] + [rng.randrange(8, 8 + n) for _ in range(15)]
    for pos in positions:
        data = bytearray(original)
        data[pos] ^= 1 << rng.randrange(8)
        st.write_bytes(bytes(data))
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / "ck")
    st.write_bytes(original[: len(original) - 100])
    with pytest.raises(CheckpointError, match="checksum|truncated"):
        load_checkpoint(tmp_path / "ck")
    st.write_bytes(original[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "ck")
    # an edited metadata value with a consistent header still fails the checksum
    header = json.loads(original[8 : 8 + n])
    header["__metadata__"]["doc"] = header["__metadata__"]["doc"].replace('"egnn"', '"qm9!"')
    raw = json.dumps(header).encode()
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + original[8 + n :])
    assert read_checkpoint_info(tmp_path / "ck").meta["kind"] == "qm9!"  # the header alone is not trusted ...
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "ck")  # ... loading verifies it
    st.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "ck")


def _write_v1(path, tensors, meta):
    """A checkpoint of the previous two-file format, as that code wrote it."""
    from safetensors.torch import save_file

    save_file(tensors, str(path) + ".safetensors")
    digest = hashlib.sha256((path.parent / (path.name + ".safetensors")).read_bytes()).hexdigest()
    tree = {"__dict__": [["model", {"__dict__": [[k, {"__tensor__": k}] for k in tensors]}]]}
    doc = {"format": "egnn-checkpoint/1", "sha256": digest, "meta": meta, "tree": tree}
    (path.parent / (path.name + ".json")).write_text(json.dumps(doc))


def test_previous_two_file_format_still_loads(tmp_path):
    model = EGNN(3, 8, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    _write_v1(tmp_path / "old", state, {"kind": "egnn"})
    info = read_checkpoint_info(tmp_path / "old")
    assert info.format == "egnn-checkpoint/1" and info.state_shapes() == {k: tuple(v.shape) for k, v in state.items()}
    tree, meta = load_checkpoint(tmp_path / "old.json")
    assert meta == {"kind": "egnn"} and all(torch.equal(tree["model"][k], v) for k, v in state.items())
    data = bytearray((tmp_path / "old.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "old.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "old")
    # a new checkpoint written under the same name takes precedence over the old pair
    save_checkpoint(tmp_path / "old", {"model": state}, {"kind": "new"})
    assert load_checkpoint(tmp_path / "old")[1] == {"kind": "new"}


@pytest.mark.parametrize("fail_at", ["open", "write", "fsync", "rename", "dirsync"])
def test_a_crash_at_any_step_of_a_write_leaves_a_complete_checkpoint(tmp_path, monkeypatch, fail_at):
    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(3)}, {"epoch": 1})

    class Crash(Exception):
        pass

    def hook(label):
        if label == fail_at:
            raise Crash

    monkeypatch.setattr(ck, "io_hook", hook)
    with pytest.raises(Crash):
        save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, {"epoch": 2})
    monkeypatch.setattr(ck, "io_hook", None)
    tree, meta = load_checkpoint(tmp_path / "ck")
    # before the rename the old checkpoint is intact; from the rename on, the new one is complete
    expect = 1 if fail_at in ("open", "write", "fsync", "rename") else 2
    assert meta["epoch"] == expect and torch.equal(tree["w"], torch.full((3,), float(expect - 1)))
    leftovers = [p.name for p in tmp_path.iterdir() if ck.is_temp_file(p)]
    assert leftovers == ([] if fail_at in ("open", "dirsync") else [ck.temp_name(tmp_path / "ck.safetensors").name])


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
    assert not list(tmp_path.iterdir())
