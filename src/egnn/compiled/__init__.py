"""Ahead-of-time compiled energy + forces graphs of fitted atoms models (``egnn export``, ``.pt2`` files).

An :class:`~egnn.atoms.model.AtomsModel`'s energy and its forces ``-dE/dx`` (and, optionally, its virial
``dE/d(strain)``) are traced into one graph (:func:`~egnn.compiled.trace.trace_energy_forces`), exported with
dynamic numbers of atoms and edges and compiled with AOTInductor (:func:`~egnn.compiled.export.export_model`), so a
call is one C++ function instead of about a thousand small autograd operations. The file runs with PyTorch alone;
:class:`~egnn.compiled.loader.ExportedModel` adds the checks and the metadata (species, cut-off, dtype, units).
"""

from egnn.compiled.loader import ExportedModel, ExportError, load_exported

__all__ = ["ExportError", "ExportedModel", "load_exported"]
