"""Your own atomistic data: ASE-readable files, periodic neighbour lists with shifts, an energy/force EGNN.

``ase`` is needed only to read files and for :mod:`egnn.ase`; the model and neighbour lists run without it.
"""

from egnn.atoms.data import AtomsData, AtomsDataError, load_dataset, read_dataset
from egnn.atoms.graphs import AtomsBatch, AtomsGraphs
from egnn.atoms.model import AtomsModel, AtomsModelConfig, fit_statistics, load_model, save_model
from egnn.atoms.neighbors import NeighborError, neighbor_list
from egnn.atoms.packing import StoreWriter, pack
from egnn.atoms.store import AtomsStore, open_store

__all__ = [
    "AtomsBatch",
    "AtomsData",
    "AtomsDataError",
    "AtomsGraphs",
    "AtomsModel",
    "AtomsModelConfig",
    "AtomsStore",
    "NeighborError",
    "StoreWriter",
    "fit_statistics",
    "load_dataset",
    "load_model",
    "neighbor_list",
    "open_store",
    "pack",
    "read_dataset",
    "save_model",
]
