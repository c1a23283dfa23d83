"""The shared trainer under its historical import path (the parts live in :mod:`egnn.experiments.training`)."""

from egnn.experiments.training import *  # noqa: F403
from egnn.experiments.training import __all__  # noqa: F401
