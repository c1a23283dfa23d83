"""N-body models by name: each entry builds a module from hyper-parameters and predicts the target positions
from an :class:`~egnn.experiments.nbody.data.NBodyBatch`. Baselines register here too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from egnn.experiments.nbody.data import NBodyBatch
from egnn.experiments.registry import Registry
from egnn.nn import EGNN


@dataclass
class NBodyModel:
    """A registered N-body model.

    Attributes:
        build: ``build(**hparams) -> nn.Module``.
        predict: ``predict(module, batch) -> positions [B*M, n]``.
        hparams: default hyper-parameters (the paper's).
        lr: the paper's learning rate for this model.
        paper_mse: test MSE in the paper's Table 2 (arXiv 2102.09844), or ``None``.
    """

    build: Callable[..., nn.Module]
    predict: Callable[[nn.Module, NBodyBatch], Tensor]
    hparams: dict[str, Any] = field(default_factory=dict)
    lr: float = 5e-4
    paper_mse: float | None = None


NBODY_MODELS: Registry[NBodyModel] = Registry("N-body model")


def _build_egnn(hidden_nf: int = 64, n_layers: int = 4, **opts: Any) -> nn.Module:
    # the paper's N-body EGNN: velocity layers (eq. 7), |v| in, [q_i q_j, r_ij] edge attributes
    return EGNN(1, hidden_nf, n_layers, edge_dim=2, velocity=True, **opts)


def _predict_egnn(model: nn.Module, b: NBodyBatch) -> Tensor:
    return model(b.h, b.pos, b.edge_index, b.edge_attr, b.vel).pos


NBODY_MODELS.add(
    "egnn",
    NBodyModel(
        build=_build_egnn,
        predict=_predict_egnn,
        hparams={"hidden_nf": 64, "n_layers": 4, "act": "silu", "residual": True, "coord_agg": "mean"},
        lr=5e-4,
        paper_mse=0.0071,
    ),
)

# baselines register themselves into NBODY_MODELS (kept in their own module; e3nn is imported lazily)
from egnn.experiments.nbody import baselines  # noqa: E402, F401
