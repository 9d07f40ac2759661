"""Positive pairs of the synthetic corpus, and how often top hits stay in-cluster."""

from __future__ import annotations

import numpy as np

from .._checks import fail
from .params import (
    _CHUNK_ROWS,
    _EXTRA_SAME_CLUSTER,
    _NEIGHBOURS,
    _TILE_ELEMS,
    _check_int,
    _nearest_rows,
    _normalize_rows,
)


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
