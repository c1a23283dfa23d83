r"""Graph autoencoders of the paper's Section 5.2 (`arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_).

An encoder maps a graph to node embeddings :math:`z_i \in \mathbb{R}^8`; a decoder reconstructs the adjacency
from pairwise embedding differences. Every encoder runs on the fully connected graph of the input's nodes with
edge attribute :math:`a_{ij} = A_{ij}` (as the reference ``main_ae.py`` does), 4 layers, 64 hidden features,
SiLU:

- ``gnn``: a message-passing GNN from constant node features, then ``Linear(64 -> 8)``. All nodes of a
  regular graph receive the same embedding: the symmetry problem the paper points out.
- ``noise_gnn``: the same with Gaussian noise :math:`h_i^0 \sim \mathcal{N}(0, 1)` (1 dimension, the
  reference's ``--noise_dim 1``) as input features, which breaks the symmetry but is not a function of the
  graph alone.
- ``rf``: Radial Field (Köhler et al. 2019) on positions :math:`x_i^0 \sim \mathcal{N}(0, I_K)`, ``K = 8``:
  :math:`x_i \leftarrow x_i + \frac{1}{M-1}\sum_{j \ne i} (x_i - x_j)\,\phi(\|x_i - x_j\|, a_{ij})`;
  :math:`z = x^L`.
- ``egnn``: :class:`egnn.nn.EGNN` on positions :math:`x_i^0 \sim \mathcal{N}(0, I_K)`, ``K = 8``, and constant
  node features; the output positions are the embedding, :math:`z = x^L`.

Decoders: :math:`A_{ij} = \sigma(w \|z_i - z_j\|^2 + b)` with learned scalars ``w`` (initial -0.1) and ``b``
(initial 1) for ``rf`` and ``egnn`` (E(n)-invariant; stored scaled by 1/10 so that they train 10x faster, see
:class:`DistanceDecoder`); :math:`A_{ij} = \sigma(w^\top (z_i - z_j)^{\odot 2} + b)`
with a learned ``Linear(8 -> 1)`` for the GNNs, as the reference does.

Not reproduced: the reference shrinks the positions by ``x -= 1e-3 x`` after every EGNN/RF layer; that breaks
translation equivariance and changes the scale by < 0.5 %, so it is left out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from egnn.experiments.ae.datasets import AEBatch
from egnn.experiments.registry import Registry
from egnn.nn import EGNN, GCL, RadialFieldLayer


class AEOutput(NamedTuple):
    """``z`` node embeddings ``[N, D]``; ``logits`` of ``A_ij`` for every pair of ``edge_index`` ``[E]``."""

    z: Tensor
    logits: Tensor


# --- decoders ------------------------------------------------------------------------------------------------
class DistanceDecoder(nn.Module):
    r""":math:`\mathrm{logit}\, A_{ij} = w \|z_i - z_j\|^2 + b` with learned scalars (E(n)-invariant).

    ``w`` and ``b`` are stored divided by ``param_scale`` (``w = param_scale * w_raw``): the same function,
    but Adam's per-step change of ``w`` and ``b`` becomes ``param_scale`` times larger. Both have to grow by
    O(1-10) from their initial values (-0.1, 1) for confident predictions, which at the learning rates of a
    few thousand steps (the ``quick`` preset) would otherwise bound the reachable BCE. ``param_scale=1`` is
    the reference's parametrisation.

    Shapes: ``z`` ``[N, D]``, ``edge_index`` ``[2, E]`` -> ``[E]``.
    """

    def __init__(self, w_init: float = -0.1, b_init: float = 1.0, param_scale: float = 10.0) -> None:
        super().__init__()
        self.param_scale = float(param_scale)
        self.w_raw = nn.Parameter(torch.tensor([w_init / self.param_scale]))
        self.b_raw = nn.Parameter(torch.tensor([b_init / self.param_scale]))

    @property
    def w(self) -> Tensor:
        return self.param_scale * self.w_raw

    @property
    def b(self) -> Tensor:
        return self.param_scale * self.b_raw

    def forward(self, z: Tensor, edge_index: Tensor) -> Tensor:
        d = z[edge_index[1]] - z[edge_index[0]]
        return self.w * (d * d).sum(-1) + self.b


class WeightedDistanceDecoder(nn.Module):
    r""":math:`\mathrm{logit}\, A_{ij} = w^\top (z_i - z_j)^{\odot 2} + b`, a learned linear map of the
    per-dimension squared differences (the reference's decoder for GNN embeddings).

    Shapes: ``z`` ``[N, D]``, ``edge_index`` ``[2, E]`` -> ``[E]``.
    """

    def __init__(self, emb_nf: int) -> None:
        super().__init__()
        self.linear = nn.Linear(emb_nf, 1)

    def forward(self, z: Tensor, edge_index: Tensor) -> Tensor:
        d = z[edge_index[1]] - z[edge_index[0]]
        return self.linear(d * d).squeeze(-1)


# --- encoders ------------------------------------------------------------------------------------------------
class GNNEncoder(nn.Module):
    """GNN encoder: ``n_layers`` :class:`egnn.nn.GCL` (paper eq. 2; the first without residual) and
    ``Linear(hidden -> emb_nf)``.

    ``noise_dim = 0`` uses constant input features (``gnn``); ``noise_dim > 0`` replaces them by Gaussian noise
    of that dimension (``noise_gnn``), passed in as ``noise``.
    """

    def __init__(self, hidden_nf: int = 64, emb_nf: int = 8, n_layers: int = 4, noise_dim: int = 0,
                 act: str = "silu") -> None:
        super().__init__()
        self.noise_dim = noise_dim
        in_nf = max(1, noise_dim)
        self.layers = nn.ModuleList(
            GCL(in_nf if i == 0 else hidden_nf, hidden_nf, hidden_nf, edge_dim=1, act=act, residual=i > 0)
            for i in range(n_layers)
        )
        self.fc_emb = nn.Linear(hidden_nf, emb_nf)

    @property
    def random_dim(self) -> int:
        return self.noise_dim

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, noise: Tensor | None = None) -> Tensor:
        if self.noise_dim:
            if noise is None:
                raise ValueError("noise_gnn needs the input noise")
            h = noise
        for layer in self.layers:
            h = layer(h, edge_index, edge_attr)
        return self.fc_emb(h)


class RadialFieldEncoder(nn.Module):
    """``n_layers`` :class:`egnn.nn.RadialFieldLayer` on random initial positions in ``K`` dimensions;
    ``z = x^L``. As the reference's ``GCL_rf``: each message clamped to ``[-100, 100]``, and a ``1e-12`` under
    the square root of the distance keeps gradients finite at coincident points."""

    def __init__(self, K: int = 8, hidden_nf: int = 64, n_layers: int = 4, act: str = "silu") -> None:
        super().__init__()
        self.K = K
        self.layers = nn.ModuleList(
            RadialFieldLayer(hidden_nf, 1, act, clamp=100.0, dist_eps=1e-12) for _ in range(n_layers)
        )

    @property
    def random_dim(self) -> int:
        return self.K

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            raise ValueError("the Radial Field encoder needs its initial positions")
        x = noise
        for layer in self.layers:
            x = layer(x, edge_index, edge_attr)
        return x


class EGNNEncoder(nn.Module):
    """:class:`egnn.nn.EGNN` (``edge_dim = 1``, mean coordinate aggregation) on random initial positions in
    ``K`` dimensions and constant node features; the output positions are the embedding."""

    def __init__(self, K: int = 8, hidden_nf: int = 64, n_layers: int = 4, act: str = "silu",
                 **egnn_kwargs: Any) -> None:
        super().__init__()
        self.K = K
        self.egnn = EGNN(1, hidden_nf, n_layers, edge_dim=1, act=act, residual=True, coord_agg="mean",
                         **egnn_kwargs)

    @property
    def random_dim(self) -> int:
        return self.K

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            raise ValueError("the EGNN encoder needs its initial positions")
        return self.egnn(h, noise, edge_index, edge_attr).pos


class GraphAutoencoder(nn.Module):
    """Encoder + decoder. ``forward(batch)`` samples the random inputs (noise features or initial positions,
    ``N(0, 1)``) itself; pass ``noise`` to fix them (tests, equivariance checks).

    Shapes: ``noise`` ``[N, encoder.random_dim]`` -> :class:`AEOutput`.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    @property
    def random_dim(self) -> int:
        return int(self.encoder.random_dim)

    def sample_noise(self, num_nodes: int, device: torch.device, dtype: torch.dtype,
                     generator: torch.Generator | None = None) -> Tensor | None:
        if not self.random_dim:
            return None
        noise = torch.randn(num_nodes, self.random_dim, generator=generator, dtype=dtype,
                            device=device if generator is None else generator.device)
        return noise.to(device)

    def encode(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.encoder(h, edge_index, edge_attr, noise)

    def forward(self, batch: AEBatch, noise: Tensor | None = None,
                generator: torch.Generator | None = None) -> AEOutput:
        if noise is None:
            noise = self.sample_noise(batch.num_nodes, batch.h.device, batch.h.dtype, generator)
        z = self.encode(batch.h, batch.edge_index, batch.edge_attr, noise)
        return AEOutput(z, self.decoder(z, batch.edge_index))


# --- registry ------------------------------------------------------------------------------------------------
@dataclass
class AEModel:
    """A registered autoencoder.

    Attributes:
        build: ``build(**hparams) -> GraphAutoencoder``.
        label: name in the paper's table.
        hparams: default hyper-parameters (the paper's: 4 layers, 64 hidden, embedding 8, K = 8).
        paper: ``{data set: (BCE, % error, F1)}`` from the paper (arXiv:2102.09844, Section 5.2, graph
            autoencoder results table; test set, best validation epoch).
        quick_lr: learning rate of the ``quick`` presets for this model, if not the preset's own.
    """

    build: Callable[..., GraphAutoencoder]
    label: str
    hparams: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    quick_lr: float | None = None


AE_MODELS: Registry[AEModel] = Registry("AE model")


def _build_gnn(hidden_nf: int = 64, emb_nf: int = 8, n_layers: int = 4, noise_dim: int = 0,
               act: str = "silu") -> GraphAutoencoder:
    return GraphAutoencoder(GNNEncoder(hidden_nf, emb_nf, n_layers, noise_dim, act), WeightedDistanceDecoder(emb_nf))


def _build_rf(K: int = 8, hidden_nf: int = 64, n_layers: int = 4, act: str = "silu") -> GraphAutoencoder:
    return GraphAutoencoder(RadialFieldEncoder(K, hidden_nf, n_layers, act), DistanceDecoder())


def _build_egnn(K: int = 8, hidden_nf: int = 64, n_layers: int = 4, act: str = "silu") -> GraphAutoencoder:
    return GraphAutoencoder(EGNNEncoder(K, hidden_nf, n_layers, act), DistanceDecoder())


# Paper numbers: arXiv:2102.09844 (Satorras, Hoogeboom & Welling, ICML 2021), Section 5.2, graph autoencoder
# table: (BCE, % error, F1) on the Community Small and Erdos-Renyi test sets.
AE_MODELS.add("gnn", AEModel(
    _build_gnn, "GNN", {"hidden_nf": 64, "emb_nf": 8, "n_layers": 4, "noise_dim": 0},
    {"community": (6.75, 1.29, 0.980), "erdos_renyi": (14.15, 4.62, 0.907)}))
AE_MODELS.add("noise_gnn", AEModel(
    _build_gnn, "Noise-GNN", {"hidden_nf": 64, "emb_nf": 8, "n_layers": 4, "noise_dim": 1},
    {"community": (3.32, 0.44, 0.993), "erdos_renyi": (4.56, 1.25, 0.975)}))
AE_MODELS.add("rf", AEModel(
    _build_rf, "Radial Field", {"K": 8, "hidden_nf": 64, "n_layers": 4},
    {"community": (9.22, 1.19, 0.981), "erdos_renyi": (6.78, 1.63, 0.968)}))
AE_MODELS.add("egnn", AEModel(
    _build_egnn, "EGNN", {"K": 8, "hidden_nf": 64, "n_layers": 4},
    {"community": (2.14, 0.06, 0.999), "erdos_renyi": (1.65, 0.11, 0.998)},
    # the quick preset's 2e-3 made the EGNN's training loss NaN in the first epoch on Community Small
    quick_lr=1e-3))


def build_model(name: str, **overrides: Any) -> tuple[GraphAutoencoder, dict[str, Any]]:
    """The registered model ``name`` with its default hyper-parameters updated by ``overrides``."""
    spec = AE_MODELS.get(name)
    hp = {**spec.hparams, **{k: v for k, v in overrides.items() if v is not None}}
    return spec.build(**hp), hp
