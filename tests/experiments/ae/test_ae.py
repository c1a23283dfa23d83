"""Graph autoencoder experiment: data sets, metrics, equivariance of the EGNN/RF autoencoders, training, CLI."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("networkx")

from egnn.experiments.ae.datasets import (  # noqa: E402
    AESplit,
    community_small,
    erdos_renyi_nodes,
    load_ae_dataset,
    overfit_split,
)
from egnn.experiments.ae.metrics import EdgeCounts, dense_counts, edge_counts  # noqa: E402
from egnn.experiments.ae.models import AE_MODELS, build_model  # noqa: E402
from egnn.experiments.ae.train import evaluate_ae, format_table, train_ae, train_config_for  # noqa: E402
from egnn.experiments.cli import main  # noqa: E402
from egnn.experiments.run import RunFolderError
from egnn.ops import fully_connected_edges  # noqa: E402
from egnn.testing import assert_equivariant  # noqa: E402


# --- data sets ---------------------------------------------------------------------------------------------
def _is_connected(a: np.ndarray) -> bool:
    n = a.shape[0]
    seen, stack = {0}, [0]
    while stack:
        u = stack.pop()
        for v in np.nonzero(a[u])[0].tolist():
            if v not in seen:
                seen.add(v)
                stack.append(v)
    return len(seen) == n


def test_community_small_structure():
    graphs = community_small(40, seed=0)
    assert len(graphs) == 40
    for a in graphs:
        n = a.shape[0]
        assert 12 <= n <= 20
        assert (a == a.T).all() and not a.diagonal().any()
        # the nodes split into two consecutive blocks of 6-10 nodes: each dense and connected, few edges across
        found = False
        for k in range(6, 11):
            if not 6 <= n - k <= 10:
                continue
            b1, b2, cross = a[:k, :k], a[k:, k:], a[:k, k:]
            if (_is_connected(b1) and _is_connected(b2) and b1.sum() / (k * (k - 1)) > 0.4
                    and b2.sum() / ((n - k) * (n - k - 1)) > 0.4 and 1 <= cross.sum() <= 0.1 * k * (n - k)):
                found = True
        assert found
        assert _is_connected(a)
    sizes = {a.shape[0] for a in graphs}
    assert len(sizes) >= 5  # sizes vary


def test_erdos_renyi_statistics():
    graphs = erdos_renyi_nodes(300, seed=0)
    counts = np.bincount([a.shape[0] for a in graphs], minlength=17)
    assert counts[:7].sum() == 0 and (counts[7:17] == 30).all()
    split = AESplit(graphs)
    stats = split.stats()
    assert abs(stats["density"] - 0.25) < 0.02
    assert stats["nodes_mean"] == pytest.approx(11.5)
    # shuffled: not ordered by size
    assert [a.shape[0] for a in graphs[:10]] != list(range(7, 17))


def test_generation_is_deterministic():
    a, b, c = community_small(10, seed=5), community_small(10, seed=5), community_small(10, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c))
    e1, e2 = erdos_renyi_nodes(30, seed=1), erdos_renyi_nodes(30, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(e1, e2))
    assert len(overfit_split(0.3)) == 100


def test_split_sizes_and_batches():
    splits = load_ae_dataset("erdos_renyi", {"train": 40, "valid": 20, "test": 20})
    assert [len(splits[k]) for k in ("train", "valid", "test")] == [40, 20, 20]
    split = splits["train"]
    idx = torch.tensor([3, 0, 7])
    b = split.get(idx)
    assert b.num_graphs == 3 and b.num_nodes == int(split.sizes[idx].sum())
    assert torch.equal(b.edge_attr[:, 0], b.target)
    # every ordered pair i != j once, within its own graph, labels equal the stored adjacency
    offset = 0
    for g, i in enumerate(idx.tolist()):
        n = int(split.sizes[i])
        mask = b.edge_batch == g
        ei = b.edge_index[:, mask] - offset
        assert ei.shape[1] == n * (n - 1) and int(ei.min()) >= 0 and int(ei.max()) < n
        dense = torch.zeros(n, n)
        dense[ei[1], ei[0]] = b.target[mask]
        assert torch.equal(dense, split.adjacency(i))
        assert torch.equal(dense, dense.T)
        offset += n
    assert torch.equal(b.batch, torch.repeat_interleave(torch.arange(3), split.sizes[idx]))


# --- metrics -----------------------------------------------------------------------------------------------
def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_metrics_hand_made_graph():
    # 3 nodes, one undirected edge (0, 1); predicted probabilities of the six ordered pairs
    adj = torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float64)
    prob = torch.tensor([[0.0, 0.9, 0.6], [0.9, 0.0, 0.5], [0.2, 0.1, 0.0]], dtype=torch.float64)
    c = dense_counts(prob, adj)
    # 0->1, 1->0 true positives; (0, 2) at 0.6 a false positive; (1, 2) at exactly 0.5 is not an edge
    assert (c.tp, c.fp, c.fn, c.pairs, c.graphs) == (2, 1, 0, 6, 1)
    expected_bce = -(2 * math.log(0.9) + math.log(0.4) + math.log(0.5) + math.log(0.8) + math.log(0.9))
    assert c.bce == pytest.approx(expected_bce, rel=1e-12)
    assert c.error_percent == pytest.approx(100 / 6)
    assert c.f1 == pytest.approx(2 / 2.5)
    # the edge-list form gives the same counts
    ei = fully_connected_edges([3])
    logits = torch.tensor([_logit(float(prob[i, j])) for j, i in ei.t().tolist()], dtype=torch.float64)
    target = adj[ei[1], ei[0]]
    e = edge_counts(logits, target, torch.zeros(6, dtype=torch.long), 1)
    assert (e.tp, e.fp, e.fn, e.pairs) == (2, 1, 0, 6)
    assert e.bce == pytest.approx(expected_bce, rel=1e-9)


def test_metrics_pool_over_split_and_cap():
    # graph A: 3 nodes, 1 wrong pair; graph B: 2 nodes, all right -> pooled error 1/8, not mean(1/6, 0)
    a = EdgeCounts(bce_sum=3.0, graphs=1, pairs=6, tp=2, fp=1, fn=0)
    b = EdgeCounts(bce_sum=1.0, graphs=1, pairs=2, tp=2, fp=0, fn=0)
    s = a + b
    assert s.error_percent == pytest.approx(12.5)
    assert s.bce == pytest.approx(2.0)  # mean over graphs of the per-graph sums
    assert s.f1 == pytest.approx(4 / 4.5)
    # a confidently wrong pair costs at most 100 nats (the reference's clamp of log at -100)
    c = edge_counts(torch.tensor([-1000.0, 1000.0]), torch.tensor([1.0, 1.0]), torch.tensor([0, 1]), 2)
    assert c.bce_sum == pytest.approx(100.0) and c.bce == pytest.approx(50.0)
    assert (c.tp, c.fn) == (1, 1) and c.f1 == pytest.approx(2 / 3)
    empty = edge_counts(torch.tensor([-3.0, -2.0]), torch.tensor([0.0, 0.0]), torch.tensor([0, 0]), 1)
    assert empty.f1 == 1.0 and empty.error_percent == 0.0


# --- models ------------------------------------------------------------------------------------------------
def _graph_inputs(sizes=(5, 4), seed=0, K=8):
    g = torch.Generator().manual_seed(seed)
    ei = fully_connected_edges(list(sizes))
    n = sum(sizes)
    attr = (torch.rand(ei.shape[1], 1, generator=g) < 0.4).double()
    # symmetric adjacency: the attribute of (j, i) equals that of (i, j)
    key = {}
    for e, (j, i) in enumerate(ei.t().tolist()):
        key.setdefault((min(i, j), max(i, j)), attr[e].clone())
        attr[e] = key[(min(i, j), max(i, j))]
    return {
        "pos": torch.randn(n, K, generator=g, dtype=torch.float64),
        "h": torch.ones(n, 1, dtype=torch.float64),
        "edge_index": ei,
        "edge_attr": attr,
        "batch": torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
    }


def _strong(model):
    # the reference initialises the last coordinate layer near zero; make the coordinate updates non-trivial
    # (but small enough that the RF's message clamp at +-100, which is not rotation-equivariant, stays inactive)
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and m.out_features == 1 and m.bias is None:
            torch.nn.init.normal_(m.weight, std=0.05)
    return model


@pytest.mark.parametrize("name", ["egnn", "rf"])
def test_equivariant_autoencoders(name):
    torch.manual_seed(0)
    model, _ = build_model(name, hidden_nf=16, n_layers=3)
    model = _strong(model.double())

    @torch.no_grad()
    def fn(pos, h, edge_index, edge_attr, batch):
        z = model.encode(h, edge_index, edge_attr, noise=pos)
        return {"z": z, "logits": model.decoder(z, edge_index)}

    inputs = _graph_inputs()
    errors = assert_equivariant(fn, inputs, {"z": "position", "logits": "edge"}, trials=4)
    assert set(errors) == {"z", "logits"}
    # the embedding really moved away from the random input
    z = fn(**inputs)["z"]
    assert float((z - inputs["pos"]).abs().max()) > 1e-2


def test_gnn_is_not_rotation_equivariant_check_can_fail():
    # sanity check of the harness on a non-equivariant map: the Noise-GNN treats its noise as plain features
    torch.manual_seed(0)
    model, _ = build_model("noise_gnn", hidden_nf=16, n_layers=2, noise_dim=8)
    model = model.double()

    @torch.no_grad()
    def fn(pos, h, edge_index, edge_attr, batch):
        z = model.encode(h, edge_index, edge_attr, noise=pos)
        return {"logits": model.decoder(z, edge_index)}

    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(fn, _graph_inputs(), {"logits": "edge"}, permute=False)


def test_plain_gnn_cannot_tell_nodes_of_a_regular_graph_apart():
    # a 6-cycle: every node looks the same to a GNN with constant inputs (the paper's symmetry problem)
    n = 6
    adj = np.zeros((n, n), dtype=np.uint8)
    for i in range(n):
        adj[i, (i + 1) % n] = adj[(i + 1) % n, i] = 1
    b = AESplit([adj], dtype=torch.float64).get(torch.arange(1))
    torch.manual_seed(0)
    gnn = build_model("gnn", hidden_nf=16)[0].double()
    with torch.no_grad():
        out = gnn(b)
    assert float((out.z - out.z[0]).abs().max()) < 1e-12
    assert float(out.logits.max() - out.logits.min()) < 1e-12
    egnn = build_model("egnn", hidden_nf=16)[0].double()
    with torch.no_grad():
        out = egnn(b, generator=torch.Generator().manual_seed(0))
    assert float(out.logits.max() - out.logits.min()) > 1e-3


def test_registry_and_paper_numbers():
    assert set(AE_MODELS.names()) == {"gnn", "noise_gnn", "rf", "egnn"}
    for name in AE_MODELS:
        spec = AE_MODELS.get(name)
        assert set(spec.paper) == {"community", "erdos_renyi"}
    assert AE_MODELS.get("egnn").paper["community"] == (2.14, 0.06, 0.999)
    with pytest.raises(KeyError, match="unknown AE model"):
        build_model("transformer")
    assert train_config_for("quick", model_name="egnn").lr == AE_MODELS.get("egnn").quick_lr
    assert train_config_for("quick", model_name="gnn").lr == 2e-3
    assert train_config_for("paper", model_name="egnn").lr == 1e-4


# --- training ----------------------------------------------------------------------------------------------


def test_tiny_training_run_improves(tmp_path):
    sizes = {"train": 30, "valid": 10, "test": 10}
    hp = {"hidden_nf": 16, "n_layers": 2}
    splits = load_ae_dataset("erdos_renyi", sizes)
    torch.manual_seed(0)
    before = evaluate_ae(build_model("egnn", **hp)[0], splits["test"])
    run = train_ae("egnn", "erdos_renyi", tmp_path / "run", preset="quick", hparams=hp, split_sizes=sizes,
                   epochs=8, batch_size=4, lr=1e-2, warmup_steps=0, progress=False, device="cpu")
    assert run.test["bce"] < 0.92 * before.bce
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 9
    first, last = float(rows[1].split(",")[3]), float(rows[-1].split(",")[3])
    assert last < first
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test"]["f1"] == pytest.approx(run.test["f1"])
    with pytest.raises(RunFolderError, match="already holds a run"):
        train_ae("egnn", "erdos_renyi", tmp_path / "run", hparams=hp, split_sizes=sizes, epochs=8, progress=False)
    table = format_table([run], "test")
    assert "| EGNN |" in table and "1.65 | 0.11 | 0.998" in table


# --- CLI -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["ae", "train", "--model", "transformer"],
        ["ae", "train", "--dataset", "zinc"],
        ["ae", "train", "--model", "egnn,rf"],
        ["ae", "train", "--preset", "huge"],
        ["ae", "train", "--epochs", "0"],
        ["ae", "table", "--models", "egnn,nope"],
        ["ae", "table", "--preset", "huge"],
        ["ae", "overfit", "--p", "0.2,1.5"],
        ["ae", "overfit", "--p", "x"],
    ],
)
def test_cli_rejects_bad_arguments(argv, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    assert "egnn: error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_argparse_errors_exit_nonzero(capsys):
    assert main(["ae", "train", "--epochs", "many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs" in err[0] and "'many'" in err[0]
