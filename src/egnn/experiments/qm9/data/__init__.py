"""QM9 data layer: parse QM9 once into a compact, verified ``.npz`` cache, the paper's splits, node features.

Sources (``source=None`` means the first one):

* the CSV files shipped inside the ``qm9pack==1.0.3`` wheel (``qm9pack/data/qm9_part*.csv``, 130,831
  molecules, i.e. the 133,885 GDB-9 molecules minus the 3,054 that failed QM9's consistency check);
* a folder holding such CSV files, or one CSV file with the same columns;
* the original archive ``dsgdb9nsd.xyz.tar.bz2`` or a folder of its ``dsgdb9nsd_NNNNNN.xyz`` files (see
  :func:`parse_xyz` for how the uncharacterized molecules are excluded there).

Targets are stored in the units of the paper's Table 3 (meV for energies, see :data:`TARGETS`) with the
atomic reference energies already subtracted from U0, U, H, G and Cv, as the pipeline of the paper (taken
from Cormorant, Anderson et al. 2019) does by default (``subtract_thermo=True``).

The cache is a single ``qm9.npz`` (no pickles) holding ``z`` (uint8, concatenated over molecules), ``pos``
(float32 [n_atoms, 3], Angstrom), ``offsets`` (int64 [n_mol + 1]), ``targets`` (float64 [n_mol, 12]),
``index`` (int64 GDB-9 index, 1-based as in ``dsgdb9nsd_000001.xyz``, ascending) and ``meta`` (JSON as
uint8 bytes: format version, source description, sha256/dtype/shape of every array). A cache that cannot be
read, fails a checksum, or was written by another format version is rejected (:class:`CacheError`) and
rebuilt by :func:`prepare`, never used.

Modules (the public names are all exported here, so ``from egnn.experiments.qm9.data import X`` works for any of
them): :mod:`.constants` (units, elements, target table, errors), :mod:`.dataset` (:class:`QM9Data`),
:mod:`.units` (target conversion), :mod:`.sources`, :mod:`.csv_parser`, :mod:`.xyz_parser`, :mod:`.cache`,
:mod:`.splits`, :mod:`.features` (node features) and :mod:`.npz` (crash-safe writes). To replace a function in a
test, patch it in the module that defines it (e.g. ``sources.qm9pack_data_dir``, ``cache.FORMAT_VERSION``).
"""

from egnn.experiments.qm9.data.cache import (
    FORMAT_VERSION,
    cache_info,
    load,
    prepare,
    save_cache,
)
from egnn.experiments.qm9.data.constants import (
    ARRAY_DTYPES,
    ATOMREF,
    CACHE_NAME,
    CSV_REQUIRED,
    ELEMENTS,
    HARTREE_TO_EV,
    HARTREE_TO_MEV,
    INSTALL_HINT,
    N_GDB9,
    N_QM9,
    N_TRAIN,
    QM9PACK_VERSION,
    RAW_CSV_COLUMNS,
    RAW_FIELDS,
    SPECIES,
    SPLIT_SEED,
    SPLITS_NAME,
    TARGET_NAMES,
    TARGETS,
    TEST_FRACTION,
    CacheError,
    QM9DataError,
    Target,
    target_index,
)
from egnn.experiments.qm9.data.csv_parser import (
    parse_csv,
)
from egnn.experiments.qm9.data.dataset import (
    Molecule,
    QM9Data,
)
from egnn.experiments.qm9.data.features import (
    node_features,
)
from egnn.experiments.qm9.data.sources import (
    Source,
    missing_source_message,
    qm9pack_data_dir,
    resolve_source,
)
from egnn.experiments.qm9.data.splits import (
    load_splits,
    make_splits,
    split_sizes,
    write_splits,
)
from egnn.experiments.qm9.data.units import (
    convert_targets,
)
from egnn.experiments.qm9.data.xyz_parser import (
    parse_xyz,
    parse_xyz_text,
    qm9pack_indices,
    read_source,
    read_uncharacterized,
)

__all__ = [
    "ARRAY_DTYPES",
    "ATOMREF",
    "CACHE_NAME",
    "CSV_REQUIRED",
    "CacheError",
    "ELEMENTS",
    "FORMAT_VERSION",
    "HARTREE_TO_EV",
    "HARTREE_TO_MEV",
    "INSTALL_HINT",
    "Molecule",
    "N_GDB9",
    "N_QM9",
    "N_TRAIN",
    "QM9Data",
    "QM9DataError",
    "QM9PACK_VERSION",
    "RAW_CSV_COLUMNS",
    "RAW_FIELDS",
    "SPECIES",
    "SPLITS_NAME",
    "SPLIT_SEED",
    "Source",
    "TARGETS",
    "TARGET_NAMES",
    "TEST_FRACTION",
    "Target",
    "cache_info",
    "convert_targets",
    "load",
    "load_splits",
    "make_splits",
    "missing_source_message",
    "node_features",
    "parse_csv",
    "parse_xyz",
    "parse_xyz_text",
    "prepare",
    "qm9pack_data_dir",
    "qm9pack_indices",
    "read_source",
    "read_uncharacterized",
    "resolve_source",
    "save_cache",
    "split_sizes",
    "target_index",
    "write_splits",
]
