"""Files negmine reads and writes: dataset directories, ``.pt`` tensors, outputs, checkpoints.

Every file is written atomically (:mod:`negmine.io.atomic`) and every
directory is replaced whole (:mod:`negmine.io.fs`). ``torch`` and ``faiss``
are imported only by the functions that need them.
"""

from __future__ import annotations

from .._faults import pause_point
from .atomic import atomic_path, atomic_write_bytes, atomic_write_json
from .datasets import (
    INPUT_NAMES,
    JASPER_FILES,
    Dataset,
    load_dataset,
    save_dataset,
)
from .derive import DerivedClusters, derive_source_clusters
from .fs import replace_dir, staging_dir
from .outputs import (
    MANIFEST_NAME,
    OPTIONAL_OUTPUTS,
    REQUIRED_OUTPUTS,
    TENSOR_FILES_KEY,
    check_output_dir,
    load_outputs,
    save_outputs,
)
from .runs import Checkpoints, completed_run, hash_arrays, partial_dir
from .tensors import load_pt_tensor, save_pt_tensor

__all__ = [
    "INPUT_NAMES",
    "JASPER_FILES",
    "MANIFEST_NAME",
    "OPTIONAL_OUTPUTS",
    "REQUIRED_OUTPUTS",
    "TENSOR_FILES_KEY",
    "Checkpoints",
    "Dataset",
    "DerivedClusters",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_output_dir",
    "completed_run",
    "derive_source_clusters",
    "hash_arrays",
    "load_dataset",
    "load_outputs",
    "load_pt_tensor",
    "partial_dir",
    "pause_point",
    "replace_dir",
    "save_dataset",
    "save_outputs",
    "save_pt_tensor",
    "staging_dir",
]
