"""E(n)-equivariant graph neural networks (Satorras, Hoogeboom & Welling, ICML 2021).

The model library (``egnn.ops``, ``egnn.nn``, ``egnn.testing``, ``egnn.checkpoint``) knows nothing of
experiments; ``egnn.experiments`` (data, training, evaluation, CLI) builds on it.
"""

__version__ = "0.1.0"
