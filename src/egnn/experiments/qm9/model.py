"""The paper's QM9 model: an invariant EGNN with sum pooling and a graph MLP predicting one property.

Satorras, Hoogeboom & Welling, "E(n) Equivariant Graph Neural Networks", ICML 2021,
`arXiv:2102.09844 <https://arxiv.org/abs/2102.09844>`_, Section 5.3 and Appendix C.3:

* node input ``h_i^0 = onehot(Z_i) (x) [1, Z_i/9, (Z_i/9)^2]`` (15 features,
  :func:`~egnn.experiments.qm9.data.node_features`), embedded by a linear map to 128 features;
* 7 EGCL layers (eq. 3-6) with hidden size 128, SiLU, edge inference (``attention``), residual feature updates
  and **no coordinate update** (the property is E(3)-invariant, so positions enter only through
  ``||x_i - x_j||^2``); every layer also receives ``h^0`` as node attributes;
* fully connected graph within each molecule, no self loops;
* node decoder ``Linear -> SiLU -> Linear`` (128 -> 128), sum over the atoms of each molecule, graph decoder
  ``Linear -> SiLU -> Linear`` (128 -> 1).

The layout matches the reference implementation (``vgsatorras/egnn``, ``qm9/models.py``: ``embedding``,
``E_GCL_mask`` layers, ``node_dec``, masked sum, ``graph_dec``). Differences: we batch molecules without
padding (no node/edge masks are needed, the result is the same); and the reference *script*
``main_qm9.py`` defaults ``--node_attr`` to 0 (its README commands do not set it) although its ``EGNN`` class
defaults to ``node_attr=1``; we follow the class default (``node_attr=True``), selectable in the hyper-parameters.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from egnn.nn import EGNN

N_NODE_FEATURES = 15  # 5 species x 3 powers of Z/9

# The paper's QM9 hyper-parameters (arXiv:2102.09844 Appendix C.3; reference main_qm9.py defaults nf=128,
# n_layers=7, attention=1).
PAPER_HPARAMS: dict[str, Any] = {
    "hidden_nf": 128,
    "n_layers": 7,
    "attention": True,
    "node_attr": True,
    "act": "silu",
}


def build_model(
    hidden_nf: int = 128,
    n_layers: int = 7,
    attention: bool = True,
    node_attr: bool = True,
    act: str = "silu",
    **opts: Any,
) -> EGNN:
    """The QM9 EGNN: invariant layers, node head, sum readout, graph head to one scalar.

    Args:
        hidden_nf: width of the embedding, of every layer and of both heads (paper: 128).
        n_layers: number of EGCL layers (paper: 7).
        attention: edge inference ``e_ij = sigmoid(Linear(m_ij))`` (paper: on).
        node_attr: feed the 15 input features to every layer's node MLP (reference ``node_attr=1``).
        act: activation (paper: SiLU).
        opts: further :class:`~egnn.nn.EGNN` options (``fast``, ``chunk_size``, ``checkpoint`` ...).

    Returns:
        An :class:`~egnn.nn.EGNN` whose ``graph`` output has shape ``[B, 1]``.
    """
    return EGNN(
        N_NODE_FEATURES,
        hidden_nf,
        n_layers,
        update_coords=False,
        attention=attention,
        node_attr=node_attr,
        act=act,
        residual=True,
        out_channels=hidden_nf,
        graph_out_channels=1,
        readout="sum",
        **opts,
    )


def predict(
    model: EGNN, h: Tensor, pos: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int
) -> Tensor:
    """One (normalised) prediction per molecule.

    Shapes:
        - **input:** ``h`` ``[N, 15]``, ``pos`` ``[N, 3]``, ``edge_index`` ``[2, E]`` (within molecules),
          ``batch`` ``[N]`` (sorted molecule index of each atom)
        - **output:** ``[num_graphs]``
    """
    out = model(h, pos, edge_index, batch=batch, num_graphs=num_graphs)
    return out.graph.squeeze(-1)
