"""Shapes and weights of the synthetic corpus, and the small helpers every part uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from .._checks import fail

# Rows per generation chunk, and most threads generating chunks at once.
_CHUNK_ROWS = 16384
_MAX_WORKERS = 4
# Largest similarity tile (rows x columns) computed at once, in elements.
_TILE_ELEMS = 1 << 25
# Dimension of the subspace each topic's clusters and sources vary along.
_LATENT_DIM = 8
# Cluster centre = topic direction + latent position + a private direction.
_TOPIC_W = 1.0
_LATENT_W = 0.3
_PRIVATE_W = (1.0, 0.2)  # weight at overlap 0 and at overlap 1
# Source = centre + latent spread + isotropic noise.
_SPREAD_W = (0.35, 0.75)  # latent spread at overlap 0 and at overlap 1
_NOISE_W = 0.5
# Each source also leans towards one of its cluster's ``_MIX_NEIGHBOURS``
# nearest clusters with a weight uniform in [0, w]; w at overlap 0 and at 1.
_MIX_NEIGHBOURS = 8
_MIX_W = (0.0, 0.6)
# Log-normal sigma of the cluster weights per unit of ``skew``.
_SIZE_SIGMA = 1.3
# Cosine of a question to its first positive, drawn uniformly in this range.
_QUESTION_COS = (0.6, 0.85)
# Share of a question's perturbation that moves along the topic subspace.
_QUESTION_LOCAL = 0.45
# An extra positive comes from the question's own cluster with this
# probability, otherwise from one of its ``_NEIGHBOURS`` nearest clusters.
_EXTRA_SAME_CLUSTER = 0.75
_NEIGHBOURS = 3


@dataclass(frozen=True)
class _Spectrum:
    """How ``make_corpus(spectrum=name)`` shapes the sources (see ``spectrum.py``).

    Before normalisation every source goes through a map whose squared scales
    decay as ``(i + shift) ** -power`` over ranks ``i = 1..d``, then gets a
    common offset of norm ``mean_w``. ``topic_w`` and ``noise_w`` replace
    ``_TOPIC_W`` and ``_NOISE_W``: a weaker topic direction spreads the
    cluster centres over more dimensions before the map shapes them (the
    topics alone would hold half the variance in a few axes), and more noise
    keeps neighbouring clusters overlapping about as much as without a
    spectrum. The five were calibrated (by hand, on a grid) so that a corpus of
    100k sources in 300 clusters reproduces the figures measured on real
    embeddings, stored beside them: the share of the variance around the mean
    kept by the first k principal axes (``energy``, pairs of k and share) and
    the norm of the mean of the unit rows (``mean_norm``).
    """

    shift: float
    power: float
    mean_w: float
    topic_w: float
    noise_w: float
    energy: tuple[tuple[int, float], ...]
    mean_norm: float


# Seed-sequence tag of the generator that draws a spectrum's basis and offset.
_SPECTRUM_STREAM = 0x5BEC
_SPECTRA = {
    # all-MiniLM-L6-v2 on the 1,628 standard-library passages of
    # examples/real_corpus (Python 3.11.7), as examples/real_corpus/spectrum.py prints them
    "minilm": _Spectrum(
        shift=40.0,
        power=1.9,
        mean_w=0.55,
        topic_w=0.5,
        noise_w=1.0,
        energy=((32, 0.549), (64, 0.720), (96, 0.817), (128, 0.880), (192, 0.952)),
        mean_norm=0.357,
    ),
}


def _check_int(name: str, x: Any, lo: int) -> int:
    if not isinstance(x, Integral) or isinstance(x, bool):
        fail(name, "be an integer", repr(x), exc=TypeError)
    if x < lo:
        fail(name, f"be >= {lo}", repr(x))
    return int(x)


def _check_real(name: str, x: Any, hi: float | None = 1.0) -> float:
    """Check a real number in [0, hi] (or [0, inf) when ``hi`` is None)."""
    if not isinstance(x, Real) or isinstance(x, bool):
        fail(name, "be a real number", repr(x), exc=TypeError)
    v = float(x)
    if hi is None:
        if not (math.isfinite(v) and v >= 0):
            fail(name, "be finite and >= 0", repr(x))
    elif not 0 <= v <= hi:
        fail(name, f"be in [0, {hi:g}]", repr(x))
    return v


def _normalize_rows(a: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of float32 ``a`` in place and return it."""
    norms = np.sqrt(np.einsum("ij,ij->i", a, a))
    np.maximum(norms, np.float32(1e-12), out=norms)
    a /= norms[:, None]
    return a


def _fill_noise(rng: np.random.Generator, out: np.ndarray, scale: float) -> None:
    """Fill float32 ``out [n, d]`` with zero-mean noise of expected row norm ``scale``.

    Coordinates are uniform (several times cheaper to draw than normal); at
    embedding widths every projection of the noise is close to Gaussian anyway.
    """
    rng.random(out=out, dtype=np.float32)
    # uniform on [-sqrt(3), sqrt(3)] has unit variance
    out -= np.float32(0.5)
    out *= np.float32(2.0 * math.sqrt(3.0) * scale / math.sqrt(out.shape[1]))


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each run of equal values in ``keys``."""
    cut = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return np.concatenate(([0], cut)), np.concatenate((cut, [keys.size]))


def _add_local(
    out: np.ndarray, coords: np.ndarray, topics: np.ndarray, bases: np.ndarray, tmp: np.ndarray
) -> None:
    """``out[i] += coords[i] @ bases[topics[i]]`` for ``topics`` sorted in runs.

    ``tmp`` is scratch space shaped like ``out``.
    """
    for a, b in zip(*_runs(topics), strict=True):
        np.matmul(coords[a:b], bases[topics[a]], out=tmp[a:b])
        out[a:b] += tmp[a:b]


def _cluster_sizes(
    rng: np.random.Generator, n_sources: int, n_clusters: int, skew: float
) -> np.ndarray:
    """Heavy-tailed sizes, each >= 1, summing to ``n_sources`` (int64 [C])."""
    w = np.exp(_SIZE_SIGMA * skew * rng.standard_normal(n_clusters))
    spare = n_sources - n_clusters
    share = w / w.sum() * spare
    sizes = np.floor(share).astype(np.int64)
    rest = spare - int(sizes.sum())
    if rest > 0:
        # largest remainders first (ties go to the lower cluster id)
        top = np.argsort(sizes - share, kind="stable")[:rest]
        sizes[top] += 1
    return sizes + 1


def _nearest_rows(x: np.ndarray, refs: np.ndarray, k: int) -> np.ndarray:
    """Indices int64 [n, k] of the ``k`` rows of ``refs`` with the largest ``x @ refs.T``.

    Exact, in row chunks so no tile exceeds ``_TILE_ELEMS`` elements; ``k``
    must be at most ``len(refs)``. Columns are in decreasing score order.
    """
    n = x.shape[0]
    out = np.empty((n, k), dtype=np.int64)
    step = max(1, min(n, _CHUNK_ROWS, _TILE_ELEMS // max(1, refs.shape[0])))
    buf = np.empty((step, refs.shape[0]), dtype=np.result_type(x, refs))
    refs_t = refs.T
    for i0 in range(0, n, step):
        blk = x[i0 : i0 + step]
        sims = np.matmul(blk, refs_t, out=buf[: blk.shape[0]])
        if k == 1:
            out[i0 : i0 + step, 0] = sims.argmax(axis=1)
            continue
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(sims, part, axis=1)
        out[i0 : i0 + step] = np.take_along_axis(part, np.argsort(-vals, axis=1), axis=1)
    return out
