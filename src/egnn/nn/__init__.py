"""E(n)-equivariant layers and models, and the paper's non-equivariant (GCL) and Radial Field layers."""

from egnn.nn.egcl import EGCL, EGCLVel
from egnn.nn.egnn import EGNN, EGNNConfig, EGNNOutput
from egnn.nn.gcl import GCL
from egnn.nn.radial_field import RadialFieldLayer
from egnn.nn.vector import VectorEGCL

__all__ = ["EGCL", "EGCLVel", "EGNN", "EGNNConfig", "EGNNOutput", "GCL", "RadialFieldLayer", "VectorEGCL"]
