"""The paper's QM9 node features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from egnn.experiments.qm9.data.constants import SPECIES

if TYPE_CHECKING:  # torch is only needed by node_features and imported there
    import torch


def node_features(
    z: torch.Tensor | np.ndarray | Sequence[int], charge_scale: float = 9, max_power: int = 2
) -> torch.Tensor:
    """Paper node features: one-hot(H, C, N, O, F) times [1, Z/9, (Z/9)^2] -> float32 [..., 15].

    Column ``3 * s + p`` holds ``onehot_s * (Z / charge_scale) ** p`` for species s in (H, C, N, O, F) and
    power p in 0..max_power, i.e. [H, H Z/9, H (Z/9)^2, C, C Z/9, C (Z/9)^2, N, ..., F (Z/9)^2], matching the
    reference code's ``preprocess_input`` (charge_power=2, charge_scale = max Z = 9).
    """
    import torch

    if isinstance(z, torch.Tensor):
        zt = z.to(torch.int64)
    else:
        zt = torch.from_numpy(np.asarray(z, dtype=np.int64))
    species = torch.tensor(SPECIES, dtype=torch.int64, device=zt.device)
    one_hot = zt.unsqueeze(-1) == species
    if not bool(one_hot.any(-1).all()):
        bad = torch.unique(zt[~one_hot.any(-1)]).tolist()
        raise ValueError(f"atomic numbers {bad} are not H, C, N, O or F")
    exponents = torch.arange(max_power + 1, dtype=torch.float32, device=zt.device)
    powers = (zt.to(torch.float32).unsqueeze(-1) / charge_scale) ** exponents
    features = one_hot.to(torch.float32).unsqueeze(-1) * powers.unsqueeze(-2)
    return features.reshape(*zt.shape, len(SPECIES) * (max_power + 1))
