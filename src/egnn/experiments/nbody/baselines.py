"""The baselines of the paper's N-body experiment (Table 2 of `arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_),
registered by :mod:`egnn.experiments.nbody.models` into ``NBODY_MODELS`` next to ``egnn``:

- ``linear``: ``x(t) = x(0) + t v(0)`` with a learned scalar ``t`` (paper MSE 0.0819);
- ``gnn``: message passing GNN on ``[x, v]`` (not equivariant) (0.0107);
- ``rf``: Radial Field (Kohler et al. 2019) with the velocity term (0.0104);
- ``tfn``: Tensor Field Network (Thomas et al. 2018) on e3nn (0.0155);
- ``se3_transformer``: SE(3)-Transformer (Fuchs et al. 2020) on e3nn (0.0244).

Paper MSEs: Table 2 of arXiv:2102.09844 (test MSE, 3000 training samples). Hyper-parameters and learning rates:
the N-body commands of the reference repository's README (vgsatorras/egnn): GNN ``lr 1e-3``, RF ``lr 2e-4``,
TFN ``--degree 2 --nf 32 --lr 1e-3``, SE(3)-Transformer ``--degree 3 --nf 64 --lr 5e-3``, all with 4 layers.

Inputs follow the reference's ``main_nbody.py``: the GNN sees ``[x_i, v_i]`` and edge attribute ``q_i q_j``; the
Radial Field sees ``|v_i|`` and edge attributes ``[q_i q_j, ||x_i - x_j||^2]``; TFN and SE(3)-Transformer see
the charge as a degree-0 and the velocity as a degree-1 input feature, relative positions through spherical
harmonics, and predict ``x + (degree-1 output)``.

TFN and the SE(3)-Transformer are written on `e3nn <https://e3nn.org>`_ (optional extra ``egnn[tfn]``), imported
only when one of them is built. Their hidden features carry the natural parity of each degree
(``0e, 1o, 2e, ...``) and every tensor-product path respects parity, so both models are O(3)-equivariant
(rotations *and* reflections), translation-equivariant (they only see ``x_i - x_j`` and add a displacement) and
permutation equivariant. The reference's degree convention is kept: ``num_degrees = k`` means feature degrees
``0 .. k - 1`` (its ``--degree 2`` TFN has degrees 0, 1; its ``--degree 3`` SE(3)-Transformer has 0, 1, 2), with
``nf // num_degrees`` channels per degree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from egnn.nn import GCL, RadialFieldLayer
from egnn.nn.egcl import make_activation
from egnn.ops import scatter_mean, scatter_sum

__all__ = [
    "GNNBaseline",
    "LinearDynamics",
    "RadialField",
    "SE3Transformer",
    "TensorFieldNetwork",
    "segment_softmax",
]

E3NN_HINT = "the TFN and SE(3)-Transformer baselines need e3nn: pip install 'egnn[tfn]'"


# ----------------------------------------------------------------------------------------------------------
# linear, GNN, Radial Field (pure PyTorch)
# ----------------------------------------------------------------------------------------------------------


class LinearDynamics(nn.Module):
    r"""Constant-velocity extrapolation :math:`x(t) = x(0) + t\, v(0)` with one learned scalar ``t``.

    ``t`` starts at 0.7 as in the reference (``Linear_dynamics``); E(n)-equivariant by construction.

    Shapes:
        - **input:** ``pos``, ``vel`` ``[N, n]``
        - **output:** predicted positions ``[N, n]``
    """

    def __init__(self, t0: float = 0.7) -> None:
        super().__init__()
        self.time = nn.Parameter(torch.tensor([float(t0)]))

    def forward(self, pos: Tensor, vel: Tensor) -> Tensor:
        return pos + self.time * vel


class GNNBaseline(nn.Module):
    r"""The paper's GNN baseline: a message passing network (:class:`egnn.nn.GCL` layers) on node features
    :math:`[x_i, v_i]` with edge attribute :math:`q_i q_j`, residual node updates and an MLP decoder to the
    predicted position (reference ``GNN(input_dim=6, recurrent=True)``, SiLU).

    It sees absolute coordinates and is therefore *not* E(n)-equivariant (the tests show that).

    Args:
        dim: spatial dimension ``n``.
        hidden_nf: width of all layers (64 in the paper).
        n_layers: number of message passing layers (4).
        edge_dim: size of the edge attributes (1: ``q_i q_j``).
        act: activation name.

    Shapes:
        - **input:** ``pos``, ``vel`` ``[N, n]``, ``edge_index`` ``[2, E]``, ``edge_attr`` ``[E, edge_dim]``
        - **output:** predicted positions ``[N, n]``
    """

    def __init__(self, dim: int = 3, hidden_nf: int = 64, n_layers: int = 4, edge_dim: int = 1,
                 act: str = "silu") -> None:
        super().__init__()
        self.embedding = nn.Linear(2 * dim, hidden_nf)
        self.layers = nn.ModuleList(GCL(hidden_nf, hidden_nf, edge_dim=edge_dim, act=act) for _ in range(n_layers))
        self.decoder = nn.Sequential(nn.Linear(hidden_nf, hidden_nf), make_activation(act), nn.Linear(hidden_nf, dim))

    def forward(self, pos: Tensor, vel: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        h = self.embedding(torch.cat([pos, vel], dim=-1))
        edge_index = edge_index.long()
        for layer in self.layers:
            h = layer(h, edge_index, edge_attr)
        return self.decoder(h)


class RadialField(nn.Module):
    r"""Radial Field of Köhler, Klein & Noé, *Equivariant Flows* (`arXiv:1910.00753
    <https://arxiv.org/abs/1910.00753>`_), with the velocity term used in the EGNN paper (reference
    ``RF_vel``): ``n_layers`` steps of :class:`egnn.nn.RadialFieldLayer` with the velocity term and
    :math:`\phi` bounded by ``tanh`` (which keeps the method stable). E(n)-equivariant.

    Args:
        hidden_nf: width of the MLPs (64).
        n_layers: number of steps (4).
        edge_dim: size of the edge attributes (2: ``[q_i q_j, ||x_i - x_j||^2]``).
        act: activation name.

    Shapes:
        - **input:** ``pos``, ``vel`` ``[N, n]``, ``h`` = ``|v|`` ``[N, 1]``, ``edge_index`` ``[2, E]``,
          ``edge_attr`` ``[E, edge_dim]``
        - **output:** predicted positions ``[N, n]``
    """

    def __init__(self, hidden_nf: int = 64, n_layers: int = 4, edge_dim: int = 2, act: str = "silu") -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            RadialFieldLayer(hidden_nf, edge_dim, act, tanh=True, velocity=True) for _ in range(n_layers)
        )

    def forward(self, pos: Tensor, vel: Tensor, h: Tensor, edge_index: Tensor,
                edge_attr: Tensor | None = None) -> Tensor:
        edge_index = edge_index.long()
        count = scatter_sum(torch.ones_like(edge_index[1], dtype=pos.dtype), edge_index[1], pos.shape[0])
        for layer in self.layers:
            pos = layer(pos, edge_index, edge_attr, vel=vel, vel_norm=h, count=count)
        return pos


# ----------------------------------------------------------------------------------------------------------
# TFN and SE(3)-Transformer on e3nn
# ----------------------------------------------------------------------------------------------------------
# Features are dicts ``{l: Tensor[N, channels, 2l + 1]}`` in e3nn's real basis (degree 1 = Cartesian x, y, z).
# A degree-l feature has parity (-1)^l, so a tensor-product path (l_in x l_filter -> l_out) is allowed when the
# triangle inequality holds and l_in + l_filter + l_out is even; that makes every layer O(3)-equivariant.
# e3nn supplies the spherical harmonics and the Clebsch-Gordan (Wigner 3j) coefficients; the contractions are
# batched matrix products grouped by output degree (much faster on CPU than per-path weight slicing).

Features = dict[int, Tensor]


def _o3():
    try:
        from e3nn import o3
    except ModuleNotFoundError as err:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError(E3NN_HINT) from err
    return o3


def segment_softmax(logits: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``logits`` ``[E]`` over the entries sharing the same ``index`` (e.g. the edges into a node)."""
    big = torch.full((num_segments,), -math.inf, dtype=logits.dtype, device=logits.device)
    top = big.scatter_reduce(0, index, logits.detach(), reduce="amax", include_self=True)
    e = (logits - top[index]).exp()
    return e / scatter_sum(e, index, num_segments)[index]


class _RadialMLP(nn.Module):
    """Radial profile trunk ``|r| -> [E, hidden]`` (two layers of 32 with LayerNorm and ReLU, as the reference's
    ``RadialFunc``), Kaiming-uniform initialised; the per-degree output heads live in the tensor product."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden),
            nn.ReLU(),
        )  # fmt: skip
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight)

    def forward(self, dist: Tensor) -> Tensor:
        return self.net(dist)


class _EdgeTensorProduct(nn.Module):
    r"""Per-edge tensor product of a source feature with the spherical harmonics of the edge, with fully
    connected channel weights from a radial MLP (the TFN / SE(3)-Transformer kernel):

    .. math::
        m^{(l_o)}_{ij,w} = \sum_{l_i, l_f} \sum_{u} R^{(l_i l_f l_o)}_{wu}(\|r_{ij}\|)
        \left(f^{(l_i)}_{j,u} \otimes Y^{(l_f)}(\hat r_{ij})\right)^{(l_o)}

    Args:
        degrees_in: ``{l: channels}`` of the input; degrees_out: ``{l: channels}`` of the output.
        max_filter_degree: highest spherical harmonic used.
    """

    def __init__(self, degrees_in: dict[int, int], degrees_out: dict[int, int], max_filter_degree: int,
                 radial_hidden: int = 32) -> None:
        super().__init__()
        o3 = _o3()
        self.degrees_in, self.degrees_out = dict(degrees_in), dict(degrees_out)
        self.paths: dict[int, list[tuple[int, int]]] = {}
        for lo in degrees_out:
            self.paths[lo] = [(li, lf) for li in degrees_in for lf in range(max_filter_degree + 1)
                              if abs(li - lf) <= lo <= li + lf and (li + lf + lo) % 2 == 0]
            for li, lf in self.paths[lo]:
                cg = o3.wigner_3j(li, lf, lo, dtype=torch.float64)
                self.register_buffer(f"cg_{li}_{lf}_{lo}", cg, persistent=False)
        self.radial = _RadialMLP(radial_hidden)
        self.heads = nn.ModuleDict()
        for lo, paths in self.paths.items():
            fan_in = sum(degrees_in[li] for li, _ in paths)
            if fan_in:
                self.heads[str(lo)] = nn.Linear(radial_hidden, degrees_out[lo] * fan_in)
                nn.init.kaiming_uniform_(self.heads[str(lo)].weight)

    def forward(self, f: Features, src: Tensor, sh: Features, dist: Tensor) -> Features:
        hidden = self.radial(dist)
        e = dist.shape[0]
        out: Features = {}
        for lo, paths in self.paths.items():
            if not paths:
                continue
            parts = []
            for li, lf in paths:
                cg = getattr(self, f"cg_{li}_{lf}_{lo}").to(dist.dtype)
                yc = torch.einsum("ej,ijk->eik", sh[lf], cg)  # [E, 2li+1, 2lo+1]
                parts.append(torch.bmm(f[li][src], yc))  # [E, U, 2lo+1]
            t = torch.cat(parts, dim=1)
            # component normalisation: unit-variance output for unit-variance inputs and weights
            t = t * math.sqrt((2 * lo + 1) / t.shape[1])
            w = self.heads[str(lo)](hidden).view(e, self.degrees_out[lo], t.shape[1])
            out[lo] = torch.bmm(w, t)
        return out


class _DegreeLinear(nn.Module):
    """Channel mixing within each degree (TFN self-interaction; SE(3)-Transformer queries); no bias."""

    def __init__(self, degrees_in: dict[int, int], degrees_out: dict[int, int]) -> None:
        super().__init__()
        self.weights = nn.ParameterDict({
            str(l): nn.Parameter(torch.randn(c, degrees_in[l]) / math.sqrt(degrees_in[l]))
            for l, c in degrees_out.items() if l in degrees_in
        })  # fmt: skip

    def forward(self, f: Features) -> Features:
        return {int(l): torch.einsum("wu,nud->nwd", w, f[int(l)]) for l, w in self.weights.items()}


class _NormActivation(nn.Module):
    r"""Norm nonlinearity (the reference's ``GNormSE3``): each degree-``l`` channel :math:`f_c` becomes
    :math:`\mathrm{ReLU}(\mathrm{LN}(\|f\|)_c)\, f_c / \|f_c\|`, the LayerNorm acting across the channels of that
    degree. Norms are invariant and the phase keeps the transformation of ``f_c``: O(3)-equivariant."""

    def __init__(self, degrees: dict[int, int], eps: float = 1e-12) -> None:
        super().__init__()
        self.norms = nn.ModuleDict({str(l): nn.LayerNorm(c) for l, c in degrees.items()})
        self.eps = eps

    def forward(self, f: Features) -> Features:
        out = {}
        for l, v in f.items():
            norm = v.norm(dim=-1, keepdim=True).clamp_min(self.eps)
            out[l] = torch.relu(self.norms[str(l)](norm.squeeze(-1))).unsqueeze(-1) * v / norm
        return out


class _Geometry:
    """Per-forward edge quantities shared by all layers: source/target, distance and spherical harmonics."""

    def __init__(self, pos: Tensor, edge_index: Tensor, max_degree: int) -> None:
        o3 = _o3()
        self.src, self.dst = edge_index.long()
        rel = pos[self.dst] - pos[self.src]  # x_i - x_j: translation invariant, a degree-1 (odd) vector
        self.dist = rel.norm(dim=-1, keepdim=True)
        ls = list(range(max_degree + 1))
        flat = o3.spherical_harmonics(ls, rel, normalize=True, normalization="component")
        self.sh = dict(zip(ls, flat.split([2 * l + 1 for l in ls], dim=-1)))
        self.num_nodes = pos.shape[0]
        self.count = scatter_sum(torch.ones_like(self.dist[:, 0]), self.dst, self.num_nodes)


class _TFNConv(nn.Module):
    r"""Tensor field network convolution (Thomas et al. 2018, `arXiv:1802.08219
    <https://arxiv.org/abs/1802.08219>`_; the reference's ``GConvSE3`` with self-interaction and mean
    aggregation):

    .. math::
        f^{out}_i = W_{self} f^{in}_i + \frac{1}{|\mathcal{N}(i)|} \sum_{j} m_{ij}

    with :math:`m_{ij}` the :class:`_EdgeTensorProduct` of :math:`f^{in}_j` and the edge :math:`r_{ij}`.
    """

    def __init__(self, degrees_in: dict[int, int], degrees_out: dict[int, int], max_filter_degree: int) -> None:
        super().__init__()
        self.tp = _EdgeTensorProduct(degrees_in, degrees_out, max_filter_degree)
        self.self_int = _DegreeLinear(degrees_in, degrees_out)

    def forward(self, f: Features, g: _Geometry) -> Features:
        msg = self.tp(f, g.src, g.sh, g.dist)
        out = {l: scatter_mean(m, g.dst, g.num_nodes, g.count) for l, m in msg.items()}
        for l, s in self.self_int(f).items():
            out[l] = out[l] + s if l in out else s
        return out


class _SE3Attention(nn.Module):
    r"""Equivariant graph self-attention of the SE(3)-Transformer (Fuchs et al. 2020, `arXiv:2006.10503
    <https://arxiv.org/abs/2006.10503>`_; the reference's ``GSE3Res`` with one head and no skip):

    .. math::
        v_{ij} = \mathrm{TP}_v(f_j, r_{ij}),\quad k_{ij} = \mathrm{TP}_k(f_j, r_{ij}),\quad q_i = W_q f_i, \\
        \alpha_{ij} = \mathrm{softmax}_j\!\left(\langle q_i, k_{ij}\rangle / \sqrt{d_k}\right),\qquad
        f^{out}_i = \sum_j \alpha_{ij} v_{ij}

    (:class:`_EdgeTensorProduct` for the values and keys). Keys and queries have the degrees of the input with
    the output's channel count. Their inner product is O(3)-invariant (real orthogonal irreps), so the attention
    weights are invariant and the output equivariant.
    """

    def __init__(self, degrees_in: dict[int, int], degrees_out: dict[int, int], max_filter_degree: int) -> None:
        super().__init__()
        degrees_key = {l: c for l, c in degrees_out.items() if l in degrees_in}
        self.tp_v = _EdgeTensorProduct(degrees_in, degrees_out, max_filter_degree)
        self.tp_k = _EdgeTensorProduct(degrees_in, degrees_key, max_filter_degree)
        self.query = _DegreeLinear(degrees_in, degrees_key)
        self.scale = 1.0 / math.sqrt(sum(c * (2 * l + 1) for l, c in degrees_key.items()))

    def forward(self, f: Features, g: _Geometry) -> Features:
        v = self.tp_v(f, g.src, g.sh, g.dist)
        k = self.tp_k(f, g.src, g.sh, g.dist)
        q = self.query(f)
        logits = sum((q[l][g.dst] * k[l]).sum(dim=(1, 2)) for l in k)
        alpha = segment_softmax(logits * self.scale, g.dst, g.num_nodes)
        return {l: scatter_sum(alpha.view(-1, 1, 1) * m, g.dst, g.num_nodes) for l, m in v.items()}


class _E3NNDynamics(nn.Module):
    """Shared input/output handling: input ``{0: q_i, 1: v_i}``, prediction ``x_i + out_i`` (degree 1)."""

    degrees_in = {0: 1, 1: 1}
    degrees_out = {1: 1}

    def _hidden(self, hidden_nf: int, num_degrees: int, n_layers: int) -> dict[int, int]:
        channels = hidden_nf // num_degrees
        if num_degrees < 2:
            raise ValueError(f"num_degrees must be >= 2 (a degree-1 output), got {num_degrees}")
        if channels < 1 or n_layers < 1:
            raise ValueError(f"need hidden_nf // num_degrees >= 1 and n_layers >= 1, got {channels}, {n_layers}")
        _o3()  # fail early with the install hint
        self.max_filter_degree = 2 * (num_degrees - 1)
        return {l: channels for l in range(num_degrees)}

    @staticmethod
    def _inputs(pos: Tensor, vel: Tensor, node_attr: Tensor | None) -> Features:
        if pos.shape[-1] != 3:
            raise ValueError(f"TFN / SE(3)-Transformer work in 3 dimensions, got positions {tuple(pos.shape)}")
        q = node_attr if node_attr is not None else pos.new_ones(pos.shape[0], 1)
        return {0: q.reshape(-1, 1, 1), 1: vel.reshape(-1, 1, 3)}


class TensorFieldNetwork(_E3NNDynamics):
    r"""Tensor Field Network dynamics model as in the paper's N-body experiment (reference ``OursTFN``):
    ``n_layers - 1`` blocks of :class:`_TFNConv` + norm nonlinearity, then a :class:`_TFNConv` to one degree-1
    output; the prediction is :math:`x_i + \mathrm{out}_i`. O(3)- and translation-equivariant.

    Args:
        hidden_nf: total width; ``hidden_nf // num_degrees`` channels per degree (reference ``--nf 32``).
        n_layers: number of convolutions (4).
        num_degrees: feature degrees ``0 .. num_degrees - 1`` (reference ``--degree 2``).

    Shapes:
        - **input:** ``pos``, ``vel`` ``[N, 3]``, ``node_attr`` = charges ``[N, 1]``, ``edge_index`` ``[2, E]``
        - **output:** predicted positions ``[N, 3]``
    """

    def __init__(self, hidden_nf: int = 32, n_layers: int = 4, num_degrees: int = 2) -> None:
        super().__init__()
        hidden = self._hidden(hidden_nf, num_degrees, n_layers)
        self.convs, self.acts = nn.ModuleList(), nn.ModuleList()
        prev = self.degrees_in
        for _ in range(n_layers - 1):
            self.convs.append(_TFNConv(prev, hidden, self.max_filter_degree))
            self.acts.append(_NormActivation(hidden))
            prev = hidden
        self.out = _TFNConv(prev, self.degrees_out, self.max_filter_degree)

    def forward(self, pos: Tensor, vel: Tensor, node_attr: Tensor | None, edge_index: Tensor) -> Tensor:
        f = self._inputs(pos, vel, node_attr)
        g = _Geometry(pos, edge_index, self.max_filter_degree)
        for conv, act in zip(self.convs, self.acts):
            f = act(conv(f, g))
        return pos + self.out(f, g)[1].reshape(-1, 3)


class SE3Transformer(_E3NNDynamics):
    r"""SE(3)-Transformer dynamics model as in the paper's N-body experiment (reference ``OurSE3Transformer``
    with ``div=1``, one head): ``n_layers`` blocks of :class:`_SE3Attention` + norm nonlinearity, a
    :class:`_TFNConv` to one degree-1 output scaled by a learned scalar started at 0.01; the prediction is
    :math:`x_i + \mathrm{out}_i`. O(3)- and translation-equivariant.

    Args:
        hidden_nf: total width; ``hidden_nf // num_degrees`` channels per degree (reference ``--nf 64``).
        n_layers: number of attention blocks (4).
        num_degrees: feature degrees ``0 .. num_degrees - 1`` (reference ``--degree 3``).

    Shapes:
        - **input:** ``pos``, ``vel`` ``[N, 3]``, ``node_attr`` = charges ``[N, 1]``, ``edge_index`` ``[2, E]``
        - **output:** predicted positions ``[N, 3]``
    """

    def __init__(self, hidden_nf: int = 64, n_layers: int = 4, num_degrees: int = 3) -> None:
        super().__init__()
        hidden = self._hidden(hidden_nf, num_degrees, n_layers)
        self.blocks, self.acts = nn.ModuleList(), nn.ModuleList()
        prev = self.degrees_in
        for _ in range(n_layers):
            self.blocks.append(_SE3Attention(prev, hidden, self.max_filter_degree))
            self.acts.append(_NormActivation(hidden))
            prev = hidden
        self.out = _TFNConv(hidden, self.degrees_out, self.max_filter_degree)
        self.out_scale = nn.Parameter(torch.tensor([0.01]))

    def forward(self, pos: Tensor, vel: Tensor, node_attr: Tensor | None, edge_index: Tensor) -> Tensor:
        f = self._inputs(pos, vel, node_attr)
        g = _Geometry(pos, edge_index, self.max_filter_degree)
        for block, act in zip(self.blocks, self.acts):
            f = act(block(f, g))
        return pos + self.out_scale * self.out(f, g)[1].reshape(-1, 3)
