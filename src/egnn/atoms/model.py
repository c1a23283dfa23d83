r"""An invariant EGNN for energies (and forces ``F = -dE/dx``) of molecules and materials, with everything needed to
predict stored with it: species map, per-element reference energies, normalisation, cut-off.

The network is the paper's invariant EGNN (as for QM9, `arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_,
Section 5.3): a one-hot species embedding, ``num_layers`` :class:`~egnn.nn.EGCL` layers without coordinate update
(positions enter through :math:`\|x_i - (x_j + s_{ij})\|^2`, with periodic image shifts :math:`s_{ij}`), edge
inference and node attributes, then a readout. ``readout="sum"`` (energies) sums a per-atom head (extensive):

.. math::
    E = \sum_i \big(\sigma\, \epsilon_i + \mu + E^{ref}_{Z_i}\big)

with :math:`E^{ref}` fitted by least squares on the training set's compositions, :math:`\mu` the mean per-atom
residual and :math:`\sigma` its scale (the RMS force component when forces are fitted, else the standard deviation
of the per-atom residual energy). ``readout="mean"`` averages the per-atom head instead. ``readout="mlp"`` is the
paper's QM9 readout for properties that are not sums over atoms (HOMO, LUMO, gap, dipole moment): a node MLP, a sum
over the atoms, then a graph MLP, :math:`y = \sigma\, \mathrm{MLP}_g(\sum_i \mathrm{MLP}_n(h_i)) + \mu` with the
training set's mean and standard deviation (no reference energies). Two readouts build a molecular property from
per-atom terms and the geometry, invariant by construction (as SchNetPack's dipole and spatial-extent outputs):
``readout="dipole"``, the norm of the dipole of learnt charges made neutral per molecule,
:math:`y = \sigma\,\|\sum_i (q_i - \bar q)(x_i - \bar x)\|`; and ``readout="spatial"``, an electronic spatial
extent :math:`y = \sum_i \big((\alpha_{Z_i} + \sigma a_i) \|x_i - x_c\|^2 + \beta_{Z_i} + \sigma b_i\big) + \mu`
about the centre of nuclear charge :math:`x_c = \sum_i Z_i x_i / \sum_i Z_i`, with per-element coefficients
:math:`\alpha, \beta` fitted by least squares on the training set (:func:`fit_statistics`), so the network learns the
correction. On QM9's :math:`\langle R^2 \rangle` this baseline alone has a test MAE of 2.4 bohr^2 about the charge
centre against 15.6 bohr^2 about the centroid (:math:`\alpha_Z` comes out close to :math:`Z` in bohr^2 per
Angstrom^2: each atom's electrons sit near it).

With a cut-off, each message is multiplied by the polynomial envelope :math:`u(d/R)` of DimeNet (Gasteiger et al.,
2020), which goes to zero with its first and second derivatives at :math:`R`, and the edges also carry
:math:`n_{rbf}` sine (Bessel) radial features :math:`\sin(k \pi d / R) / d`; so energy and forces are continuous
when atoms cross the cut-off.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from egnn.nn.egcl import EGCL, make_activation
from egnn.nn.vector import VectorEGCL
from egnn.ops.scatter import scatter_sum

ELEMENTS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt "
    "Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc "
    "Lv Ts Og"
).split()

MODEL_KIND = "egnn-atoms"
# atoms + edges in one batch of :meth:`AtomsModel.predict` and of `egnn fit`'s evaluations (memory grows with them,
# not with the frames; benchmarks/bench_fit_memory.py)
PREDICT_BUDGET = 2**14
READOUTS = ("sum", "mean", "mlp", "dipole", "spatial")
# per-atom head outputs of each readout ("mlp": hidden_channels features for the graph head)
_HEAD_OUT = {"sum": 1, "mean": 1, "dipole": 1, "spatial": 2}


def element_name(z: int) -> str:
    """The chemical symbol of atomic number ``z`` (``"Z=<z>"`` outside the periodic table)."""
    return ELEMENTS[z] if 0 < z < len(ELEMENTS) else f"Z={z}"


def polynomial_envelope(x: Tensor, p: int = 6) -> Tensor:
    r"""DimeNet's envelope :math:`u(x) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2}`
    for :math:`x < 1`, zero beyond; :math:`u(1) = u'(1) = u''(1) = 0`."""
    xp = x.pow(p)
    u = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
    return torch.where(x < 1, u, torch.zeros_like(u))


def bessel_basis(d: Tensor, cutoff: float, n: int) -> Tensor:
    r""":math:`\sqrt{2/R}\,\sin(k \pi d / R) / d` for :math:`k = 1..n`, shape ``[E, n]``."""
    k = torch.arange(1, n + 1, device=d.device, dtype=d.dtype)
    return math.sqrt(2.0 / cutoff) * torch.sin(k * math.pi * d.unsqueeze(-1) / cutoff) / d.unsqueeze(-1)


class EnvelopeEGCL(EGCL):
    """:class:`~egnn.nn.EGCL` whose messages :math:`m_{ij}` are multiplied by a per-edge weight.

    The weight travels as the last column of ``edge_attr`` (so it is chunked with the edges); the other columns are
    the layer's ordinary edge attributes (``edge_dim`` of them). Used through ``propagate``.
    """

    def _messages(self, h, pos, src, dst, edge_attr, proj, *args, **kwargs):  # type: ignore[override]
        weight = edge_attr[:, -1:]
        attr = edge_attr[:, :-1] if edge_attr.shape[1] > 1 else None
        m, trans = super()._messages(h, pos, src, dst, attr, proj, *args, **kwargs)
        return m * weight, None if trans is None else trans * weight  # both vanish smoothly at the cut-off


@dataclass
class AtomsArchitecture:
    """The architecture of an :class:`AtomsModel`: what a user chooses (``egnn fit``'s model flags); the rest of
    :class:`AtomsModelConfig` comes from the training data.

    Attributes:
        cutoff: neighbour radius in Angstrom (``None``: complete graphs, non-periodic data only).
        images: periodic images beyond the minimum image.
        hidden_channels, num_layers, attention, node_attr, act: as in :class:`~egnn.nn.EGNN`.
        n_rbf: sine radial features per edge (with a cut-off).
        envelope_exponent: ``p`` of :func:`polynomial_envelope`.
        readout: ``"sum"`` (extensive, energies) or ``"mean"`` of the per-atom outputs, or ``"mlp"`` (node MLP,
            sum, graph MLP: the paper's QM9 readout, for targets that are not sums over atoms), ``"dipole"`` or
            ``"spatial"`` (see the module docstring).
        vector_channels: ``K > 0``: :class:`~egnn.nn.VectorEGCL` layers with ``K`` equivariant vector channels per
            atom, whose inner products with the bonds and with each other reach the invariant features (the
            directional model); 0: :class:`~egnn.nn.EGCL` layers that see distances only (the invariant model).
        update_coords: invariant model only: the layers move the positions as EGNN's eq. (4) (normalised, tanh
            bounded), and later layers see the distances between the moved positions.
        vector_scale: ``vector_scale`` of :class:`~egnn.nn.VectorEGCL`.
    """

    cutoff: float | None = 5.0
    images: bool = True
    hidden_channels: int = 64
    num_layers: int = 4
    n_rbf: int = 8
    envelope_exponent: int = 6
    attention: bool = True
    node_attr: bool = True
    act: str = "silu"
    readout: str = "sum"
    vector_channels: int = 0
    update_coords: bool = False
    vector_scale: float = 0.1

    def architecture(self) -> dict[str, Any]:
        """The :class:`AtomsArchitecture` fields of this object."""
        return {f.name: getattr(self, f.name) for f in fields(AtomsArchitecture)}


# names of the fields before they followed EGNN's (read from old checkpoints)
_OLD_NAMES = {"hidden_nf": "hidden_channels", "n_layers": "num_layers"}
# fields that checkpoints written before they existed lack, with the value those checkpoints were trained with
_ADDED_LATER = {"vector_channels": 0, "update_coords": False}


@dataclass
class AtomsModelConfig(AtomsArchitecture):
    """Architecture (:class:`AtomsArchitecture`) and data statistics of an :class:`AtomsModel` (stored as JSON with
    its weights).

    Attributes:
        species: atomic numbers of the training set (sorted); the one-hot embedding follows this order.
        ref_energies: per-species reference energy (same order as ``species``); readout ``"spatial"``: the
            per-species constant :math:`\\beta_Z`.
        ref_spatial: readout ``"spatial"`` only: the per-species coefficient :math:`\\alpha_Z` of
            :math:`\\|x_i - x_c\\|^2` (empty: zeros).
        scale, shift: :math:`\\sigma`, :math:`\\mu` of the module docstring.
        target: key of the graph-level target; ``forces``: key of the forces (or ``None``).
    """

    species: list[int] = field(default_factory=list)
    ref_energies: list[float] = field(default_factory=list)
    ref_spatial: list[float] = field(default_factory=list)
    scale: float = 1.0
    shift: float = 0.0
    target: str = "energy"
    forces: str | None = None

    def __post_init__(self) -> None:
        self.species = [int(z) for z in self.species]
        s = self.species
        if not s or sorted(set(s)) != s or s[0] < 1 or s[-1] > 118:
            raise ValueError(f"species must be sorted distinct atomic numbers in 1..118, got {self.species}")
        if not self.ref_energies:
            self.ref_energies = [0.0] * len(self.species)
        if len(self.ref_energies) != len(self.species):
            raise ValueError(f"{len(self.ref_energies)} reference energies for {len(self.species)} species")
        if self.cutoff is not None and not self.cutoff > 0:
            raise ValueError(f"cutoff must be positive or None, got {self.cutoff}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        if self.readout not in ("sum", "spatial") and any(self.ref_energies):
            raise ValueError("reference energies need the extensive readout 'sum' (or 'spatial')")
        self.ref_spatial = [float(v) for v in self.ref_spatial] or [0.0] * len(self.species)
        if len(self.ref_spatial) != len(self.species):
            raise ValueError(f"{len(self.ref_spatial)} spatial coefficients for {len(self.species)} species")
        if self.readout != "spatial" and any(self.ref_spatial):
            raise ValueError("spatial coefficients need the readout 'spatial'")
        if isinstance(self.vector_channels, bool) or not isinstance(self.vector_channels, int) \
                or self.vector_channels < 0:
            raise ValueError(f"vector_channels must be an integer >= 0, got {self.vector_channels!r}")
        if self.vector_channels and self.update_coords:
            raise ValueError("update_coords is an option of the invariant model (vector_channels=0)")
        if not (math.isfinite(self.vector_scale) and self.vector_scale > 0):
            raise ValueError(f"vector_scale must be positive and finite, got {self.vector_scale}")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.shift)):
            raise ValueError(f"scale must be positive and finite, shift finite; got {self.scale}, {self.shift}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready; stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AtomsModelConfig:
        """The config of a checkpoint's JSON (also with the old field names ``hidden_nf``, ``n_layers``)."""
        d = {**_ADDED_LATER, **{_OLD_NAMES.get(k, k): v for k, v in d.items()}}
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown AtomsModelConfig field(s): {unknown}")
        return cls(**d)


class AtomsModel(nn.Module):
    """Energy model for atomic structures; see the module docstring.

    Args:
        config: an :class:`AtomsModelConfig`.

    Shapes (:meth:`forward`):
        - **input:** ``z`` ``[N]`` atomic numbers, ``pos`` ``[N, 3]``, ``edge_index`` ``[2, E]``, ``edge_shift``
          ``[E, 3]`` (or ``None``), ``batch`` ``[N]`` (sorted; ``None`` for one structure)
        - **output:** energy per structure ``[B]``
    """

    def __init__(self, config: AtomsModelConfig) -> None:
        super().__init__()
        self.config = c = config
        s = len(c.species)
        table = torch.full((119,), -1, dtype=torch.long)
        table[c.species] = torch.arange(s)
        self.register_buffer("species_table", table, persistent=False)
        self.register_buffer("ref_energies", torch.tensor(c.ref_energies, dtype=torch.float64), persistent=False)
        self.register_buffer("ref_spatial", torch.tensor(c.ref_spatial, dtype=torch.float64), persistent=False)
        self.n_rbf = c.n_rbf if c.cutoff is not None else 0
        self.embedding = nn.Linear(s, c.hidden_channels)
        node_attr_dim = s if c.node_attr else 0
        self.layers: nn.ModuleList
        if c.vector_channels:
            self.layers = nn.ModuleList(
                VectorEGCL(c.hidden_channels, c.hidden_channels, c.vector_channels, edge_dim=self.n_rbf,
                           node_attr_dim=node_attr_dim, act=c.act, attention=c.attention, vector_scale=c.vector_scale)
                for _ in range(c.num_layers))
        else:
            self.layers = nn.ModuleList(
                EnvelopeEGCL(c.hidden_channels, c.hidden_channels, c.hidden_channels, edge_dim=self.n_rbf,
                             node_attr_dim=node_attr_dim, act=c.act, residual=True, attention=c.attention,
                             update_coords=c.update_coords, normalize=True, tanh=True, coords_range=1.0,
                             coord_agg="sum")
                for _ in range(c.num_layers))
        self.act = make_activation(c.act)
        # per-atom head: to one number per atom, or (readout "mlp") to features summed and fed to the graph head
        self.head = nn.ModuleList([nn.Linear(c.hidden_channels, c.hidden_channels),
                                   nn.Linear(c.hidden_channels, _HEAD_OUT.get(c.readout, c.hidden_channels))])
        width = c.hidden_channels
        self.graph_head = (nn.ModuleList([nn.Linear(width, width), nn.Linear(width, 1)])
                           if c.readout == "mlp" else None)

    @property
    def cutoff(self) -> float | None:
        """The neighbour radius in Angstrom (``None``: complete graphs)."""
        return self.config.cutoff

    @property
    def species(self) -> list[int]:
        """The atomic numbers the model was trained on, in the order of its one-hot encoding."""
        return list(self.config.species)

    def extra_repr(self) -> str:
        c = self.config
        return (f"species={[element_name(z) for z in c.species]}, cutoff={c.cutoff}, target={c.target!r}, "
                f"forces={c.forces!r}")

    # --- inputs -----------------------------------------------------------------------------------------------
    def species_index(self, z: Tensor) -> Tensor:
        """Index of each atomic number in ``species``; ``ValueError`` for elements not trained on."""
        z = z.long()
        if z.numel() and (int(z.min()) < 1 or int(z.max()) > 118):
            raise ValueError(f"atomic numbers must be in 1..118, got {int(z.min())}..{int(z.max())}")
        idx = self.species_table[z]
        if bool((idx < 0).any()):
            unseen = sorted({int(v) for v in z[idx < 0].tolist()})
            raise ValueError(
                f"element(s) {', '.join(f'{element_name(v)} (Z={v})' for v in unseen)} not in the training set "
                f"(trained on: {', '.join(element_name(v) for v in self.config.species)})")
        return idx

    def edge_features(self, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None) -> Tensor:
        """``[E, n_rbf + 1]``: radial features and the envelope weight (1 without a cut-off)."""
        src, dst = edge_index[0], edge_index[1]
        vec = pos.index_select(0, dst) - pos.index_select(0, src)
        if edge_shift is not None:
            vec = vec - edge_shift
        c = self.config
        if c.cutoff is None:
            return pos.new_ones(vec.shape[0], 1)
        d = torch.sqrt((vec * vec).sum(-1).clamp_min(1e-12))
        weight = polynomial_envelope(d / c.cutoff, c.envelope_exponent).unsqueeze(-1)
        return torch.cat([bessel_basis(d, c.cutoff, self.n_rbf), weight], dim=-1)

    # --- forward ----------------------------------------------------------------------------------------------
    def _node_outputs(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None
                      ) -> tuple[Tensor, Tensor]:
        """The per-atom head's output ``[N, 1]`` (``[N, hidden_channels]`` for readout ``"mlp"``) and species
        indices."""
        idx = self.species_index(z)
        return self.node_outputs_of_index(idx, pos, edge_index, edge_shift), idx

    def node_outputs_of_index(self, idx: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None
                              ) -> Tensor:
        """The per-atom head's output from species indices (positions in ``species``, already checked): no check
        and no data-dependent branch, so the call traces into one graph with symbolic atom and edge counts."""
        c = self.config
        h0 = nn.functional.one_hot(idx, len(c.species)).to(pos.dtype)
        edge_index = edge_index.long()
        attr = self.edge_features(pos, edge_index, edge_shift)
        x = self.embedding(h0)
        node_attr = h0 if c.node_attr else None
        if c.vector_channels:
            weight = attr[:, -1:]
            rbf = attr[:, :-1] if self.n_rbf else None
            vec = None
            for layer in self.layers:
                x, vec = layer.propagate(x, vec, pos, edge_index, rbf, weight, node_attr, edge_shift)
        else:
            for layer in self.layers:
                x, delta, _ = layer.propagate(x, pos, edge_index, attr, node_attr, None, edge_shift)
                if delta is not None:  # update_coords: the moved positions (the shifts are lattice vectors)
                    pos = pos + delta
        return self.head[1](self.act(self.head[0](x)))

    def atom_energies(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None = None) -> Tensor:
        """Per-atom contributions :math:`\\sigma \\epsilon_i + \\mu + E^{ref}_{Z_i}`, shape ``[N]`` (readouts
        ``"sum"`` and ``"mean"``; the others have no per-atom contributions)."""
        c = self.config
        if c.readout not in ("sum", "mean"):
            raise ValueError(f"readout {c.readout!r} has no per-atom contributions")
        return self.atom_energies_of_index(self.species_index(z), pos, edge_index, edge_shift)

    def atom_energies_of_index(self, idx: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None
                               ) -> Tensor:
        """:meth:`atom_energies` from species indices (see :meth:`node_outputs_of_index`): what
        :mod:`egnn.compiled` traces."""
        c = self.config
        out = self.node_outputs_of_index(idx, pos, edge_index, edge_shift)
        return c.scale * out.squeeze(-1) + c.shift + self.ref_energies.to(pos.dtype)[idx]

    def forward(
        self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None = None,
        batch: Tensor | None = None, num_graphs: int | None = None,
    ) -> Tensor:
        """The predicted target of each structure ``[B]`` from atomic numbers ``z`` ``[N]``, positions ``pos``
        ``[N, 3]`` and the edges (``edge_shift``: periodic image offsets; ``batch``: the structure of each atom)."""
        if batch is None:
            batch = torch.zeros(z.shape[0], dtype=torch.long, device=pos.device)
            num_graphs = 1
        elif num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        c = self.config
        if self.graph_head is not None:
            out, _ = self._node_outputs(z, pos, edge_index, edge_shift)
            pooled = scatter_sum(out, batch, num_graphs)
            y = self.graph_head[1](self.act(self.graph_head[0](pooled))).squeeze(-1)
            return c.scale * y + c.shift
        if c.readout in ("dipole", "spatial"):
            return self._geometric_readout(z, pos, edge_index, edge_shift, batch, num_graphs)
        e = self.atom_energies(z, pos, edge_index, edge_shift)
        total = scatter_sum(e, batch, num_graphs)
        if c.readout == "mean":
            count = scatter_sum(torch.ones_like(e), batch, num_graphs)
            total = total / count.clamp_min(1)
        return total

    def _geometric_readout(self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None,
                           batch: Tensor, num_graphs: int) -> Tensor:
        """Readouts ``"dipole"`` and ``"spatial"``: per-atom terms combined with positions relative to a centre of
        the molecule (complete molecules only: a periodic cell has no centre)."""
        c = self.config
        out, idx = self._node_outputs(z, pos, edge_index, edge_shift)
        count = scatter_sum(torch.ones_like(pos[:, 0]), batch, num_graphs).clamp_min(1)
        if c.readout == "dipole":  # the dipole of neutral charges does not depend on the centre: the centroid
            rel = pos - (scatter_sum(pos, batch, num_graphs) / count.unsqueeze(-1)).index_select(0, batch)
            q = out[:, 0]
            q = q - (scatter_sum(q, batch, num_graphs) / count).index_select(0, batch)  # neutral molecules
            mu = scatter_sum(q.unsqueeze(-1) * rel, batch, num_graphs)
            return c.scale * torch.sqrt((mu * mu).sum(-1) + 1e-12) + c.shift
        r2 = (pos - charge_centre(z, pos, batch, num_graphs).index_select(0, batch)).square().sum(-1)
        alpha = self.ref_spatial.to(pos.dtype)[idx]
        beta = self.ref_energies.to(pos.dtype)[idx]
        terms = (alpha + c.scale * out[:, 0]) * r2 + beta + c.scale * out[:, 1]
        return scatter_sum(terms, batch, num_graphs) + c.shift

    def energy_and_forces(
        self, z: Tensor, pos: Tensor, edge_index: Tensor, edge_shift: Tensor | None = None,
        batch: Tensor | None = None, num_graphs: int | None = None, forces: bool = True, create_graph: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Energies ``[B]`` and forces ``-dE/dpos`` ``[N, 3]`` (autograd; ``create_graph`` to train on them)."""
        if not forces:
            return self(z, pos, edge_index, edge_shift, batch, num_graphs), None
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            energy = self(z, pos, edge_index, edge_shift, batch, num_graphs)
            (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=create_graph, allow_unused=True)
        if grad is None:  # no edges: the energy does not depend on the positions
            grad = torch.zeros_like(pos)
        return (energy if create_graph else energy.detach()), -grad

    def predict_batch(self, b: Any, forces: bool = True, create_graph: bool = False) -> tuple[Tensor, Tensor | None]:
        """:meth:`energy_and_forces` of an :class:`~egnn.atoms.graphs.AtomsBatch`."""
        return self.energy_and_forces(b.z, b.pos, b.edge_index, b.edge_shift, b.batch, b.num_graphs, forces,
                                      create_graph)

    @torch.no_grad()
    def predict(self, data: Any, forces: bool | None = None, batch_size: int = 64,
                progress: bool = False, budget: int | None = PREDICT_BUDGET) -> dict[str, np.ndarray]:
        """Predict an :class:`~egnn.atoms.data.AtomsData` (or :class:`~egnn.atoms.graphs.AtomsGraphs`).

        Batches hold at most ``batch_size`` frames and (a lone frame excepted) at most ``budget`` atoms + edges
        (``None``: no budget), so memory depends on neither the number nor the size of the frames.

        Returns:
            ``{"energy": [F], "forces": [N, 3]}`` (float64 numpy; ``forces`` when ``forces`` is true, by default
            when the model was trained on forces).
        """
        from tqdm.auto import tqdm

        from egnn.atoms.graphs import AtomsGraphs

        forces = self.config.forces is not None if forces is None else forces
        param = next(self.parameters())
        graphs = data if isinstance(data, AtomsGraphs) else None
        if graphs is None:
            check_species(data, self.config.species)
            graphs = AtomsGraphs(data, self.config.cutoff, self.config.images, dtype=param.dtype)
        was = self.training
        self.eval()
        energies, forces_out = [], []
        from egnn.ops.batch import budget_starts

        n = len(graphs)
        starts = budget_starts(graphs.sizes(), batch_size, budget)
        for start, end in tqdm(list(zip(starts, [*starts[1:], n])), desc="predict", disable=not progress,
                               leave=False):
            b = graphs.get(torch.arange(start, end), param.device)
            e, f = self.predict_batch(b, forces)
            energies.append(e.double().cpu().numpy())
            if f is not None:
                forces_out.append(f.double().cpu().numpy())
        self.train(was)
        out = {"energy": np.concatenate(energies)}
        if forces:
            out["forces"] = np.concatenate(forces_out)
        return out


def charge_centre(z: Tensor, pos: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Centre of nuclear charge of each structure, ``[B, 3]``."""
    w = z.to(pos.dtype)
    total = scatter_sum(w, batch, num_graphs).clamp_min(1e-12)
    return scatter_sum(w.unsqueeze(-1) * pos, batch, num_graphs) / total.unsqueeze(-1)


def check_species(data: Any, species: list[int]) -> None:
    """``ValueError`` naming the file, frame and key ``numbers`` of the first atom whose element is not in
    ``species``."""
    known = np.zeros(119, dtype=bool)
    known[species] = True
    bad = ~known[np.clip(data.z, 0, 118)]
    if bad.any():
        atom = int(np.flatnonzero(bad)[0])
        frame = int(np.searchsorted(data.offsets, atom, side="right") - 1)
        z = int(data.z[atom])
        raise ValueError(f"{data.source}: frame {frame}: key 'numbers': element {element_name(z)} (Z={z}) is not in "
                         f"the training set (trained on: {', '.join(element_name(v) for v in species)})")


# ------------------------------------------------------------------------------------------ data statistics


def composition(data: Any, species: list[int]) -> np.ndarray:
    """Atom counts per frame and species ``[F, S]``."""
    index = np.full(119, -1, dtype=np.int64)
    index[species] = np.arange(len(species))
    frame = np.repeat(np.arange(len(data)), data.n_atoms)
    counts = np.zeros((len(data), len(species)))
    np.add.at(counts, (frame, index[data.z]), 1.0)
    return counts


def fit_statistics(data: Any, species: list[int] | None = None, reference: bool = True,
                   readout: str = "sum") -> dict[str, Any]:
    """Reference energies (least squares on the compositions), shift and scale from a training set.

    ``data`` is an :class:`~egnn.atoms.data.AtomsData` or anything with ``chunks()`` yielding them (e.g.
    :class:`~egnn.atoms.loader.FrameRows` of a store): one streaming pass keeps only per-frame element counts and
    targets in memory. Readout ``"spatial"`` with ``reference``: the per-species coefficients
    :math:`\\alpha_Z, \\beta_Z` of :math:`\\sum_i (\\alpha_{Z_i} \\|x_i - x_c\\|^2 + \\beta_{Z_i})` by least
    squares (``ref_spatial``, ``ref_energies``), shift 0 and the scale of the residual per structure.

    Returns:
        ``{"species", "ref_energies", "shift", "scale"}`` (and ``"ref_spatial"`` for readout ``"spatial"``) for
        :class:`AtomsModelConfig`.
    """
    streamed = hasattr(data, "chunks")
    if (data.energy_key if streamed else data.energy) is None:
        raise ValueError(f"{data.source}: no target values to fit the normalisation on")
    chunks = data.chunks() if streamed else [data]
    candidates = species or (data.base.elements() if hasattr(data, "base") else data.elements())
    parts = [_frame_terms(c, candidates, readout == "spatial") for c in chunks]
    counts = np.concatenate([p["counts"] for p in parts])
    if species is None:  # the elements present in this set, in the one-hot order
        keep = counts.sum(0) > 0
        species, counts = [z for z, k in zip(candidates, keep) if k], counts[:, keep]
    n = np.concatenate([p["n"] for p in parts]).astype(np.float64)
    energy = np.concatenate([p["energy"] for p in parts]).astype(np.float64)
    if readout == "spatial":
        spread = np.concatenate([p["spread"] for p in parts])[:, [candidates.index(z) for z in species]]
        return _spatial_statistics(species, counts, spread, energy, reference)
    if reference and readout == "sum":
        ref, *_ = np.linalg.lstsq(counts, energy, rcond=None)
    else:
        ref = np.zeros(len(species))
    per_atom = (energy - counts @ ref) / n if readout == "sum" else energy - counts @ ref
    shift = 0.0 if readout == "dipole" else float(per_atom.mean())  # a dipole norm has no offset
    f_count = sum(p["f_count"] for p in parts)
    if f_count and readout == "sum":  # forces set the energy scale of an extensive model
        scale = float(np.sqrt(sum(p["f_sq"] for p in parts) / f_count))
    else:
        scale = float(per_atom.std())
    if not (math.isfinite(scale) and scale > 1e-12):
        scale = 1.0
    return {"species": [int(s) for s in species], "ref_energies": [float(r) for r in ref], "shift": shift,
            "scale": scale}


def _frame_terms(data: Any, species: list[int], spatial: bool) -> dict[str, Any]:
    """Per-frame element counts ``[F, S]``, atom counts and targets of one chunk, the sum of squared force
    components, and (``spatial``) per-frame, per-species sums of :math:`\\|x_i - x_c\\|^2` ``[F, S]``."""
    out: dict[str, Any] = {"counts": composition(data, species), "n": data.n_atoms, "energy": data.energy,
                           "f_sq": 0.0 if data.forces is None else float(np.square(data.forces).sum()),
                           "f_count": 0 if data.forces is None else int(data.forces.size)}
    if spatial:
        f = len(data)
        frame = np.repeat(np.arange(f), data.n_atoms)
        w = data.z.astype(np.float64)
        total = np.maximum(np.bincount(frame, w, f), 1e-12)
        centre = np.stack([np.bincount(frame, w * data.pos[:, k], f) for k in range(3)], 1) / total[:, None]
        r2 = ((data.pos - centre[frame]) ** 2).sum(1)
        index = np.full(119, -1, dtype=np.int64)
        index[species] = np.arange(len(species))
        spread = np.zeros((f, len(species)))
        np.add.at(spread, (frame, index[data.z]), r2)
        out["spread"] = spread
    return out


def _spatial_statistics(species: list[int], counts: np.ndarray, spread: np.ndarray, value: np.ndarray,
                        reference: bool) -> dict[str, Any]:
    if reference:
        coef, *_ = np.linalg.lstsq(np.concatenate([spread, counts], 1), value, rcond=None)
        alpha, beta = coef[: len(species)], coef[len(species):]
        shift = 0.0
    else:
        alpha = beta = np.zeros(len(species))
        shift = float(value.mean())
    residual = value - spread @ alpha - counts @ beta - shift
    scale = float(residual.std())
    if not (math.isfinite(scale) and scale > 1e-12):
        scale = 1.0
    return {"species": [int(s) for s in species], "ref_energies": [float(v) for v in beta],
            "ref_spatial": [float(v) for v in alpha], "shift": shift, "scale": scale}


# ---------------------------------------------------------------------------------------------- persistence


def save_model(model: AtomsModel, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write a stand-alone checkpoint (``path.safetensors`` + ``path.json``) readable by :func:`load_model`."""
    from egnn.checkpoint import save_checkpoint

    return save_checkpoint(path, {"model": model.state_dict()},
                           {**(meta or {}), "kind": MODEL_KIND, "model": model.config.to_dict()})


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder means its ``best`` checkpoint; ``x.json`` / ``x.safetensors`` mean ``x``."""
    p = Path(path)
    if p.is_dir():
        return p / "best"
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


def load_model(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> AtomsModel:
    """The trained :class:`AtomsModel` of a checkpoint (a run folder means its ``best``), in eval mode.

    The module holds the species map, reference energies, normalisation and cut-off, so it predicts from atomic
    numbers and positions alone (:meth:`AtomsModel.predict`, :class:`egnn.ase.EGNNCalculator`).

    Raises:
        CheckpointError: missing, corrupt, not an atoms model, shapes that do not match its config (checked from
            the header before any tensor is read), or non-finite weights.
    """
    from egnn.checkpoint import (
        CheckpointError,
        check_state_shapes,
        load_checkpoint,
        load_state_dict_strict,
        read_checkpoint_info,
    )

    ckpt = resolve_checkpoint(path)
    info = read_checkpoint_info(ckpt)
    meta = info.meta
    if meta.get("kind") != MODEL_KIND or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{ckpt} is not an egnn atoms model (kind={json.dumps(meta.get('kind'))})")
    try:
        config = AtomsModelConfig.from_dict(meta["model"])
        with torch.device("meta"):
            skeleton = AtomsModel(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{ckpt}: invalid model config: {err}") from None
    check_state_shapes(skeleton.state_dict(), info.state_shapes("model"), what=str(info.path))
    del skeleton
    tree, meta = load_checkpoint(ckpt, map_location="cpu")
    model = AtomsModel(config)
    state = tree.get("model") if isinstance(tree, dict) else None
    load_state_dict_strict(model, state, what=str(info.path))
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{ckpt} holds non-finite weights ({', '.join(bad[:3])})")
    if dtype is not None:
        model = model.to(dtype)
    model.meta = meta  # type: ignore[attr-defined]
    return model.to(device).eval()
