"""The non-equivariant graph convolutional layer (GCL) that the EGNN paper compares against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egnn.nn.egcl import make_activation
from egnn.ops.scatter import scatter_sum


class GCL(nn.Module):
    r"""Message passing layer of Gilmer et al. 2017 in the form of `arXiv:2102.09844
    <https://arxiv.org/abs/2102.09844>`_, equation (2) (the baseline "GNN" of the paper's experiments):

    .. math::
        m_{ij} &= \phi_e(h_i, h_j, a_{ij}) \\
        m_i &= \sum_{j \ne i} m_{ij} \\
        h_i &\leftarrow \phi_h(h_i, m_i)\ (+\, h_i \text{ with ``residual``})

    with :math:`\phi_e` = ``Linear -> act -> Linear -> act`` and :math:`\phi_h` = ``Linear -> act -> Linear``.
    It sees only what it is given: fed absolute coordinates it is not E(n)-equivariant, but it is always
    permutation equivariant.

    Edge convention: ``edge_index[0]`` is the source ``j``, ``edge_index[1]`` the target ``i``; messages
    aggregate at ``edge_index[1]``.

    Args:
        in_channels: size of ``h``.
        hidden_channels: size of the messages and the hidden layers of the MLPs.
        out_channels: size of the output ``h`` (default ``in_channels``).
        edge_dim: size of the edge attributes ``a_ij`` (0 for none).
        act: activation, one of ``silu``, ``relu``, ``gelu``, ``tanh``, ``leaky_relu``.
        residual: add ``h_i`` to the output of :math:`\phi_h` (needs ``out_channels == in_channels``).

    Shapes:
        - **input:** ``h`` ``[N, in_channels]``, ``edge_index`` ``[2, E]``, ``edge_attr`` ``[E, edge_dim]``
          (``None`` when ``edge_dim == 0``)
        - **output:** ``h`` ``[N, out_channels]``
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int | None = None, edge_dim: int = 0,
                 act: str = "silu", residual: bool = True) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if min(in_channels, hidden_channels, out_channels) < 1 or edge_dim < 0:
            raise ValueError("channel sizes must be >= 1 and edge_dim >= 0")
        if residual and out_channels != in_channels:
            raise ValueError(f"residual needs out_channels == in_channels, got {out_channels} != {in_channels}")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.edge_dim, self.residual = edge_dim, residual
        # Sequential (keys edge_mlp.0 / .2, node_mlp.0 / .2): the key names of the checkpoints written so far
        self.edge_mlp = nn.Sequential(
            nn.Linear(2 * in_channels + edge_dim, hidden_channels), make_activation(act),
            nn.Linear(hidden_channels, hidden_channels), make_activation(act),
        )  # fmt: skip
        self.node_mlp = nn.Sequential(
            nn.Linear(in_channels + hidden_channels, hidden_channels), make_activation(act),
            nn.Linear(hidden_channels, out_channels),
        )  # fmt: skip

    def reset_parameters(self) -> None:
        """Re-initialise every parameter as at construction."""
        # the order of construction, so that a seeded reset draws what a seeded constructor drew
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.hidden_channels}, {self.out_channels}, edge_dim={self.edge_dim}, "
                f"residual={self.residual}")

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        """The new node features ``[N, out_channels]``."""
        src, dst = edge_index[0], edge_index[1]
        parts = [h[dst], h[src]] + ([edge_attr] if edge_attr is not None else [])
        m = self.edge_mlp(torch.cat(parts, dim=-1))
        out = self.node_mlp(torch.cat([h, scatter_sum(m, dst, h.shape[0])], dim=-1))
        return h + out if self.residual else out
