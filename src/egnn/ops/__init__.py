"""Graph operations in pure PyTorch: scatter reductions, edge construction, batching."""

from egnn.ops.batch import Graph, collate
from egnn.ops.neighbors import fully_connected_edges, knn_graph, radius_graph, sizes_to_batch
from egnn.ops.order import locality_order
from egnn.ops.scatter import scatter_count, scatter_mean, scatter_sum

__all__ = [
    "Graph",
    "collate",
    "fully_connected_edges",
    "knn_graph",
    "locality_order",
    "radius_graph",
    "scatter_count",
    "scatter_mean",
    "scatter_sum",
    "sizes_to_batch",
]
