"""The N-body edge attributes, built in one place."""

import torch

from egnn.experiments.nbody.data import edge_features


def test_edge_features_known_values() -> None:
    pos = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])  # source j -> target i
    edge_q = torch.tensor([[1.0], [-1.0], [-1.0]])
    expected = torch.tensor([[1.0, 25.0], [-1.0, 29.0], [-1.0, 4.0]])
    assert torch.equal(edge_features(pos, edge_index, edge_q), expected)
