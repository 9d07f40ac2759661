"""Dataset directories: the six mining inputs as ``.npy`` files or a JASPER dataset.

Two layouts are understood:

``npy``
    One ``<name>.npy`` file per entry of :data:`INPUT_NAMES`, memory-mapped
    read-only on load.
``jasper``
    A JASPER steering dataset directory: ``source_embs.pt``,
    ``question_embs.pt``, ``centroid_embs.pt``, ``pair_index.pt``,
    ``pair_cluster_id.pt`` and, optionally, ``source_cluster_ids.pt``. Each
    ``.pt`` file holds one plain tensor. When ``source_cluster_ids.pt`` is
    absent the source clusters are derived (see :func:`derive_source_clusters`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import fail
from .atomic import atomic_path
from .derive import DerivedClusters, derive_source_clusters
from .fs import fsync_dir
from .tensors import _to_tensor, _torch_ready, load_pt_tensor

__all__ = [
    "INPUT_NAMES",
    "JASPER_FILES",
    "Dataset",
    "DerivedClusters",
    "derive_source_clusters",
    "load_dataset",
    "save_dataset",
]

logger = logging.getLogger(__name__)

INPUT_NAMES: tuple[str, ...] = (
    "source_embeddings",
    "question_embeddings",
    "centroid_embeddings",
    "pair_indices",
    "pair_cluster_ids",
    "source_cluster_ids",
)

#: File name of each input in a JASPER steering dataset directory.
JASPER_FILES: dict[str, str] = {
    "source_embeddings": "source_embs.pt",
    "question_embeddings": "question_embs.pt",
    "centroid_embeddings": "centroid_embs.pt",
    "pair_indices": "pair_index.pt",
    "pair_cluster_ids": "pair_cluster_id.pt",
    "source_cluster_ids": "source_cluster_ids.pt",
}


_NPY_FILES = {name: f"{name}.npy" for name in INPUT_NAMES}
_JASPER_OPTIONAL = ("source_cluster_ids",)
_FORMATS = ("npy", "jasper")


# --------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------


@dataclass(repr=False)
class Dataset:
    """Mining inputs loaded from a directory.

    Attributes
    ----------
    arrays : dict of str to numpy.ndarray
        One array per entry of :data:`INPUT_NAMES`:
        ``source_embeddings`` float [S, d], ``question_embeddings`` float
        [Q, d], ``centroid_embeddings`` float [C, d], ``pair_indices`` int
        [P, 2] of (question, source), ``pair_cluster_ids`` int [P],
        ``source_cluster_ids`` int [S]. Arrays from ``.npy`` files are
        read-only :class:`numpy.memmap` objects. Values are not checked here.
    format : str
        ``"npy"`` or ``"jasper"``.
    path : pathlib.Path
        The directory read.
    notes : list of str
        Human-readable remarks about the load, e.g. that source clusters were
        derived and how.
    """

    arrays: dict[str, np.ndarray]
    format: str
    path: Path
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}={a.dtype}[{', '.join(str(n) for n in a.shape)}]" for k, a in self.arrays.items()
        )
        return f"Dataset(format={self.format!r}, path={str(self.path)!r}, {parts})"


def _expected_files_text() -> str:
    npy = ", ".join(_NPY_FILES.values())
    jas = ", ".join(
        f + (" (optional)" if k in _JASPER_OPTIONAL else "") for k, f in JASPER_FILES.items()
    )
    return f"Expected the npy layout ({npy}) or the JASPER layout ({jas})."


def _detect_format(p: Path) -> str | None:
    if (p / _NPY_FILES["source_embeddings"]).exists():
        return "npy"
    if (p / JASPER_FILES["source_embeddings"]).exists():
        return "jasper"
    return None


def load_dataset(path: str | os.PathLike[str]) -> Dataset:
    """Load mining inputs from an ``npy`` or JASPER dataset directory.

    Parameters
    ----------
    path : str or path-like
        Directory. Holding ``source_embeddings.npy`` makes it an ``npy``
        dataset, else holding ``source_embs.pt`` makes it a JASPER one.

    Returns
    -------
    Dataset
        ``npy`` arrays are memory-mapped read-only (``np.load(...,
        mmap_mode="r", allow_pickle=False)``); JASPER tensors are loaded with
        :func:`load_pt_tensor` and converted to numpy. A JASPER directory
        without ``source_cluster_ids.pt`` gets derived clusters (see
        :func:`derive_source_clusters`) and a note saying so.

    Raises
    ------
    ValueError
        If ``path`` is not a directory, matches neither layout, misses a
        required file, or holds a file that cannot be loaded as a plain array.
    """
    p = Path(path)
    if not p.is_dir():
        state = "a file" if p.exists() else "nothing"
        fail("path", "be a dataset directory", f"{str(p)!r} ({state} at that path)")
    fmt = _detect_format(p)
    if fmt is None:
        fail(
            "path",
            "be a dataset directory in the npy or JASPER layout",
            f"{str(p)!r}, which holds neither source_embeddings.npy nor source_embs.pt",
            _expected_files_text(),
        )
    if fmt == "npy":
        return _load_npy(p)
    return _load_jasper(p)


def _missing(p: Path, files: Mapping[str, str], optional: tuple[str, ...] = ()) -> None:
    missing = [f for k, f in files.items() if k not in optional and not (p / f).is_file()]
    if missing:
        fail(
            "path",
            "hold every required file of its layout",
            f"{str(p)!r} without {', '.join(missing)}",
            _expected_files_text(),
        )


def _load_npy(p: Path) -> Dataset:
    _missing(p, _NPY_FILES)
    arrays: dict[str, np.ndarray] = {}
    for key, fname in _NPY_FILES.items():
        f = p / fname
        try:
            arrays[key] = np.load(f, mmap_mode="r", allow_pickle=False)
        except OSError:
            raise
        except Exception as e:
            fail(
                str(f),
                "be a plain .npy array (no Python objects)",
                f"an unreadable file ({type(e).__name__}: {e})",
                "Re-save it with np.save(path, array) from a numeric array.",
            )
    logger.debug("loaded npy dataset from %s", p)
    return Dataset(arrays=arrays, format="npy", path=p, notes=[])


def _load_jasper(p: Path) -> Dataset:
    _missing(p, JASPER_FILES, _JASPER_OPTIONAL)
    arrays: dict[str, np.ndarray] = {}
    for key, fname in JASPER_FILES.items():
        f = p / fname
        if f.is_file():
            arrays[key] = load_pt_tensor(f)
    notes: list[str] = []
    if "source_cluster_ids" not in arrays:
        d = derive_source_clusters(
            arrays["source_embeddings"],
            arrays["centroid_embeddings"],
            arrays["pair_indices"],
            arrays["pair_cluster_ids"],
            names={k: JASPER_FILES[k] for k in INPUT_NAMES},
        )
        arrays["source_cluster_ids"] = d.source_cluster_ids
        note = (
            f"{JASPER_FILES['source_cluster_ids']} is absent, so source clusters were derived: "
            f"{d.n_majority} sources took the majority cluster of their pairs "
            f"({d.n_majority_ties} of them broke a tie toward the smallest cluster id); "
            f"{d.n_nearest} sources in no pair took the nearest centroid by cosine "
            f"(ties toward the smallest cluster id)."
        )
        notes.append(note)
        logger.info("%s: %s", p, note)
    arrays = {k: arrays[k] for k in INPUT_NAMES}
    logger.debug("loaded JASPER dataset from %s", p)
    return Dataset(arrays=arrays, format="jasper", path=p, notes=notes)


def save_dataset(
    path: str | os.PathLike[str], arrays: Mapping[str, Any], format: str = "npy"
) -> Path:
    """Write mining inputs as an ``npy`` or JASPER dataset directory.

    Parameters
    ----------
    path : str or path-like
        Directory; created (with parents) if needed.
    arrays : mapping of str to array
        numpy arrays or torch tensors keyed by :data:`INPUT_NAMES` (shapes as
        in :class:`Dataset`). ``source_cluster_ids`` may be left out for the
        JASPER format, whose loader then derives it. Values are written as
        given, dtype unchanged.
    format : {"npy", "jasper"}
        ``"npy"`` writes ``<name>.npy``; ``"jasper"`` writes the
        :data:`JASPER_FILES` names as single-tensor ``.pt`` files.

    Returns
    -------
    pathlib.Path
        The directory written.

    Notes
    -----
    Each file is written atomically. Refuses a directory that already holds a
    dataset in the other format, since loading would then pick whichever
    layout is detected first. Writing a JASPER dataset without
    ``source_cluster_ids`` removes a stale ``source_cluster_ids.pt``.
    """
    if format not in _FORMATS:
        fail("format", 'be "npy" or "jasper"', repr(format))
    if not isinstance(arrays, Mapping):
        fail(
            "arrays",
            "be a dict of arrays",
            f"an object of type {type(arrays).__name__}",
            exc=TypeError,
        )
    unknown = sorted(set(arrays) - set(INPUT_NAMES))
    if unknown:
        fail("arrays", f"have keys among {list(INPUT_NAMES)}", f"unknown keys {unknown}")
    optional = _JASPER_OPTIONAL if format == "jasper" else ()
    missing = [k for k in INPUT_NAMES if k not in arrays and k not in optional]
    if missing:
        fail("arrays", f"have every key of {list(INPUT_NAMES)}", f"no {missing}")

    p = Path(path)
    other = "jasper" if format == "npy" else "npy"
    if p.is_dir() and _detect_format(p) == other:
        fail(
            "path",
            f"not already hold a dataset in the {other} layout when writing {format}",
            repr(str(p)),
            "Use an empty directory or remove the old files.",
        )
    # Convert everything first so a bad input fails before anything is written.
    ready = {k: _torch_ready(arrays[k], f"arrays[{k!r}]") for k in INPUT_NAMES if k in arrays}
    p.mkdir(parents=True, exist_ok=True)
    if format == "npy":
        for key, a in ready.items():
            with atomic_path(p / _NPY_FILES[key]) as tmp, open(tmp, "wb") as f:
                np.save(f, a, allow_pickle=False)
    else:
        import torch

        tensors = {k: _to_tensor(a, f"arrays[{k!r}]") for k, a in ready.items()}
        for key, t in tensors.items():
            with atomic_path(p / JASPER_FILES[key]) as tmp:
                torch.save(t, tmp)
        stale = p / JASPER_FILES["source_cluster_ids"]
        if "source_cluster_ids" not in ready and stale.exists():
            stale.unlink()
            fsync_dir(p)
            logger.info("removed stale %s", stale)
    logger.debug("saved %s dataset to %s", format, p)
    return p
