"""Fill rows of negatives: tier 3's ids first, then the sampled tiers with their fallbacks.

Order of filling a row (every step excludes the question's positives and every
id already in the row):

1. tier 3, the most similar sources outside the pair's cluster (given);
2. tier 1 from the pair's cluster; its shortfall goes to
3. tier 2 from the adjacent clusters; its shortfall and tier 3's go to
4. tier 4 from the distant clusters (neither the pair's nor adjacent); when those
   run out, from any cluster but the pair's (still labelled 4); when that runs out
   too, from the pair's own cluster (labelled 1, the only place left).

Each excluded point carries its relation to the row (own cluster, adjacent,
distant), so a step only looks at the exclusions that can fall in its domain.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .layout import ClusterLayout, PositiveSets, csr_expand
from .tiers import complement_domain, sample_domain, union_domain

__all__ = ["STAGES", "fill_rows"]

#: Sampling steps and the stream id of each (uniforms are keyed by it).
STAGES = {"tier1": 1, "tier2": 2, "distant": 3, "outside": 4, "anywhere": 5}
_OWN, _ADJ, _FAR = 1, 2, 4


def _relation(src_cluster: np.ndarray, row_cluster: np.ndarray, row_adj: np.ndarray) -> np.ndarray:
    """1 (own cluster), 2 (adjacent) or 4 (distant) per point; inputs [E], [E], [E, a]."""
    in_adj = (src_cluster[:, None] == row_adj).any(axis=1) if row_adj.shape[1] else False
    return np.where(src_cluster == row_cluster, _OWN, np.where(in_adj, _ADJ, _FAR))


def fill_rows(
    layout: ClusterLayout,
    positives: PositiveSets,
    question: np.ndarray,
    cluster: np.ndarray,
    tier3: np.ndarray,
    counts: tuple[int, int, int, int],
    uniforms: Callable[[int, int], np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Assemble rows of negatives.

    Parameters
    ----------
    layout : ClusterLayout
    positives : PositiveSets
    question, cluster : int64 [R]
        The question and the pair cluster of each row.
    tier3 : int64 [R, n3]
        Tier-3 ids, best first, ``-1`` where the search ran short.
    counts : 4 ints
        Requested negatives of tiers 1-4 per row.
    uniforms : callable ``(stage, width) -> float64 [R, width]``
        The rows' random numbers for a sampling step (see :data:`STAGES`).

    Returns
    -------
    ids : int64 [R, n_neg]
        Source ids, columns ordered by tier label (stable).
    tiers : int64 [R, n_neg]
        Label of each id: where it really came from.
    short : dict
        Shortfalls passed on by each step, summed over the rows.
    """
    n1, n2, n3, n4 = counts
    n_neg = n1 + n2 + n3 + n4
    rows = question.size
    adj = layout.adjacent[cluster]
    ids = np.full((rows, n_neg), -1, dtype=np.int64)
    tiers = np.zeros((rows, n_neg), dtype=np.int64)
    fill = np.zeros(rows, dtype=np.int64)

    # Excluded points: (row, layout position, relation to the row).
    owner, at = csr_expand(positives.offsets, question)
    pos_src = positives.sources[at]
    ex_row = [owner]
    ex_pos = [layout.rank[pos_src]]
    ex_rel = [_relation(layout.source_cluster[pos_src], cluster[owner], adj[owner])]

    def put(
        sel: np.ndarray, new: np.ndarray, label: int | np.ndarray, rel: np.ndarray | int
    ) -> None:
        ok = new >= 0
        width = new.shape[1]
        f0 = int(fill[0]) if rows else 0
        if sel.size == rows and ok.all() and np.isscalar(label) and (fill == f0).all():
            # Common case: every row gets `width` ids in the same columns.
            ids[:, f0 : f0 + width] = new
            tiers[:, f0 : f0 + width] = label
            fill[:] += width
            r = np.repeat(sel, width)
            vals = new.reshape(-1)
        elif ok.any():
            r = np.broadcast_to(sel[:, None], ok.shape)[ok]
            col = (fill[sel][:, None] + np.cumsum(ok, axis=1) - 1)[ok]
            vals = new[ok]
            ids[r, col] = vals
            tiers[r, col] = label if np.isscalar(label) else label[ok]
            fill[sel] += ok.sum(axis=1)
        else:
            return
        ex_row.append(r)
        ex_pos.append(layout.rank[vals])
        ex_rel.append(np.broadcast_to(rel, ok.shape)[ok] if np.ndim(rel) else np.full(r.size, rel))

    def draw(sel, domain, k, stage, rel_mask, width):
        er = np.concatenate(ex_row)
        keep = (np.concatenate(ex_rel) & rel_mask) > 0
        local = np.full(rows, -1, dtype=np.int64)
        local[sel] = np.arange(sel.size)
        er = local[er[keep]]
        ep = np.concatenate(ex_pos)[keep]
        inside = er >= 0
        u = uniforms(stage, width)[sel]
        lpos, got = sample_domain(domain[0], domain[1], k, er[inside], ep[inside], u)
        return np.where(lpos >= 0, layout.order[np.maximum(lpos, 0)], -1), got

    every = np.arange(rows)
    short: dict[str, int] = {}
    if n3:
        t3c = layout.source_cluster[np.maximum(tier3, 0)]
        rel3 = _relation(t3c.reshape(-1), np.repeat(cluster, n3), np.repeat(adj, n3, axis=0))
        put(every, tier3, 3, rel3.reshape(tier3.shape))
        need3 = n3 - (tier3 >= 0).sum(axis=1)
    else:
        need3 = np.zeros(rows, dtype=np.int64)
    short["tier3"] = int(need3.sum())

    k1 = np.full(rows, n1, dtype=np.int64)
    dom = union_domain(layout.offsets, cluster[:, None])
    new, got = draw(every, dom, k1, STAGES["tier1"], _OWN, n1)
    put(every, new, 1, _OWN)
    need1 = k1 - got
    short["tier1"] = int(need1.sum())

    k2 = n2 + need1
    new, got = draw(every, union_domain(layout.offsets, adj), k2, STAGES["tier2"], _ADJ, n1 + n2)
    put(every, new, 2, _ADJ)
    need2 = k2 - got
    short["tier2"] = int(need2.sum())

    k4 = n4 + need2 + need3
    own_adj = np.concatenate([cluster[:, None], adj], axis=1)
    dom = complement_domain(layout.offsets, own_adj, layout.n_sources)
    new, got = draw(every, dom, k4, STAGES["distant"], _FAR, n_neg)
    put(every, new, 4, _FAR)
    need = k4 - got
    short["distant"] = int(need.sum())

    sel = np.flatnonzero(need)
    if sel.size:  # distant clusters exhausted: anything outside the pair's cluster
        dom = complement_domain(layout.offsets, cluster[sel, None], layout.n_sources)
        new, got = draw(sel, dom, need[sel], STAGES["outside"], _ADJ | _FAR, n_neg)
        rel = _relation(layout.source_cluster[np.maximum(new, 0)].reshape(-1),
                        np.repeat(cluster[sel], new.shape[1]),
                        np.repeat(adj[sel], new.shape[1], axis=0))  # fmt: skip
        put(sel, new, 4, rel.reshape(new.shape))
        need[sel] -= got
    short["outside"] = int(need.sum())

    sel = np.flatnonzero(need)
    if sel.size:  # only the pair's own cluster is left
        dom = union_domain(layout.offsets, cluster[sel, None])
        new, got = draw(sel, dom, need[sel], STAGES["anywhere"], _OWN, n_neg)
        put(sel, new, 1, _OWN)
        need[sel] -= got
    if need.any():
        raise RuntimeError(
            f"row {int(np.flatnonzero(need)[0])} could not be filled: fewer than n_neg "
            "non-positive sources; the caller must check feasibility first"
        )
    if rows and (tiers == tiers[:1]).all():
        perm = np.argsort(tiers[0], kind="stable")  # one pattern for all rows
        return ids[:, perm], tiers[:, perm], short
    order = np.argsort(tiers, axis=1, kind="stable")
    return np.take_along_axis(ids, order, 1), np.take_along_axis(tiers, order, 1), short
