"""Reduced cluster lists: a low-dimensional candidate pass over the user's clusters.

A ``"clusters,PCA<m>"`` index stores each source as ``P (x - mu)``: its unit
vector, centred on the sources' mean ``mu`` and projected on the ``m`` leading
principal axes ``P`` [m, d] of the sources. A question ``q`` is projected
without centring, ``P q``, so that ``(P q) . (P (x - mu))`` approximates
``q . x - q . mu``: the true cosine up to a per-question constant (which no
ranking sees) and the part of both vectors outside the kept axes. Searching
these lists costs ``m / d`` of the float32 products; the best candidates are
then re-ranked by their exact cosine from the embeddings, so scores and order
stay exact (see :class:`negmine.search.backends.ProbeBackend`).

``"clusters,PCA"`` (no ``m``) chooses ``m`` from the spectrum: the fewest
dimensions, a multiple of 16, that keep :data:`PCA_ENERGY` of the centred
sources' energy, at most ``d / 2``.

The stored FAISS index is an ``IndexPreTransform`` of a ``LinearTransform``
(``A = P``, ``b = -P mu``) over an ``IndexIVFFlat`` of width ``m``, so the
file is complete on its own.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .._checks import fail, normalized_float32

__all__ = [
    "DEFAULT_RERANK",
    "PCA_ENERGY",
    "fit_pca",
    "parse_reduction",
    "projection",
    "reduce_rows",
    "wrap_reduced",
]

#: Share of the centred sources' energy ``"clusters,PCA"`` keeps.
PCA_ENERGY = 0.8
#: Re-rank factor of reduced lists when a run gives none (recorded in the manifest).
DEFAULT_RERANK = 8
#: Sources the principal axes are fitted on (an even sample).
PCA_SAMPLE = 65536
_PCA = re.compile(r"pca(\d+)")


def parse_reduction(codec: str, d: int) -> int | None:
    """The ``m`` of a ``pca<m>`` codec (None for ``pca``: chosen from the spectrum),
    checked against ``d``.

    Parameters
    ----------
    codec : str
        Lower-case codec after ``"clusters,"``: ``"pca"`` or ``"pca<m>"``.
    d : int
        Embedding width.
    """
    if codec == "pca":
        return None
    m = _PCA.fullmatch(codec)
    dims = int(m.group(1)) if m else 0
    if not 1 <= dims < d:
        fail("spec", f"name a reduction to 1..{d - 1} dimensions (d = {d})",
             repr(f"clusters,{codec}"), f"Use e.g. 'clusters,PCA{max(1, d // 4)}' or "
             "'clusters,PCA' (m chosen from the spectrum).")  # fmt: skip
    return dims


def fit_pca(
    src: np.ndarray, dims: int | None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Principal axes of the unit sources, on an even sample.

    Parameters
    ----------
    src : float [S, d]
        Raw source embeddings (normalised here, row by row).
    dims : int or None
        Axes kept; None chooses the fewest (a multiple of 16, at most ``d / 2``)
        that keep :data:`PCA_ENERGY` of the energy.
    seed : int
        Unused by the even sample; kept for a future random sample.

    Returns
    -------
    axes : float32 [m, d]
        Orthonormal rows, the leading principal axes.
    mean : float32 [d]
        Mean of the unit sources.
    info : dict
        ``dims``, ``energy`` (share of the centred energy kept), ``sample``.
    """
    del seed
    n, d = src.shape
    take = np.unique(np.linspace(0, n - 1, min(n, PCA_SAMPLE)).astype(np.int64))
    x = normalized_float32(np.asarray(src[take]))
    mean = x.mean(axis=0, dtype=np.float64)
    xc = x.astype(np.float64) - mean
    cov = xc.T @ xc / max(1, xc.shape[0])
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1].clip(min=0), evecs[:, ::-1]
    share = np.cumsum(evals) / max(float(evals.sum()), 1e-30)
    if dims is None:
        need = int(np.searchsorted(share, PCA_ENERGY) + 1)
        dims = int(min(max(16, -(-need // 16) * 16), max(1, d // 2)))
    axes = np.ascontiguousarray(evecs[:, :dims].T, dtype=np.float32)
    info = {"dims": int(dims), "energy": round(float(share[dims - 1]), 4), "sample": int(take.size)}
    return axes, mean.astype(np.float32), info


def wrap_reduced(ivf: Any, axes: np.ndarray, mean: np.ndarray) -> Any:
    """``IndexPreTransform(LinearTransform(A = axes, b = -axes @ mean), ivf)``."""
    import faiss

    m, d = axes.shape
    lt = faiss.LinearTransform(d, m, True)
    faiss.copy_array_to_vector(axes.reshape(-1), lt.A)
    faiss.copy_array_to_vector((-(axes @ mean)).astype(np.float32), lt.b)
    lt.is_trained = True
    return faiss.IndexPreTransform(lt, ivf)  # FAISS's wrapper keeps both alive


def projection(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """The axes float32 [m, d] and bias float32 [m] of a reduced index."""
    import faiss

    pre = faiss.downcast_index(index)
    lt = faiss.downcast_VectorTransform(pre.chain.at(0))
    axes = faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)
    return axes.astype(np.float32, copy=False), faiss.vector_to_array(lt.b).astype(np.float32)


def reduce_rows(x: np.ndarray, axes: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``x @ axes.T + bias`` for unit rows ``x`` float32 [n, d]: their stored form."""
    out = x @ axes.T
    out += bias
    return out
