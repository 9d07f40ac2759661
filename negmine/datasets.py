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
from typing import Any, NamedTuple

import numpy as np

from ._checks import as_numpy, check_ids, fail
from ._fs import fsync_dir
from .io import _to_tensor, _torch_ready, atomic_path, load_pt_tensor

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

# Nearest-centroid search: values per query chunk (at most 65536 rows, fewer
# for wide embeddings so a float64 chunk stays near 128 MB), neighbours asked
# for, and the cosine gap below which two centroids count as tied (float32
# round-off).
_SEARCH_CHUNK_VALUES = 1 << 24
_SEARCH_K = 8
_TIE_TOL = 1e-6

# --------------------------------------------------------------------------
# deriving source clusters
# --------------------------------------------------------------------------


class DerivedClusters(NamedTuple):
    """Result of :func:`derive_source_clusters`.

    Attributes
    ----------
    source_cluster_ids : int64 [S]
        Cluster of each source.
    n_majority : int
        Sources placed by the majority cluster of their pairs.
    n_majority_ties : int
        Of those, sources whose top count was shared by several clusters.
    n_nearest : int
        Sources in no pair, placed by their nearest centroid.
    """

    source_cluster_ids: np.ndarray
    n_majority: int
    n_majority_ties: int
    n_nearest: int


def _nearest_centroids(
    source_embeddings: np.ndarray,
    centroid_embeddings: np.ndarray,
    ids: np.ndarray,
    names: Mapping[str, str],
) -> np.ndarray:
    """Nearest centroid by cosine for the sources ``ids``; ties to the smallest id."""
    import faiss

    n_c = centroid_embeddings.shape[0]
    cents = _unit_rows(centroid_embeddings, np.arange(n_c), names["centroid_embeddings"])
    index = faiss.IndexFlatIP(cents.shape[1])
    index.add(cents)
    k = min(_SEARCH_K, n_c)
    out = np.empty(ids.size, dtype=np.int64)
    step = min(65536, max(256, _SEARCH_CHUNK_VALUES // max(cents.shape[1], 1)))
    for start in range(0, ids.size, step):
        chunk = ids[start : start + step]
        q = _unit_rows(source_embeddings, chunk, names["source_embeddings"])
        scores, nbr = index.search(q, k)
        tied = scores >= scores[:, :1] - _TIE_TOL
        best = np.where(tied, nbr, np.iinfo(np.int64).max).min(axis=1)
        # A tie group that fills all k results may continue past them: score
        # those queries against every centroid.
        if k < n_c and tied[:, -1].any():
            rows = np.flatnonzero(tied[:, -1])
            s = q[rows] @ cents.T
            best[rows] = np.argmax(s >= s.max(axis=1, keepdims=True) - _TIE_TOL, axis=1)
        out[start : start + len(chunk)] = best
    return out


def _unit_rows(a: np.ndarray, rows: np.ndarray, name: str) -> np.ndarray:
    """Rows ``rows`` of ``a`` as float32 with unit norm; fail on zero or non-finite rows."""
    blk = np.asarray(a[rows], dtype=np.float64)
    if blk.ndim != 2:
        fail(name, "be a 2-D float array [n, d]", f"shape {list(np.shape(a))}")
    norms = np.linalg.norm(blk, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        row = int(rows[np.flatnonzero(bad)[0]])
        fail(
            name,
            "have finite, non-zero rows to find the nearest centroid by cosine",
            f"a zero or non-finite row {row}",
            "Drop or re-embed that row.",
        )
    return np.ascontiguousarray(blk / norms[:, None], dtype=np.float32)


def derive_source_clusters(
    source_embeddings: Any,
    centroid_embeddings: Any,
    pair_indices: Any,
    pair_cluster_ids: Any,
    *,
    names: Mapping[str, str] | None = None,
) -> DerivedClusters:
    """Assign every source a cluster from its pairs, or its nearest centroid.

    A source that appears in pairs gets the cluster most of those pairs carry
    (``pair_cluster_ids`` counted over the pairs whose source it is); a tie
    goes to the smallest cluster id. A source in no pair gets the centroid with
    the highest cosine similarity; cosines within 1e-6 of the best count as
    tied (float32 round-off) and a tie goes to the smallest cluster id.

    Parameters
    ----------
    source_embeddings : float [S, d]
        Only rows of sources in no pair are read; those must be finite and
        non-zero.
    centroid_embeddings : float [C, d]
        Finite, non-zero rows.
    pair_indices : int [P, 2]
        (question, source) pairs; sources in ``[0, S)``.
    pair_cluster_ids : int [P]
        Cluster of each pair, in ``[0, C)``.
    names : mapping, optional
        Names to use for the four arguments in error messages (for example the
        file names they were loaded from).

    Returns
    -------
    DerivedClusters
        ``source_cluster_ids`` int64 [S] plus counts of how each rule was used.

    Notes
    -----
    The pair counts take one sort of ``source * C + cluster`` keys
    (``O(P log P)``); the unpaired sources are searched with an exact FAISS
    inner-product index in row chunks. Memory stays ``O(P + S + C * d)``:
    nothing of size ``S x C`` is built.
    """
    nm = {
        "source_embeddings": "source_embeddings",
        "centroid_embeddings": "centroid_embeddings",
        "pair_indices": "pair_indices",
        "pair_cluster_ids": "pair_cluster_ids",
    }
    if names:
        nm.update(names)
    src = as_numpy(source_embeddings, nm["source_embeddings"])
    cents = as_numpy(centroid_embeddings, nm["centroid_embeddings"])
    for a, key in ((src, "source_embeddings"), (cents, "centroid_embeddings")):
        if a.ndim != 2:
            fail(nm[key], "be a 2-D float array [n, d]", f"shape {list(a.shape)}")
    n_s, n_c = src.shape[0], cents.shape[0]
    if cents.shape[1] != src.shape[1]:
        fail(
            nm["centroid_embeddings"],
            f"have width d={src.shape[1]} like `{nm['source_embeddings']}`",
            f"shape {list(cents.shape)}",
        )
    pairs = as_numpy(pair_indices, nm["pair_indices"])
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        fail(
            nm["pair_indices"], "have shape [P, 2] (question, source)", f"shape {list(pairs.shape)}"
        )
    pair_src = check_ids(
        pairs[:, 1],
        f"{nm['pair_indices']}[:, 1]",
        ndim=1,
        upper=n_s,
        upper_what=f"S = len({nm['source_embeddings']})",
    )
    pair_clu = check_ids(
        pair_cluster_ids,
        nm["pair_cluster_ids"],
        ndim=1,
        upper=n_c,
        upper_what=f"C = len({nm['centroid_embeddings']})",
    )
    if pair_clu.shape[0] != pair_src.shape[0]:
        fail(
            nm["pair_cluster_ids"],
            f"have one entry per pair (P = {pair_src.shape[0]})",
            f"length {pair_clu.shape[0]}",
        )

    out = np.full(n_s, -1, dtype=np.int64)
    n_ties = 0
    n_majority = 0
    if pair_src.size:
        keys, counts = np.unique(pair_src * n_c + pair_clu, return_counts=True)
        k_src = keys // n_c
        k_clu = keys - k_src * n_c
        # keys are sorted by (source, cluster); a stable sort by (source, -count)
        # keeps the smallest cluster first among equal counts.
        order = np.lexsort((-counts, k_src))
        s_sorted = k_src[order]
        first = np.ones(order.size, dtype=bool)
        first[1:] = s_sorted[1:] != s_sorted[:-1]
        win = order[first]
        out[k_src[win]] = k_clu[win]
        n_majority = int(win.size)
        # A tie: the runner-up of a source (next in sorted order) has the same count.
        nxt = np.flatnonzero(first) + 1
        nxt = nxt[nxt < order.size]
        nxt = nxt[s_sorted[nxt] == s_sorted[nxt - 1]]
        n_ties = int(np.count_nonzero(counts[order[nxt]] == counts[order[nxt - 1]]))

    lonely = np.flatnonzero(out < 0)
    if lonely.size:
        if n_c == 0:
            fail(
                nm["centroid_embeddings"],
                "have at least one row to place sources that are in no pair",
                f"shape {list(cents.shape)} with {lonely.size} such sources",
            )
        out[lonely] = _nearest_centroids(src, cents, lonely, nm)
    return DerivedClusters(out, n_majority, n_ties, int(lonely.size))


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
