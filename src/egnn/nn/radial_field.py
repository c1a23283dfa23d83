"""The Radial Field layer (Köhler, Klein & Noé 2019) that the EGNN paper compares against."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egnn.nn.egcl import make_activation
from egnn.ops.scatter import scatter_mean


class RadialFieldLayer(nn.Module):
    r"""One step of the Radial Field of Köhler, Klein & Noé, *Equivariant Flows* (`arXiv:1910.00753
    <https://arxiv.org/abs/1910.00753>`_), in the form used by the EGNN paper (`arXiv:2102.09844
    <https://arxiv.org/abs/2102.09844>`_, Table 1; the reference code's ``GCL_rf`` and, with ``velocity``,
    ``GCL_rf_vel``):

    .. math::
        m_{ij} &= (x_i - x_j)\, \phi(\|x_i - x_j\|, a_{ij}) \\
        x_i &\leftarrow x_i + \frac{1}{|\mathcal{N}(i)|} \sum_{j \in \mathcal{N}(i)} m_{ij}
              \ (+\, v_i\, \phi_v(\|v_i\|) \text{ with ``velocity``})

    with :math:`\phi` = ``Linear(1 + edge_dim, hidden) -> act -> Linear(hidden, 1, no bias)`` (the last map
    started near zero, gain 1e-3), optionally followed by ``tanh``, and :math:`\phi_v` =
    ``Linear(1, hidden) -> act -> Linear(hidden, 1)``. Only positions are updated, through invariant weights
    on relative vectors: E(n)-equivariant (see ``clamp``). There are no node features.

    Edge convention: ``edge_index[0]`` is the source ``j``, ``edge_index[1]`` the target ``i``; messages
    aggregate (mean) at ``edge_index[1]``.

    Args:
        hidden_channels: width of the hidden layers of :math:`\phi` and :math:`\phi_v`.
        edge_dim: size of the edge attributes ``a_ij`` (0 for none).
        act: activation, one of ``silu``, ``relu``, ``gelu``, ``tanh``, ``leaky_relu``.
        tanh: bound :math:`\phi` to ``[-1, 1]`` by a final ``tanh`` (the N-body model's choice; keeps it stable).
        velocity: add the velocity term (then ``vel`` is required).
        clamp: clamp every component of :math:`m_{ij}` to ``[-clamp, clamp]`` (``None``: no clamping; the
            autoencoder uses 100 as the reference does). Per component, so only while it does not bite is the
            layer rotation-equivariant (translations and permutations always are).
        dist_eps: added under the square root of the distance, :math:`\sqrt{\|x_i - x_j\|^2 + \epsilon}`, so
            that the gradient stays finite when two nodes coincide (0: the plain distance).

    Shapes:
        - **input:** ``pos`` ``[N, n]``, ``edge_index`` ``[2, E]``, ``edge_attr`` ``[E, edge_dim]`` (``None``
          when ``edge_dim == 0``), ``vel`` ``[N, n]`` and ``vel_norm`` ``[N, 1]`` (optional, default
          ``|vel|``) with ``velocity``, ``count`` ``[N]`` (optional in-degree of each node, to share it
          between layers)
        - **output:** ``pos`` ``[N, n]``
    """

    def __init__(self, hidden_channels: int, edge_dim: int = 0, act: str = "silu", tanh: bool = False,
                 velocity: bool = False, clamp: float | None = None, dist_eps: float = 0.0) -> None:
        super().__init__()
        if hidden_channels < 1 or edge_dim < 0:
            raise ValueError("hidden_channels must be >= 1 and edge_dim >= 0")
        if clamp is not None and not clamp > 0:
            raise ValueError(f"clamp must be > 0 or None, got {clamp}")
        if not dist_eps >= 0:
            raise ValueError(f"dist_eps must be >= 0, got {dist_eps}")
        self.hidden_channels, self.edge_dim, self.tanh, self.velocity = hidden_channels, edge_dim, tanh, velocity
        self.clamp, self.dist_eps = clamp, float(dist_eps)
        # created before the first map so that seeded construction draws as the models' own layers did
        last = nn.Linear(hidden_channels, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=1e-3)
        phi = [nn.Linear(1 + edge_dim, hidden_channels), make_activation(act), last]
        self.phi = nn.Sequential(*phi, nn.Tanh()) if tanh else nn.Sequential(*phi)
        self.phi_v = (
            nn.Sequential(nn.Linear(1, hidden_channels), make_activation(act), nn.Linear(hidden_channels, 1))
            if velocity
            else None
        )

    def reset_parameters(self) -> None:
        """Re-initialise every parameter as at construction."""
        # same order of random draws as __init__: a seeded reset gives the seeded constructor's weights
        self.phi[2].reset_parameters()
        nn.init.xavier_uniform_(self.phi[2].weight, gain=1e-3)
        self.phi[0].reset_parameters()
        if self.phi_v is not None:
            self.phi_v[0].reset_parameters()
            self.phi_v[2].reset_parameters()

    def extra_repr(self) -> str:
        return (f"{self.hidden_channels}, edge_dim={self.edge_dim}, tanh={self.tanh}, velocity={self.velocity}, "
                f"clamp={self.clamp}, dist_eps={self.dist_eps}")

    def forward(self, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None, vel: Tensor | None = None,
                vel_norm: Tensor | None = None, count: Tensor | None = None) -> Tensor:
        """The new positions ``[N, n]`` (``vel_norm``: precomputed ``||v_i||``; ``count``: precomputed in-degrees)."""
        src, dst = edge_index[0], edge_index[1]
        diff = pos[dst] - pos[src]
        dist = torch.sqrt((diff * diff).sum(-1, keepdim=True) + self.dist_eps)
        feats = torch.cat([dist, edge_attr], dim=-1) if edge_attr is not None else dist
        m = diff * self.phi(feats)
        if self.clamp is not None:
            m = m.clamp(-self.clamp, self.clamp)
        pos = pos + scatter_mean(m, dst, pos.shape[0], count)
        if self.phi_v is None:
            return pos
        if vel is None:
            raise ValueError("a RadialFieldLayer with velocity=True needs vel")
        if vel_norm is None:
            vel_norm = vel.norm(dim=-1, keepdim=True)
        return pos + vel * self.phi_v(vel_norm)
