"""EGCL with several equivariant vector channels per node: EGNN's coordinate channel (eq. 4), widened."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egnn.nn.egcl import make_activation
from egnn.nn.validation import check_graph_inputs


class VectorEGCL(nn.Module):
    r"""An E(n)-equivariant layer whose nodes carry ``K`` vector channels :math:`V_i \in \mathbb{R}^{n \times K}`
    beside their invariant features :math:`h_i`.

    EGCL (`arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_, eqs. 3-6) moves one vector per node, its
    position, by :math:`\sum_j (x_i - x_j)\,\phi_x(m_{ij})`. Here the same kind of sum fills ``K`` channels that are
    not positions, and what they hold flows back into the invariant features through inner products, so the
    messages see angles between bonds, not only distances:

    .. math::
        u_{ij} &= \frac{x_i - x_j - s_{ij}}{\|x_i - x_j - s_{ij}\|} \\
        m_{ij} &= w_{ij}\, \phi_e\big(h_i, h_j, d_{ij}^2, a_{ij}, \langle V_i, u_{ij} \rangle,
                  \langle V_j, u_{ij} \rangle\big) \\
        V_i &\leftarrow V_i W + c \sum_{j \ne i} \big(u_{ij}\, \phi_u(m_{ij}) + V_j \odot \phi_V(m_{ij})\big) \\
        h_i &\leftarrow h_i + \phi_h\big(h_i,\ \textstyle\sum_j e_{ij} m_{ij},\
               \langle V_i A, V_i B \rangle,\ n_i\big)

    :math:`\langle V, u \rangle` are the ``K`` projections of the channels on the bond direction,
    :math:`\langle V A, V B \rangle` the ``K`` inner products of two linear mixes of the channels (as PaiNN,
    Schütt et al. 2021), :math:`W, A, B` are ``K x K`` matrices without bias (they mix channels, never the
    ``n`` spatial components, so the channels stay equivariant), :math:`\phi_u, \phi_V` one linear map of
    :math:`m_{ij}` to ``K`` numbers each, :math:`c` the fixed ``vector_scale`` and :math:`w_{ij}` an optional edge
    weight (a cut-off envelope: with it every term goes smoothly to zero at the cut-off).
    :math:`h` and every inner product are invariant to rotations, reflections and translations, and
    :math:`V` equivariant to rotations and reflections (and unchanged by translations), in any dimension ``n``.

    Edge convention: ``edge_index[0]`` is the source ``j``, ``edge_index[1]`` the target ``i``.

    Args:
        in_channels: size of ``h`` (the output has the same size: the update is residual).
        hidden_channels: size of the messages and the hidden layers of the MLPs.
        vector_channels: ``K``, the vector channels per node.
        edge_dim: size of the edge attributes :math:`a_{ij}` (0 for none).
        node_attr_dim: size of extra node attributes :math:`n_i` fed to :math:`\phi_h` (0 for none).
        act: activation (as :class:`~egnn.nn.EGCL`).
        attention: weigh the messages summed into :math:`h_i` by :math:`e_{ij} = \mathrm{sigmoid}(\mathrm{Linear}
            (m_{ij}))` (the paper's edge inference).
        vector_scale: :math:`c`, so that a sum over a few tens of neighbours starts near unit size.

    Shapes:
        - **input:** ``h`` ``[N, in_channels]``, ``vec`` ``[N, n, K]`` or ``None`` (all zeros: a first layer),
          ``pos`` ``[N, n]``, ``edge_index`` ``[2, E]``, ``edge_attr`` ``[E, edge_dim]``, ``edge_weight``
          ``[E, 1]``, ``node_attr`` ``[N, node_attr_dim]``, ``edge_shift`` ``[E, n]`` (periodic image offset of
          each source)
        - **output:** ``h`` ``[N, in_channels]``, ``vec`` ``[N, n, K]``
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        vector_channels: int,
        edge_dim: int = 0,
        node_attr_dim: int = 0,
        act: str = "silu",
        attention: bool = True,
        vector_scale: float = 0.1,
    ) -> None:
        super().__init__()
        if min(in_channels, hidden_channels, vector_channels) < 1 or min(edge_dim, node_attr_dim) < 0:
            raise ValueError("in/hidden/vector channels must be positive and edge_dim, node_attr_dim >= 0")
        self.in_channels, self.hidden_channels, self.vector_channels = in_channels, hidden_channels, vector_channels
        self.edge_dim, self.node_attr_dim, self.vector_scale = edge_dim, node_attr_dim, float(vector_scale)
        k = vector_channels
        self.act = make_activation(act)
        # phi_e's first map acts on [h_i, h_j, d^2, a_ij, <V_i,u>, <V_j,u>]
        self.edge_mlp = nn.ModuleList([nn.Linear(2 * in_channels + 1 + edge_dim + 2 * k, hidden_channels),
                                       nn.Linear(hidden_channels, hidden_channels)])
        self.att = nn.Linear(hidden_channels, 1) if attention else None
        # phi_u and phi_V without bias: they vanish with m_ij, so (with an envelope) at the cut-off
        self.vec_coef = nn.Linear(hidden_channels, 2 * k, bias=False)
        self.mix = nn.Linear(k, k, bias=False)  # W
        self.inner = nn.Linear(k, 2 * k, bias=False)  # A and B
        self.node_mlp = nn.ModuleList([nn.Linear(in_channels + hidden_channels + k + node_attr_dim, hidden_channels),
                                       nn.Linear(hidden_channels, in_channels)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation for every linear map."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.hidden_channels}, vector_channels={self.vector_channels}, "
                f"edge_dim={self.edge_dim}, attention={self.att is not None}, vector_scale={self.vector_scale}")

    def forward(
        self,
        h: Tensor,
        vec: Tensor | None,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        edge_weight: Tensor | None = None,
        node_attr: Tensor | None = None,
        edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One layer: the new invariant features ``h`` and vector channels ``vec`` (shapes in the class docstring;
        ``vec=None`` starts the vector channels at zero)."""
        check_graph_inputs(h=h, pos=pos, edge_index=edge_index, in_features=self.in_channels,
                           dtype=self.edge_mlp[0].weight.dtype, edge_attr=edge_attr, edge_dim=self.edge_dim,
                           node_attr=node_attr, node_attr_dim=self.node_attr_dim, edge_shift=edge_shift)
        n, dim = pos.shape
        if vec is not None and vec.shape != (n, dim, self.vector_channels):
            raise ValueError(f"vec must have shape [{n}, {dim}, {self.vector_channels}], got {list(vec.shape)}")
        return self.propagate(h, vec, pos, edge_index.long(), edge_attr, edge_weight, node_attr, edge_shift)

    def propagate(
        self,
        h: Tensor,
        vec: Tensor | None,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        edge_weight: Tensor | None = None,
        node_attr: Tensor | None = None,
        edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Unchecked forward (see the class docstring); returns ``(h, vec)``."""
        n, k = h.shape[0], self.vector_channels
        src, dst = edge_index[0], edge_index[1]
        diff = pos.index_select(0, dst) - pos.index_select(0, src)
        if edge_shift is not None:
            diff = diff - edge_shift
        d2 = (diff * diff).sum(-1, keepdim=True)
        unit = diff * torch.rsqrt(d2.clamp_min(1e-12))
        # phi_e's first map as per-node projections gathered to the edges plus the per-edge invariants
        lin, f = self.edge_mlp[0], self.in_channels
        w = lin.weight
        pre = torch.addmm(lin.bias, h, w[:, :f].t()).index_select(0, dst) + (h @ w[:, f:2 * f].t()).index_select(0, src)
        geo = [d2] if edge_attr is None else [d2, edge_attr]
        v_src = None
        if vec is not None:  # a first layer's channels are zero: their projections add nothing
            v_dst, v_src = vec.index_select(0, dst), vec.index_select(0, src)
            u = unit.unsqueeze(-1)
            geo += [(v_dst * u).sum(1), (v_src * u).sum(1)]
        geo_t = torch.cat(geo, dim=-1)
        pre = torch.addmm(pre, geo_t, w[:, 2 * f:2 * f + geo_t.shape[1]].t())
        m = self.act(self.edge_mlp[1](self.act(pre)))
        if edge_weight is not None:
            m = m * edge_weight
        coef = self.vec_coef(m)
        dv = unit.unsqueeze(-1) * coef[:, :k].unsqueeze(1)  # [E, n, K]
        if v_src is not None:
            dv = dv + v_src * coef[:, k:].unsqueeze(1)
        agg_v = pos.new_zeros(n, pos.shape[1], k).index_add_(0, dst, dv) * self.vector_scale
        vec = agg_v if vec is None else self.mix(vec) + agg_v
        msg = m * torch.sigmoid(self.att(m)) if self.att is not None else m
        agg_h = h.new_zeros(n, self.hidden_channels).index_add_(0, dst, msg)
        ab = self.inner(vec)
        inner = (ab[..., :k] * ab[..., k:]).sum(1)  # [N, K]
        parts = [h, agg_h, inner] if node_attr is None else [h, agg_h, inner, node_attr]
        out = self.node_mlp[1](self.act(self.node_mlp[0](torch.cat(parts, dim=-1))))
        return h + out, vec
