import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from egnn.experiments.cli import main as cli_main
from egnn.experiments.nbody.data import NBodySplit, load_nbody
from egnn.experiments.nbody.files import save_split_files
from egnn.experiments.nbody.models import NBODY_MODELS
from egnn.experiments.nbody.simulate import generate_dataset
from egnn.experiments.nbody.train import make_task, train_nbody
from egnn.experiments.trainer import TrainConfig, Trainer, epoch_order, shard_batches

SMALL = {"hidden_nf": 16, "n_layers": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nbody")
    data = generate_dataset(40, 20, 20, seed=7, progress=False)
    save_split_files(out, data)
    return out


def test_split_frames_shapes_and_features(data_dir):
    raw = np.load(data_dir / "loc_train_charged5_initvel1small.npy")
    vel = np.load(data_dir / "vel_train_charged5_initvel1small.npy")
    charges = np.load(data_dir / "charges_train_charged5_initvel1small.npy")
    splits = load_nbody(data_dir, max_samples=25)
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [25, 20, 20]
    b = splits["train"].get(torch.tensor([3, 0]))
    assert b.pos.shape == (10, 3) and b.edge_index.shape == (2, 40) and b.edge_attr.shape == (40, 2)
    # system 3 comes first: frame 30 -> 40, reference axis order [frame, axis, particle]
    assert np.allclose(b.pos[:5].numpy(), raw[3, 30].T, atol=1e-6)
    assert np.allclose(b.target[:5].numpy(), raw[3, 40].T, atol=1e-6)
    assert np.allclose(b.h[:5, 0].numpy(), np.linalg.norm(vel[3, 30].T, axis=1), atol=1e-6)
    src, dst = b.edge_index
    q = torch.as_tensor(np.concatenate([charges[3, :, 0], charges[0, :, 0]]), dtype=torch.float32)
    assert torch.allclose(b.edge_attr[:, 0], q[src] * q[dst])
    assert torch.allclose(b.edge_attr[:, 1], ((b.pos[src] - b.pos[dst]) ** 2).sum(-1), atol=1e-5)
    assert bool((b.batch[src] == b.batch[dst]).all()) and bool((src != dst).all())


def test_split_rejects_bad_frames():
    loc = np.zeros((2, 10, 3, 5))
    with pytest.raises(ValueError, match="out of range"):
        NBodySplit(loc, loc, np.ones((2, 5, 1)), 30, 40)


def test_epoch_order_and_sharding():
    assert torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 3))
    assert not torch.equal(epoch_order(50, 1, 3), epoch_order(50, 1, 4))
    order = torch.arange(10)
    full = shard_batches(order, 4, 0, 1)
    r0, r1 = shard_batches(order, 4, 0, 2), shard_batches(order, 4, 1, 2)
    for f, a, b in zip(full, r0, r1):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(f.tolist())


class Interrupt(Exception):
    pass


def _kill_after(steps: int):
    """A loss that raises after ``steps`` calls: a run killed mid-epoch."""
    predict = NBODY_MODELS.get("egnn").predict
    calls = {"n": 0}

    def loss(model, b):
        calls["n"] += 1
        if calls["n"] > steps:
            raise Interrupt
        return torch.nn.functional.mse_loss(predict(model, b), b.target)

    return loss


def _trainer(data_dir, out, **cfg):
    torch.manual_seed(0)
    spec = NBODY_MODELS.get("egnn")
    model = spec.build(**SMALL)
    task = make_task(load_nbody(data_dir, max_samples=40), spec.predict)
    config = TrainConfig(epochs=6, batch_size=10, lr=1e-3, eval_every=2, checkpoint_every=2, seed=3,
                         schedule="cosine", ema_decay=0.9, progress=False, **cfg)
    return Trainer(model, task, config, out, {"experiment": "nbody", "model": "egnn", "hparams": SMALL})


def test_resume_after_kill_continues_identically(data_dir, tmp_path):
    straight = _trainer(data_dir, tmp_path / "a")
    res_a = straight.fit()
    killed = _trainer(data_dir, tmp_path / "b")
    killed.task.loss = _kill_after(4 * 4 + 2)  # 4 steps an epoch: dies in epoch 5, last checkpoint at 4
    with pytest.raises(Interrupt):
        killed.fit()
    resumed = _trainer(data_dir, tmp_path / "b")
    resumed.resume()
    assert resumed.epoch == 4
    res_b = resumed.fit()
    keys = ["epoch", "step", "lr", "train_loss", "valid", "test"]
    assert [[r.get(k) for k in keys] for r in res_a.history] == [[r.get(k) for k in keys] for r in res_b.history]
    assert res_a.test_at_best == res_b.test_at_best
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    rows = (tmp_path / "b" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 6  # header + one row per epoch, no duplicates from the killed run


def test_resume_refuses_changed_settings(data_dir, tmp_path):
    _trainer(data_dir, tmp_path / "a").fit()
    other = _trainer(data_dir, tmp_path / "a", weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        other.resume()


def _ddp_worker(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = _trainer(data_dir, Path(out) / "ddp", device="cpu")
    trainer.cfg.epochs = 2
    trainer.fit()
    torch.save({k: v.clone() for k, v in trainer.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_single_process(data_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(data_dir), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    single = _trainer(data_dir, tmp_path / "single", device="cpu")
    single.cfg.epochs = 2
    single.fit()
    for k, v in single.model.state_dict().items():
        assert torch.equal(r0[k], r1[k]), k  # ranks stay identical
        assert torch.allclose(r0[k], v, atol=1e-5, rtol=1e-4), k  # same as one process on the global batch
    assert any(not torch.equal(r0[k], v) for k, v in _trainer(data_dir, tmp_path / "x").model.state_dict().items())


def test_train_nbody_end_to_end_and_eval(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    res = train_nbody("egnn", data_dir, out, preset="quick", hparams=SMALL, epochs=3, eval_every=1,
                      progress=False, max_samples=40)
    assert res.best_epoch >= 1 and res.test_at_best is not None and np.isfinite(res.test_at_best)
    for name in ("log.csv", "best.safetensors", "last.safetensors", "run.json", "training_curve.png"):
        assert (out / name).is_file(), name
    assert cli_main(["nbody", "eval", str(out / "best"), "--data", str(data_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["test_mse"] - res.test_at_best) < 1e-6
    assert cli_main(["nbody", "rollout", str(out / "best"), "--data", str(data_dir), "--out",
                     str(tmp_path / "r.png"), "--steps", "1"]) == 0
    assert (tmp_path / "r.png").is_file()


def test_cli_bad_arguments(data_dir, tmp_path, capsys):
    assert cli_main(["nbody", "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["nbody", "train", "--model", "transformer9", "--data", str(data_dir)]) == 2
    assert "invalid choice: 'transformer9'" in capsys.readouterr().err
    # an existing run is never overwritten without --resume
    out = tmp_path / "run"
    train_nbody("egnn", data_dir, out, preset="quick", hparams=SMALL, epochs=1, progress=False, max_samples=40)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli_main(["nbody", "train", "--data", str(data_dir), "--out", str(out), "--epochs", "1",
                     "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}
    # resuming with other hyper-parameters (the paper-size model) is refused with the reason
    assert cli_main(["nbody", "train", "--data", str(data_dir), "--out", str(out), "--epochs", "2", "--resume",
                     "--no-progress"]) == 2
    assert "hparams" in capsys.readouterr().err
    # corrupt and missing checkpoints
    data = bytearray((out / "best.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "best.safetensors").write_bytes(bytes(data))
    assert cli_main(["nbody", "eval", str(out / "best"), "--data", str(data_dir)]) == 2
    assert "checksum" in capsys.readouterr().err
    assert cli_main(["nbody", "eval", str(tmp_path / "missing"), "--data", str(data_dir)]) == 2
    assert "no run folder or checkpoint at" in capsys.readouterr().err
    # a checkpoint from another experiment
    from egnn.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "foreign", {"model": {}}, {"experiment": "qm9"})
    assert cli_main(["nbody", "eval", str(tmp_path / "foreign"), "--data", str(data_dir)]) == 2
    assert "not an N-body checkpoint" in capsys.readouterr().err


def test_non_finite_loss_stops_before_the_step(data_dir, tmp_path):
    trainer = _trainer(data_dir, tmp_path / "nan")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.task.loss = lambda model, b: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(FloatingPointError, match="training loss became nan at step 1"):
        trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
