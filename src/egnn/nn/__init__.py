"""E(n)-equivariant layers and models."""

from egnn.nn.egcl import EGCL, EGCLVel
from egnn.nn.egnn import EGNN, EGNNConfig, EGNNOutput

__all__ = ["EGCL", "EGCLVel", "EGNN", "EGNNConfig", "EGNNOutput"]
