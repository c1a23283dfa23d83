"""E(n)-equivariant graph convolutional layers (EGCL) of Satorras, Hoogeboom & Welling, ICML 2021."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from egnn.nn.validation import check_graph_inputs
from egnn.ops.scatter import scatter_count

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


_INPLACE = {nn.SiLU: lambda x: torch.nn.functional.silu(x, inplace=True), nn.ReLU: torch.relu_}


def make_activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {name!r}") from None


class EGCL(nn.Module):
    r"""The E(n)-equivariant graph convolutional layer, `arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_,
    equations (3)-(6):

    .. math::
        m_{ij} &= \phi_e(h_i, h_j, \|x_i - x_j\|^2, a_{ij}) \\
        x_i &\leftarrow x_i + C \sum_{j \ne i} (x_i - x_j)\, \phi_x(m_{ij}) \\
        m_i &= \sum_{j \ne i} e_{ij} m_{ij}, \qquad e_{ij} = \phi_{inf}(m_{ij}) \in [0, 1]
              \text{ (with attention; else } e_{ij} = 1) \\
        h_i &\leftarrow \phi_h(h_i, m_i)\ (+\, h_i \text{ with residual})

    Edge convention: ``edge_index[0]`` is the source ``j``, ``edge_index[1]`` the target ``i``; messages
    aggregate at ``edge_index[1]``.

    The first linear map of :math:`\phi_e` acts on :math:`[h_i, h_j, r_{ij}, a_{ij}]`. With ``fast=True``
    it is evaluated as per-node projections gathered to the edges,
    :math:`W_1 h_i + W_2 h_j + w_3 r_{ij} + W_4 a_{ij} + b`, which does ``E/N`` times less work than
    concatenating per edge; ``fast=False`` concatenates (the reference implementation's form). Both use the
    same parameters, so a state dict works with either.

    Args:
        in_channels: size of ``h``.
        hidden_channels: size of the messages and the hidden layers of the MLPs.
        out_channels: size of the output ``h`` (default ``in_channels``).
        edge_dim: size of the edge attributes ``a_ij`` (0 for none).
        node_attr_dim: size of extra node attributes fed to :math:`\phi_h` (0 for none).
        act: activation, one of ``silu``, ``relu``, ``gelu``, ``tanh``, ``leaky_relu``.
        residual: add ``h_i`` to the output of :math:`\phi_h` (needs ``out_channels == in_channels``).
        attention: infer soft edges :math:`e_{ij} = \mathrm{sigmoid}(\mathrm{Linear}(m_{ij}))` weighting the
            messages (the paper's edge inference).
        normalize: ``True``: use :math:`(x_i - x_j) / \sqrt{\|x_i - x_j\|^2 + \epsilon}` in the coordinate
            update, with the gradient through the norm. ``"reference"``: the reference code's
            :math:`(x_i - x_j) / (\mathrm{stop\_grad}(\|x_i - x_j\|) + \epsilon)` (``egnn_clean.py``, norm
            detached), so that weights ported from it give the same values and gradients. The two agree to
            ~1e-7 at unit distances but differ near coincident nodes and in their gradients.
        tanh: bound :math:`\phi_x` to ``coords_range * tanh(.)``.
        coords_range: bound of :math:`\phi_x` with ``tanh`` (> 0). The reference code's ``tanh`` bound is 1
            (``coords_range=1.0`` reproduces it); ours defaults to 15.
        coord_agg: ``"mean"`` (:math:`C = 1/\deg(i)`, the reference code's choice) or ``"sum"`` (:math:`C=1`).
        update_coords: ``False`` builds an invariant-only layer: no :math:`\phi_x`, positions returned as is.
        norm_eps: :math:`\epsilon` of ``normalize`` (> 0); keeps values and gradients finite when nodes coincide.
        fast: per-node projection form of the first linear map of :math:`\phi_e` (see above).
        chunk_size: compute and scatter messages in chunks of this many edges (bounded memory for huge
            graphs; same result). ``None`` processes all edges at once.
        checkpoint_chunks: when gradients are on, recompute each chunk's messages in the backward pass instead
            of storing them, so a training step needs ``O(N H + chunk H)`` memory like inference.

    Differences from the reference code (vgsatorras/egnn; measured with identical weights): the
    ``normalize`` formula and its gradient (see ``normalize``; ``"reference"`` reproduces it); the reference
    clamps every coordinate message :math:`(x_i - x_j)\phi_x(m_{ij})` to :math:`[-100, 100]`, we do not (it never
    triggers in its experiments); its ``tanh`` bound is 1, ours ``coords_range`` (default 15).

    Shapes:
        - **input:** ``h`` ``[N, in_channels]``, ``pos`` ``[N, n]``, ``edge_index`` ``[2, E]``,
          ``edge_attr`` ``[E, edge_dim]`` (optional), ``node_attr`` ``[N, node_attr_dim]`` (optional),
          ``edge_shift`` ``[E, n]`` (optional): Cartesian offset of the source node's periodic image, so that
          every coordinate difference (radial and coordinate update) is :math:`x_i - (x_j + s_{ij})`
          (rotates with the positions, unchanged by translations)
        - **output:** ``h`` ``[N, out_channels]``, ``pos`` ``[N, n]``
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int | None = None,
        edge_dim: int = 0,
        node_attr_dim: int = 0,
        act: str = "silu",
        residual: bool = True,
        attention: bool = False,
        normalize: bool | str = False,
        tanh: bool = False,
        coords_range: float = 15.0,
        coord_agg: str = "mean",
        update_coords: bool = True,
        norm_eps: float = 1e-8,
        fast: bool = True,
        chunk_size: int | None = None,
        checkpoint_chunks: bool = False,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if min(in_channels, hidden_channels, out_channels) < 1 or min(edge_dim, node_attr_dim) < 0:
            raise ValueError("channel sizes must be >= 1 and edge_dim/node_attr_dim >= 0")
        if residual and out_channels != in_channels:
            raise ValueError(f"residual needs out_channels == in_channels, got {out_channels} != {in_channels}")
        if coord_agg not in ("mean", "sum"):
            raise ValueError(f"coord_agg must be 'mean' or 'sum', got {coord_agg!r}")
        if normalize not in (False, True, "reference"):
            raise ValueError(f"normalize must be False, True or 'reference', got {normalize!r}")
        if not norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0 (0 gives NaN for coincident nodes), got {norm_eps}")
        if not coords_range > 0:
            raise ValueError(f"coords_range must be > 0, got {coords_range}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.in_channels, self.hidden_channels, self.out_channels = in_channels, hidden_channels, out_channels
        self.edge_dim, self.node_attr_dim = edge_dim, node_attr_dim
        self.residual, self.attention, self.normalize = residual, attention, normalize
        self.tanh, self.coords_range, self.coord_agg = tanh, float(coords_range), coord_agg
        self.update_coords, self.norm_eps, self.fast, self.chunk_size = update_coords, norm_eps, fast, chunk_size
        self.checkpoint_chunks = checkpoint_chunks

        self.act = make_activation(act)
        # phi_e: Linear([h_i, h_j, r_ij, a_ij]) -> act -> Linear -> act
        self.edge_mlp = nn.ModuleList(
            [nn.Linear(2 * in_channels + 1 + edge_dim, hidden_channels), nn.Linear(hidden_channels, hidden_channels)]
        )
        # phi_inf: soft edge weight in [0, 1]
        self.att_mlp = nn.ModuleList([nn.Linear(hidden_channels, 1)]) if attention else None
        # phi_x: Linear -> act -> Linear(no bias), the last one started near zero as in the reference code
        self.coord_mlp = (
            nn.ModuleList([nn.Linear(hidden_channels, hidden_channels), nn.Linear(hidden_channels, 1, bias=False)])
            if update_coords
            else None
        )
        # phi_h: Linear([h_i, m_i, node_attr_i]) -> act -> Linear
        self.node_mlp = nn.ModuleList(
            [nn.Linear(in_channels + hidden_channels + node_attr_dim, hidden_channels),
             nn.Linear(hidden_channels, out_channels)]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Re-initialise every parameter as at construction (authoritative: :class:`EGNN` calls it per layer).

        PyTorch's default for every linear map, except :math:`\phi_x`'s last one: Xavier-uniform with gain
        0.001, as the reference code, so that training starts with near-zero coordinate updates."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        if self.coord_mlp is not None:
            nn.init.xavier_uniform_(self.coord_mlp[1].weight, gain=0.001)

    def extra_repr(self) -> str:
        opts = [f"{k}={getattr(self, k)}" for k in ("edge_dim", "residual", "attention", "normalize", "tanh",
                                                     "coord_agg", "update_coords", "fast")]
        return f"{self.in_channels}, {self.hidden_channels}, {self.out_channels}, " + ", ".join(opts)

    # --- forward -------------------------------------------------------------------------------------
    def forward(
        self,
        h: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        node_attr: Tensor | None = None,
        edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One layer: the new node features and positions ``(h, pos)`` (shapes in the class docstring); the inputs
        are checked first and never modified."""
        self.check_inputs(h, pos, edge_index, edge_attr, node_attr, edge_shift=edge_shift)
        h_out, delta, _ = self.propagate(h, pos, edge_index.long(), edge_attr, node_attr, edge_shift=edge_shift)
        return h_out, pos + delta if delta is not None else pos

    def check_inputs(
        self, h, pos, edge_index, edge_attr=None, node_attr=None, vel=None, require_vel=False, edge_shift=None
    ):
        """Raise ``ValueError`` naming the argument when a tensor of a forward call has the wrong shape, dtype or
        range (edge indices outside the nodes, NaN/Inf); what :meth:`forward` checks before it computes."""
        check_graph_inputs(
            h=h, pos=pos, edge_index=edge_index, in_features=self.in_channels,
            dtype=self.edge_mlp[0].weight.dtype, edge_attr=edge_attr, edge_dim=self.edge_dim,
            node_attr=node_attr, node_attr_dim=self.node_attr_dim, vel=vel, require_vel=require_vel,
            edge_shift=edge_shift,
        )

    def propagate(
        self,
        h: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        node_attr: Tensor | None = None,
        count: Tensor | None = None,
        edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Unchecked forward: returns ``(h_new, coordinate update C sum_j (x_i - x_j) phi_x(m_ij), count)``.

        ``count`` (in-degree per node, for mean aggregation) is computed if not given and returned, so a
        model can share it across layers. ``edge_shift`` ``[E, n]``: periodic image offset of each source.
        """
        n = h.shape[0]
        src, dst = edge_index[0], edge_index[1]
        num_edges = src.shape[0]
        if self.update_coords and self.coord_agg == "mean" and count is None:
            count = scatter_count(dst, n, pos.dtype)
        proj = self._node_projection(h) if self.fast else None
        agg_h = h.new_zeros(n, self.hidden_channels)
        agg_x = pos.new_zeros(pos.shape) if self.update_coords else None
        # chunk_size=None: one call on all edges, no Python loop over the (symbolic) edge count, so a dynamic
        # torch.compile graph serves every edge count
        bounds = [None] if self.chunk_size is None else [
            slice(start, min(start + self.chunk_size, num_edges)) for start in range(0, num_edges, self.chunk_size)
        ]
        for sl in bounds:
            s, d = (src, dst) if sl is None else (src[sl], dst[sl])
            a = edge_attr if edge_attr is None or sl is None else edge_attr[sl]
            sh = edge_shift if edge_shift is None or sl is None else edge_shift[sl]
            if self.checkpoint_chunks and torch.is_grad_enabled():
                m, trans = activation_checkpoint(self._messages, h, pos, s, d, a, proj, sh, use_reentrant=False)
            else:
                m, trans = self._messages(h, pos, s, d, a, proj, sh)
            agg_h.index_add_(0, d, m)  # in place: a fresh buffer, no N x H copy per chunk
            if trans is not None:
                agg_x.index_add_(0, d, trans)
        delta = None
        if agg_x is not None:
            delta = agg_x / count.clamp_min(1).unsqueeze(-1) if self.coord_agg == "mean" else agg_x
        return self._node_update(h, agg_h, node_attr), delta, count

    def _node_update(self, h: Tensor, agg_h: Tensor, node_attr: Tensor | None) -> Tensor:
        """:math:`\\phi_h(h_i, m_i)` (+ :math:`h_i` with ``residual``)."""
        lin = self.node_mlp[0]
        if self._in_place():
            # W [h, m, a] + b as accumulated products: no [N, 2H + A] concatenation (512 MB at 10^6 nodes)
            f, hh = self.in_channels, self.hidden_channels
            z = torch.addmm(lin.bias, h, lin.weight[:, :f].t()).addmm_(agg_h, lin.weight[:, f : f + hh].t())
            if node_attr is not None:
                z.addmm_(node_attr, lin.weight[:, f + hh :].t())
            out = self.node_mlp[1](self._act_edges(z))
            return out.add_(h) if self.residual else out
        parts = [h, agg_h] if node_attr is None else [h, agg_h, node_attr]
        out = self.node_mlp[1](self.act(lin(torch.cat(parts, dim=-1))))
        return h + out if self.residual else out

    def _node_projection(self, h: Tensor) -> tuple[Tensor, Tensor]:
        # W1 h_i + b and W2 h_j for every node, each [N, H] and contiguous (fast row gathers per chunk)
        lin, f = self.edge_mlp[0], self.in_channels
        return torch.addmm(lin.bias, h, lin.weight[:, :f].t()), h @ lin.weight[:, f : 2 * f].t()

    def _messages(
        self, h: Tensor, pos: Tensor, src: Tensor, dst: Tensor, edge_attr: Tensor | None,
        proj: tuple[Tensor, Tensor] | None, edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        diff = pos.index_select(0, dst) - pos.index_select(0, src)  # x_i - x_j
        if edge_shift is not None:
            diff = diff - edge_shift  # x_i - (x_j + s_ij): the source's periodic image
        radial = (diff * diff).sum(-1, keepdim=True)
        lin = self.edge_mlp[0]
        if proj is not None:
            # W1 h_i + b + W2 h_j first, so the geometric terms are added by one addmm / addcmul
            pre = proj[0].index_select(0, dst)
            pre = pre.add_(proj[1].index_select(0, src)) if self._in_place() else pre + proj[1].index_select(0, src)
            e = self._edge_pre(pre, radial, edge_attr)
        else:
            geo = radial if edge_attr is None else torch.cat([radial, edge_attr], dim=-1)
            e = lin(torch.cat([h.index_select(0, dst), h.index_select(0, src), geo], dim=-1))
        return self._edge_model(e, diff, radial)

    def _edge_pre(self, pre: Tensor, radial: Tensor, edge_attr: Tensor | None) -> Tensor:
        """First linear map of phi_e given ``pre = W1 h_i + b + W2 h_j`` ``[E, H]``: adds ``w3 r_ij + W4 a_ij``."""
        w = self.edge_mlp[0].weight
        f = 2 * self.in_channels
        if edge_attr is None:
            if torch.compiler.is_compiling():
                # torch.compile only (eager unchanged): the same sum as a rank-1 matrix product, so that the
                # gradient of r_ij is a matrix product instead of a reduction over the channels. Inductor
                # (torch 2.13 CPU, >= 2 threads) fuses that reduction with the scatter-add gradients of the
                # gathers of W1 h_i and W2 h_j into a 2-D tiled kernel whose atomic adds get the tile offset
                # twice: wrong gradients, out-of-bounds writes, heap corruption (docs/compile_crash_repro.py).
                return torch.addmm(pre, radial, w[:, f : f + 1].t())
            return pre.addcmul_(radial, w[:, f]) if self._in_place() else torch.addcmul(pre, radial, w[:, f])
        geo = torch.cat([radial, edge_attr], dim=-1)
        return pre.addmm_(geo, w[:, f:].t()) if self._in_place() else torch.addmm(pre, geo, w[:, f:].t())

    @staticmethod
    def _in_place() -> bool:
        # without autograd, edge-sized intermediates are overwritten instead of allocated (less memory traffic)
        return not torch.is_grad_enabled() and not torch.compiler.is_compiling()

    def _act_edges(self, x: Tensor) -> Tensor:
        inplace = _INPLACE.get(type(self.act))
        return inplace(x) if inplace is not None and self._in_place() else self.act(x)

    def _edge_model(self, e: Tensor, diff: Tensor, radial: Tensor) -> tuple[Tensor, Tensor | None]:
        """From the first linear map's output ``e`` ``[E, H]``: messages ``m_ij`` and coordinate terms."""
        m = self._act_edges(self.edge_mlp[1](self._act_edges(e)))
        if self.att_mlp is not None:
            m = m * torch.sigmoid(self.att_mlp[0](m))
        if self.coord_mlp is None:
            return m, None
        # the last map has one output: a matrix-vector product (its backward is an outer product, cheaper
        # than the K=1 matrix product nn.Linear would do)
        phi_x = torch.mv(self._act_edges(self.coord_mlp[0](m)), self.coord_mlp[1].weight[0]).unsqueeze(-1)
        if self.tanh:
            phi_x = torch.tanh(phi_x) * self.coords_range
        if self.normalize == "reference":
            diff = diff / (torch.sqrt(radial).detach() + self.norm_eps)
        elif self.normalize:
            diff = diff / torch.sqrt(radial + self.norm_eps)
        return m, diff * phi_x

    # --- dense path: B equal-size fully connected graphs ---------------------------------------------
    def propagate_dense(
        self,
        h: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        n: int,
        edge_attr: Tensor | None = None,
        node_attr: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Unchecked forward for ``B = N / n`` fully connected graphs of ``n >= 2`` nodes each, whose
        ``edge_index`` is exactly :func:`egnn.ops.fully_connected_edges` ``([n] * B)`` (graph, then target ``i``,
        then source ``j != i``; the caller checks this).

        Same result as :meth:`propagate` (up to float summation order), computed on ``[B, n, n - 1, *]``
        views: the target terms are broadcast and the sums over ``j`` are reductions over one dimension, so
        no gather of targets and no scatter. Returns ``(h_new, coordinate update)``.
        """
        num = h.shape[0]
        b, k, d = num // n, n - 1, pos.shape[1]
        hh = self.hidden_channels
        src = edge_index[0]
        lin, f = self.edge_mlp[0], self.in_channels
        pd = torch.addmm(lin.bias, h, lin.weight[:, :f].t()).view(b, n, 1, hh)  # W1 h_i + b, broadcast over j
        ps = (h @ lin.weight[:, f : 2 * f].t()).index_select(0, src).view(b, n, k, hh)  # W2 h_j
        diff = (pos.view(b, n, 1, d) - pos.index_select(0, src).view(b, n, k, d)).view(-1, d)
        radial = (diff * diff).sum(-1, keepdim=True)
        e = self._edge_pre((pd + ps).view(-1, hh), radial, edge_attr)
        m, trans = self._edge_model(e, diff, radial)
        agg_h = m.view(b, n, k, hh).sum(2).view(num, hh)
        delta = None
        if trans is not None:
            delta = trans.view(b, n, k, d).sum(2).view(num, d)
            if self.coord_agg == "mean":
                delta = delta / k
        return self._node_update(h, agg_h, node_attr), delta


class EGCLVel(EGCL):
    r"""The velocity variant of :class:`EGCL`, `arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_, eq. (7):

    .. math::
        v_i &\leftarrow \phi_v(h_i)\, v_i^{init} + C \sum_{j \ne i} (x_i - x_j)\, \phi_x(m_{ij}) \\
        x_i &\leftarrow x_i + v_i

    with :math:`m_{ij}`, :math:`h_i` updated as in :class:`EGCL`. :math:`\phi_v` is an MLP
    ``Linear -> act -> Linear(1)`` on the layer's input features. Takes every argument of :class:`EGCL`
    (``update_coords`` must stay ``True``).

    Shapes:
        - **input:** as :class:`EGCL` (``edge_shift`` included) plus ``vel`` ``[N, n]`` (the initial
          velocities :math:`v^{init}`)
        - **output:** ``h`` ``[N, out_channels]``, ``pos`` ``[N, n]``, ``vel`` ``[N, n]`` (the new :math:`v_i`)
    """

    def __init__(self, in_channels: int, hidden_channels: int, *args, **kwargs) -> None:
        if not kwargs.get("update_coords", True):
            raise ValueError("EGCLVel updates coordinates; update_coords=False is not supported")
        super().__init__(in_channels, hidden_channels, *args, **kwargs)
        self.vel_mlp = nn.ModuleList([nn.Linear(in_channels, hidden_channels), nn.Linear(hidden_channels, 1)])
        for m in self.vel_mlp:
            m.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Re-initialise every parameter as at construction (:meth:`EGCL.reset_parameters`, :math:`\phi_v`
        included)."""
        super().reset_parameters()  # every nn.Linear, vel_mlp included once it exists

    def forward(  # type: ignore[override]
        self,
        h: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        node_attr: Tensor | None = None,
        vel: Tensor | None = None,
        edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer: the new ``(h, pos, vel)``; ``vel`` (the initial velocity :math:`v^{init}`) is required."""
        self.check_inputs(h, pos, edge_index, edge_attr, node_attr, vel=vel, require_vel=True, edge_shift=edge_shift)
        h_out, pos_out, vel_out, _ = self.propagate_vel(
            h, pos, edge_index.long(), vel, edge_attr, node_attr, edge_shift=edge_shift
        )
        return h_out, pos_out, vel_out

    def propagate_vel(
        self,
        h: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        vel: Tensor,
        edge_attr: Tensor | None = None,
        node_attr: Tensor | None = None,
        count: Tensor | None = None,
        edge_shift: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Unchecked forward; returns ``(h, pos, vel, count)``."""
        scale = self.vel_mlp[1](self.act(self.vel_mlp[0](h)))  # phi_v(h_i), on the input features
        h_out, delta, count = self.propagate(h, pos, edge_index, edge_attr, node_attr, count, edge_shift)
        v = torch.addcmul(delta, scale, vel)
        return h_out, pos + v, v, count

    def propagate_vel_dense(
        self, h: Tensor, pos: Tensor, edge_index: Tensor, n: int, vel: Tensor, edge_attr: Tensor | None = None,
        node_attr: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`propagate_vel` on ``N / n`` fully connected graphs of ``n`` nodes (see
        :meth:`EGCL.propagate_dense`); returns ``(h, pos, vel)``."""
        scale = self.vel_mlp[1](self.act(self.vel_mlp[0](h)))
        h_out, delta = self.propagate_dense(h, pos, edge_index, n, edge_attr, node_attr)
        v = torch.addcmul(delta, scale, vel)
        return h_out, pos + v, v

