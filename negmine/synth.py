"""Synthetic clustered retrieval corpora.

:func:`make_corpus` draws a corpus shaped like the embeddings of a real
question-answering collection after k-means: a few broad topics on the unit
sphere, clusters laid out inside each topic so that neighbouring clusters
overlap, heavy-tailed cluster sizes, sources spread along a low-dimensional
per-topic subspace plus isotropic noise, and questions that are noisy copies
of their positive source. :func:`top_hits_share` measures how often the exact
nearest sources of a question fall inside the question's own cluster.

Everything is float32 and generated in row chunks, with no [S, C] matrix, so
a corpus of a million 384-wide sources costs little more than its own arrays.
Only numpy is needed.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from numbers import Integral, Real
from typing import Any

import numpy as np

from ._checks import fail

__all__ = ["make_corpus", "top_hits_share"]

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


class _Scratch(threading.local):
    """Per-thread reusable float32 buffers, so chunks do not keep allocating."""

    def get(self, name: str, n: int, d: int) -> np.ndarray:
        buf = self.__dict__.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != d:
            buf = np.empty((n, d), dtype=np.float32)
            self.__dict__[name] = buf
        return buf[:n]


def _n_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cpus))


def _run_chunks(
    task: Callable[[int, int], Any], n_rows: int, rows: int, consume: Callable[[Any], None]
) -> None:
    """Run ``task(k, start)`` for row chunks ``k``, consuming results in chunk order.

    Chunks run on a few threads (numpy releases the GIL in the heavy loops);
    the output never depends on their number or timing, because every chunk
    draws from its own generator and results are consumed in order.
    """
    starts = range(0, n_rows, rows)
    workers = min(_n_workers(), len(starts))
    if workers <= 1:
        for k, j0 in enumerate(starts):
            consume(task(k, j0))
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[Any]] = deque()
        for k, j0 in enumerate(starts):
            pending.append(pool.submit(task, k, j0))
            if len(pending) >= 2 * workers:
                consume(pending.popleft().result())
        while pending:
            consume(pending.popleft().result())


def _make_sources(
    stream: int,
    label: np.ndarray,
    centres: np.ndarray,
    cluster_topic: np.ndarray,
    bases: np.ndarray,
    mix_table: np.ndarray | None,
    spread_w: float,
    mix_w: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the sources of generating clusters ``label`` (int64 [S]).

    Each chunk of rows is generated sorted by topic and cluster, so topic
    subspaces and cluster sums work on contiguous slices, and is put back in
    row order at the end.

    Returns
    -------
    sources : float32 [S, d]
        Unit-norm sources.
    sums : float64 [C, d]
        Sum of each generating cluster's sources.
    """
    f32 = np.float32
    n_c, d = centres.shape
    n_s = label.size
    r = bases.shape[1]
    # sort key grouping a chunk's rows by topic, then by cluster
    key = cluster_topic * n_c + np.arange(n_c)
    sources = np.empty((n_s, d), dtype=f32)
    sums = np.zeros((n_c, d), dtype=np.float64)
    rows = min(_CHUNK_ROWS, n_s)
    scratch = _Scratch()
    spread = f32(spread_w / math.sqrt(r))

    def task(k: int, j0: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([stream, k])
        order = np.argsort(key[label[j0 : j0 + rows]], kind="stable")
        lab = label[j0 : j0 + rows][order]
        n = lab.size
        blk, t = scratch.get("blk", n, d), scratch.get("tmp", n, d)
        _fill_noise(rng, blk, _NOISE_W)
        np.take(centres, lab, axis=0, out=t, mode="clip")
        blk += t
        if mix_table is not None:
            other = mix_table[lab, rng.integers(0, mix_table.shape[1], size=n)]
            np.take(centres, other, axis=0, out=t, mode="clip")
            t *= (rng.random(n, dtype=f32) * f32(mix_w))[:, None]
            blk += t
        coords = rng.standard_normal((n, r), dtype=f32)
        coords *= spread
        _add_local(blk, coords, cluster_topic[lab], bases, t)
        _normalize_rows(blk)
        run_starts, run_ends = _runs(lab)
        part = np.empty((run_starts.size, d), dtype=np.float64)
        for i, (a, b) in enumerate(zip(run_starts, run_ends, strict=True)):
            part[i] = blk[a:b].sum(axis=0)
        # back to the chunk's row order, written sequentially
        np.take(blk, np.argsort(order), axis=0, out=sources[j0 : j0 + n], mode="clip")
        return lab[run_starts], part

    def consume(result: tuple[np.ndarray, np.ndarray]) -> None:
        ids, part = result
        sums[ids] += part

    _run_chunks(task, n_s, rows, consume)
    return sources, sums


def _make_questions(
    stream: int,
    sources: np.ndarray,
    first_pos: np.ndarray,
    source_topic: np.ndarray,
    bases: np.ndarray,
) -> np.ndarray:
    """Questions float32 [Q, d]: unit vectors at a drawn cosine to their first positive.

    Each question turns its positive towards a random direction that is
    partly isotropic and partly inside the positive's topic subspace (which
    moves it towards other sources of the cluster).
    """
    f32 = np.float32
    n_q = first_pos.size
    d = sources.shape[1]
    r = bases.shape[1]
    questions = np.empty((n_q, d), dtype=f32)
    rows = min(_CHUNK_ROWS, n_q)
    scratch = _Scratch()
    lo, hi = _QUESTION_COS
    local = f32(_QUESTION_LOCAL / math.sqrt(r))

    def task(k: int, j0: int) -> None:
        rng = np.random.default_rng([stream, k])
        pos = first_pos[j0 : j0 + rows]
        order = np.argsort(source_topic[pos], kind="stable")
        pos = pos[order]
        n = pos.size
        p, m, t = scratch.get("p", n, d), scratch.get("m", n, d), scratch.get("tmp", n, d)
        np.take(sources, pos, axis=0, out=p, mode="clip")
        _fill_noise(rng, m, 1.0 - _QUESTION_LOCAL)
        coords = rng.standard_normal((n, r), dtype=f32)
        coords *= local
        _add_local(m, coords, source_topic[pos], bases, t)
        # keep the part orthogonal to the positive, then rotate towards it
        np.multiply(p, np.einsum("ij,ij->i", m, p)[:, None], out=t)
        m -= t
        _normalize_rows(m)
        cos = rng.uniform(lo, hi, size=n).astype(f32)
        m *= np.sqrt(f32(1.0) - cos * cos)[:, None]
        np.multiply(p, cos[:, None], out=t)
        m += t
        _normalize_rows(m)
        np.take(m, np.argsort(order), axis=0, out=questions[j0 : j0 + n], mode="clip")

    _run_chunks(task, n_q, rows, lambda _: None)
    return questions


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


def make_corpus(
    n_sources: int,
    n_clusters: int,
    n_pairs: int,
    d: int = 384,
    *,
    seed: int = 0,
    skew: float = 1.0,
    overlap: float = 0.5,
    multi_positive: float = 0.1,
    cluster_mismatch: float = 0.0,
    n_questions: int | None = None,
) -> dict[str, np.ndarray]:
    """Draw a synthetic clustered retrieval corpus.

    The layout is hierarchical. About ``sqrt(C)`` topic directions are drawn on
    the unit sphere, each with its own ``min(8, d)``-dimensional subspace.
    A cluster's generating centre is its topic direction plus a random position
    in the topic subspace plus a private random direction. A source is its
    centre plus a spread along the topic subspace, plus a random lean towards
    one of the cluster's nearest clusters, plus isotropic noise; so clusters
    close in a topic overlap, and the sources nearest a question outside its
    own cluster come from several neighbouring clusters, while the rest of
    the sphere stays far. Cluster sizes follow log-normal weights.

    Sources are then labelled the way k-means labels them:
    ``centroid_embeddings`` is the mean of each generated cluster (one Lloyd
    update) and ``source_cluster_ids`` the exact nearest of those centroids by
    cosine (the assignment step), so a few boundary sources change cluster.

    Questions are noisy copies of their first positive source, at a cosine
    drawn uniformly in [0.6, 0.85] and turned partly along the topic subspace,
    so the positive is usually but not always the top hit (about 70-90 % of
    the time at ``d=384``).

    Generation costs ``O(S d (C + 8))`` time and, beyond the returned arrays,
    a few chunk buffers of memory: on two CPU cores a million 384-wide sources
    in 1000 clusters with a million pairs take well under a minute.

    Parameters
    ----------
    n_sources : int
        Number of sources ``S`` (>= 1).
    n_clusters : int
        Number of clusters ``C`` (1 <= C <= S).
    n_pairs : int
        Number of (question, positive source) pairs ``P`` (>= 1).
    d : int, default 384
        Embedding width (>= 2).
    seed : int, default 0
        Seed for ``numpy.random.default_rng``; the output is a pure function
        of the arguments.
    skew : float, default 1.0
        Heaviness of the cluster-size tail (>= 0). Cluster weights are
        log-normal with sigma ``1.3 * skew``; at 1.0 the largest cluster is
        tens of times the median, at 0 all clusters are (nearly) equal.
    overlap : float, default 0.5
        How much neighbouring clusters overlap, in [0, 1]. At 0.5 and
        ``d=384`` roughly 90-98 % of a question's exact top-3 sources lie in
        its own cluster (more with many sources per cluster, see
        :func:`top_hits_share`); at 0 clusters are well separated (~100 %),
        at 1 about half the top-3 sources lie outside. Small ``d`` (< 128)
        cannot keep many clusters apart and overlaps more.
    multi_positive : float, default 0.1
        Target fraction of questions with 2 or 3 positives, in [0, 1]. Extra
        positives are drawn from the first positive's cluster (75 %) or one
        of its 3 nearest clusters by centroid.
    cluster_mismatch : float, default 0.0
        Fraction of pairs, in [0, 1], whose ``pair_cluster_ids`` entry is
        replaced by a different random cluster (mimics noisy cluster labels).
        Exactly ``round(cluster_mismatch * P)`` pairs are changed (none when
        ``C == 1``).
    n_questions : int, optional
        Number of questions ``Q`` (1 <= Q <= P). Defaults to
        ``round(P / (1 + 1.5 * multi_positive))``, which makes about a
        ``multi_positive`` share of the questions have 2 or 3 positives.
        When ``P > 3 Q`` the positives are spread evenly instead, so questions
        get more than three. First positives are distinct sources while
        ``Q <= S``; otherwise every source is a first positive about ``Q / S``
        times.

    Returns
    -------
    dict of str to numpy.ndarray
        ``source_embeddings`` : float32 [S, d]
            Unit-norm source embeddings, in random cluster order.
        ``question_embeddings`` : float32 [Q, d]
            Unit-norm question embeddings.
        ``centroid_embeddings`` : float32 [C, d]
            Mean of each generated cluster's sources (not normalised; norms
            below 1).
        ``pair_indices`` : int64 [P, 2]
            (question, source) pairs, grouped by question in increasing order,
            each question's first positive first. Every question has at least
            one pair; pairs are distinct whenever ``S`` allows it.
        ``pair_cluster_ids`` : int64 [P]
            Cluster of each pair's source, except for the ``cluster_mismatch``
            share of pairs, which carry another cluster.
        ``source_cluster_ids`` : int64 [S]
            Nearest centroid of each source by cosine, in [0, C).

    Raises
    ------
    ValueError
        If a count or fraction is out of range.
    TypeError
        If an argument has the wrong type.

    Examples
    --------
    >>> c = make_corpus(2000, 20, 500, d=64, seed=1)
    >>> c["source_embeddings"].shape, c["pair_indices"].shape
    ((2000, 64), (500, 2))
    """
    n_s = _check_int("n_sources", n_sources, 1)
    n_c = _check_int("n_clusters", n_clusters, 1)
    if n_c > n_s:
        fail("n_clusters", f"be <= n_sources ({n_s})", repr(n_clusters))
    n_p = _check_int("n_pairs", n_pairs, 1)
    d = _check_int("d", d, 2)
    seed = _check_int("seed", seed, 0)
    skew = _check_real("skew", skew, hi=None)
    overlap = _check_real("overlap", overlap)
    multi_positive = _check_real("multi_positive", multi_positive)
    cluster_mismatch = _check_real("cluster_mismatch", cluster_mismatch)
    if n_questions is None:
        n_q = max(1, min(n_p, round(n_p / (1.0 + 1.5 * multi_positive))))
    else:
        n_q = _check_int("n_questions", n_questions, 1)
        if n_q > n_p:
            fail("n_questions", f"be <= n_pairs ({n_p})", repr(n_questions))

    rng = np.random.default_rng(seed)
    f32 = np.float32

    # --- layout: topics, their subspaces, cluster centres ---------------------
    n_t = max(1, min(n_c, round(math.sqrt(n_c))))
    r = min(_LATENT_DIM, d)
    topic_dirs = _normalize_rows(rng.standard_normal((n_t, d)).astype(f32))
    bases = np.empty((n_t, r, d), dtype=f32)
    for t in range(n_t):
        q, _ = np.linalg.qr(rng.standard_normal((d, r)))
        bases[t] = q.T
    cluster_topic = (rng.permutation(n_c) % n_t).astype(np.int64)
    private_w = _PRIVATE_W[0] + overlap * (_PRIVATE_W[1] - _PRIVATE_W[0])
    spread_w = _SPREAD_W[0] + overlap * (_SPREAD_W[1] - _SPREAD_W[0])
    mix_w = _MIX_W[0] + overlap * (_MIX_W[1] - _MIX_W[0])
    centres = _normalize_rows(rng.standard_normal((n_c, d)).astype(f32))
    centres *= f32(private_w)
    centres += f32(_TOPIC_W) * topic_dirs[cluster_topic]
    latent = rng.standard_normal((n_c, r)).astype(f32) * f32(_LATENT_W / math.sqrt(r))
    by_topic = np.argsort(cluster_topic, kind="stable")
    grouped = centres[by_topic]
    _add_local(grouped, latent[by_topic], cluster_topic[by_topic], bases, np.empty_like(grouped))
    centres[by_topic] = _normalize_rows(grouped)
    del grouped
    n_mix = min(_MIX_NEIGHBOURS, n_c - 1)
    mix_table = None
    if n_mix > 0 and mix_w > 0:
        mix_table = _nearest_rows(centres, centres, n_mix + 1)[:, 1:]

    # --- sources --------------------------------------------------------------
    sizes = _cluster_sizes(rng, n_s, n_c, skew)
    gen_label = np.repeat(np.arange(n_c, dtype=np.int64), sizes)[rng.permutation(n_s)]
    streams = rng.integers(0, 2**63, size=2)
    sources, sums = _make_sources(
        int(streams[0]), gen_label, centres, cluster_topic, bases, mix_table, spread_w, mix_w
    )

    # --- k-means style labels: one update step, then the assignment step ------
    centroids = (sums / sizes[:, None]).astype(f32)
    del sums
    unit_centroids = _normalize_rows(centroids.copy())
    source_cluster = _nearest_rows(sources, unit_centroids, 1)[:, 0]

    # --- questions and their positives ---------------------------------------
    if n_q <= n_s:
        first_pos = rng.choice(n_s, size=n_q, replace=False).astype(np.int64)
    else:
        reps = -(-n_q // n_s)
        first_pos = np.concatenate([rng.permutation(n_s) for _ in range(reps)])[:n_q]
    questions = _make_questions(
        int(streams[1]), sources, first_pos, cluster_topic[gen_label], bases
    )
    del gen_label

    n_extra_per_q = _extra_counts(rng, n_q, n_p - n_q, multi_positive)
    pair_indices = _draw_pairs(
        rng, first_pos, n_extra_per_q, source_cluster, unit_centroids, n_s, n_c
    )

    pair_cluster = source_cluster[pair_indices[:, 1]]
    n_mis = round(cluster_mismatch * n_p) if n_c > 1 else 0
    if n_mis:
        hit = rng.choice(n_p, size=n_mis, replace=False)
        pair_cluster[hit] = (pair_cluster[hit] + rng.integers(1, n_c, size=n_mis)) % n_c

    return {
        "source_embeddings": sources,
        "question_embeddings": questions,
        "centroid_embeddings": centroids,
        "pair_indices": pair_indices,
        "pair_cluster_ids": pair_cluster,
        "source_cluster_ids": source_cluster,
    }


def _extra_counts(rng: np.random.Generator, n_q: int, extra: int, target: float) -> np.ndarray:
    """How many extra positives each question gets (int64 [Q], summing to ``extra``).

    Questions with extras get one or two, about ``target * Q`` of them,
    unless ``extra > 2 Q`` forces an even spread.
    """
    counts = np.zeros(n_q, dtype=np.int64)
    if extra <= 0:
        return counts
    if extra > 2 * n_q:
        counts += extra // n_q
        counts[rng.choice(n_q, size=extra % n_q, replace=False)] += 1
        return counts
    n_multi = min(max(round(target * n_q), -(-extra // 2)), extra, n_q)
    who = rng.choice(n_q, size=n_multi, replace=False)
    counts[who] = 1
    counts[who[: extra - n_multi]] = 2
    return counts


def _draw_pairs(
    rng: np.random.Generator,
    first_pos: np.ndarray,
    n_extra: np.ndarray,
    source_cluster: np.ndarray,
    unit_centroids: np.ndarray,
    n_s: int,
    n_c: int,
) -> np.ndarray:
    """Pairs int64 [P, 2]: each question's first positive, then its extras."""
    n_q = first_pos.size
    counts = n_extra + 1
    pair_q = np.repeat(np.arange(n_q, dtype=np.int64), counts)
    starts = np.cumsum(counts) - counts
    pair_s = np.empty(pair_q.size, dtype=np.int64)
    pair_s[starts] = first_pos
    is_extra = np.ones(pair_q.size, dtype=bool)
    is_extra[starts] = False
    slots = np.flatnonzero(is_extra)
    if slots.size:
        owner = pair_q[slots]
        home = source_cluster[first_pos[owner]]
        layout_order = np.argsort(source_cluster, kind="stable")
        offsets = np.zeros(n_c + 1, dtype=np.int64)
        np.cumsum(np.bincount(source_cluster, minlength=n_c), out=offsets[1:])
        sizes = np.diff(offsets)

        target = home.copy()
        n_nb = min(_NEIGHBOURS, n_c - 1)
        if n_nb > 0:
            nbrs = _nearest_rows(unit_centroids, unit_centroids, n_nb + 1)
            own = np.arange(n_c)[:, None]
            # drop the cluster itself (or the last column if a tie hid it)
            self_col = np.where((nbrs == own).any(axis=1), (nbrs == own).argmax(axis=1), n_nb)
            keep = np.arange(n_nb + 1)[None, :] != self_col[:, None]
            nbrs = nbrs[keep].reshape(n_c, n_nb)
            away = rng.random(slots.size) >= _EXTRA_SAME_CLUSTER
            pick = nbrs[home[away], rng.integers(0, n_nb, size=int(away.sum()))]
            target[away] = np.where(sizes[pick] > 0, pick, home[away])

        def member(clusters: np.ndarray) -> np.ndarray:
            u = rng.random(clusters.size)
            off = (u * sizes[clusters]).astype(np.int64)
            return layout_order[offsets[clusters] + off]

        pair_s[slots] = member(target)
        # redraw extras that repeat an earlier positive of the same question
        multi = np.flatnonzero(np.repeat(counts > 1, counts))
        for attempt in range(12):
            bad = _repeats(pair_q, pair_s, multi)
            if bad.size == 0:
                break
            if attempt < 8:
                pair_s[bad] = member(source_cluster[first_pos[pair_q[bad]]])
            else:
                pair_s[bad] = rng.integers(0, n_s, size=bad.size)
        if n_s >= int(counts.max()):
            # last resort: replace what is still repeated by unused sources
            for q in np.unique(pair_q[_repeats(pair_q, pair_s, multi)]):
                row = pair_s[starts[q] : starts[q] + counts[q]]
                dup = np.ones(row.size, dtype=bool)
                dup[np.unique(row, return_index=True)[1]] = False
                free = np.setdiff1d(np.arange(n_s), row)
                row[dup] = rng.choice(free, size=int(dup.sum()), replace=False)
    return np.stack([pair_q, pair_s], axis=1)


def _repeats(pair_q: np.ndarray, pair_s: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Those of ``rows`` whose (question, source) already occurs in an earlier row.

    ``rows`` must hold every pair of the questions concerned.
    """
    q = pair_q[rows]
    s = pair_s[rows]
    order = np.lexsort((rows, s, q))
    q, s = q[order], s[order]
    dup = (q[1:] == q[:-1]) & (s[1:] == s[:-1])
    return rows[order[1:][dup]]


def top_hits_share(
    corpus: dict[str, np.ndarray], k: int = 3, sample: int = 1000, seed: int = 0
) -> float:
    """Share of questions' exact top-``k`` sources that lie in their own cluster.

    A question's cluster is the ``pair_cluster_ids`` entry of its first pair.
    Neighbours are exact, by cosine over all sources.

    Parameters
    ----------
    corpus : dict of str to numpy.ndarray
        A corpus as returned by :func:`make_corpus` (the keys
        ``source_embeddings``, ``question_embeddings``, ``pair_indices``,
        ``pair_cluster_ids`` and ``source_cluster_ids`` are read).
    k : int, default 3
        Neighbours per question, 1 <= k <= S.
    sample : int, default 1000
        Number of questions sampled (without replacement) from those with a
        pair; all of them when there are fewer.
    seed : int, default 0
        Seed of the question sample.

    Returns
    -------
    float
        Fraction in [0, 1] of the sampled questions' top-``k`` sources whose
        ``source_cluster_ids`` equals the question's cluster.
    """
    sources = corpus["source_embeddings"]
    k = _check_int("k", k, 1)
    if k > sources.shape[0]:
        fail("k", f"be <= the number of sources ({sources.shape[0]})", repr(k))
    sample = _check_int("sample", sample, 1)
    seed = _check_int("seed", seed, 0)
    pairs = np.asarray(corpus["pair_indices"])
    pair_cluster = np.asarray(corpus["pair_cluster_ids"])
    source_cluster = np.asarray(corpus["source_cluster_ids"])
    qids, first = np.unique(pairs[:, 0], return_index=True)
    if qids.size == 0:
        fail("corpus", "hold at least one pair in `pair_indices`", "none")
    rng = np.random.default_rng(seed)
    pick = rng.choice(qids.size, size=min(sample, qids.size), replace=False)
    q = np.asarray(corpus["question_embeddings"][qids[pick]], dtype=np.float32)
    q = _normalize_rows(q.copy())
    own = pair_cluster[first[pick]]

    m = q.shape[0]
    n_s = sources.shape[0]
    best_val = np.full((m, k), -np.inf, dtype=np.float32)
    best_idx = np.zeros((m, k), dtype=np.int64)
    step = min(n_s, max(k, min(_CHUNK_ROWS, (_TILE_ELEMS >> 2) // m)))
    blk_buf = np.empty((step, sources.shape[1]), dtype=np.float32)
    sim_buf = np.empty((m, step), dtype=np.float32)
    for i0 in range(0, n_s, step):
        part_src = sources[i0 : i0 + step]
        blk = blk_buf[: part_src.shape[0]]
        blk[...] = part_src
        _normalize_rows(blk)
        sims = np.matmul(q, blk.T, out=sim_buf[:, : blk.shape[0]])
        kk = min(k, sims.shape[1])
        part = np.argpartition(sims, -kk, axis=1)[:, -kk:]
        vals = np.concatenate([best_val, np.take_along_axis(sims, part, axis=1)], axis=1)
        idx = np.concatenate([best_idx, part + i0], axis=1)
        top = np.argpartition(-vals, k - 1, axis=1)[:, :k]
        best_val = np.take_along_axis(vals, top, axis=1)
        best_idx = np.take_along_axis(idx, top, axis=1)
    return float(np.mean(source_cluster[best_idx] == own[:, None]))
