"""N-body models by name: each entry builds a module from hyper-parameters and predicts the target positions
from an :class:`~egnn.experiments.nbody.data.NBodyBatch`.

The registry imports the model modules (the baselines live in :mod:`egnn.experiments.nbody.baselines`), never
the other way round; e3nn is imported only when TFN or the SE(3)-Transformer is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from egnn.experiments.nbody.baselines import (
    GNNBaseline,
    LinearDynamics,
    RadialField,
    SE3Transformer,
    TensorFieldNetwork,
)
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


def _predict_linear(model: nn.Module, b: NBodyBatch) -> Tensor:
    return model(b.pos, b.vel)


def _predict_gnn(model: nn.Module, b: NBodyBatch) -> Tensor:
    return model(b.pos, b.vel, b.edge_index, b.edge_attr[:, :1])  # edge attribute q_i q_j only


def _predict_rf(model: nn.Module, b: NBodyBatch) -> Tensor:
    return model(b.pos, b.vel, b.h, b.edge_index, b.edge_attr)


def _predict_e3nn(model: nn.Module, b: NBodyBatch) -> Tensor:
    return model(b.pos, b.vel, b.charges, b.edge_index)


# The baselines. paper_mse: arXiv:2102.09844, Table 2. lr: reference README (vgsatorras/egnn) N-body commands.
# the linear model's lr is the reference's argparse default (its README gives none)
NBODY_MODELS.add("linear", NBodyModel(build=LinearDynamics, predict=_predict_linear, hparams={}, lr=5e-4,
                                      paper_mse=0.0819))
NBODY_MODELS.add("gnn", NBodyModel(build=GNNBaseline, predict=_predict_gnn, hparams={"hidden_nf": 64, "n_layers": 4},
                                   lr=1e-3, paper_mse=0.0107))
NBODY_MODELS.add("rf", NBodyModel(build=RadialField, predict=_predict_rf, hparams={"hidden_nf": 64, "n_layers": 4},
                                  lr=2e-4, paper_mse=0.0104))
NBODY_MODELS.add("tfn", NBodyModel(build=TensorFieldNetwork, predict=_predict_e3nn,
                                   hparams={"hidden_nf": 32, "n_layers": 4, "num_degrees": 2}, lr=1e-3,
                                   paper_mse=0.0155))
NBODY_MODELS.add("se3_transformer", NBodyModel(build=SE3Transformer, predict=_predict_e3nn,
                                               hparams={"hidden_nf": 64, "n_layers": 4, "num_degrees": 3}, lr=5e-3,
                                               paper_mse=0.0244))
