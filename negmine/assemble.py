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

With a near-duplicate test (``reject``), every sampling step checks what it
drew: rejected ids become exclusions of the row and the rows that lost ids draw
again, only those rows and only what they lost, from their own stream for that
round. Tiers 1 and 2 redraw at most :data:`MAX_ROUNDS` times and then pass what
is missing on, as for any shortfall. The steps of tier 4 and the last resort
redraw until the row is full or their domain is used up (each round removes at
least one source from the domain), so tier 4 widens past the distant clusters
only when every distant source that is neither a positive nor a near-duplicate
is in the row, and a row is refused only when every such source of the corpus
is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .layout import ClusterLayout, PositiveSets, csr_expand
from .tiers import complement_domain, sample_domain, union_domain

__all__ = [
    "COUNTER_KEYS",
    "MAX_ROUNDS",
    "RNG_BLOCK",
    "SHORT_KEYS",
    "STAGES",
    "RowsUnfillable",
    "block_uniforms",
    "fill_rows",
    "redraw_stage",
]

#: Sampling steps and the stream id of each (uniforms are keyed by it).
#: ``tier3_window`` draws tier 3 from its rank window (keyed by blocks of
#: tier-3 queries, not pairs).
STAGES = {"tier1": 1, "tier2": 2, "distant": 3, "outside": 4, "anywhere": 5, "tier3_window": 6}
#: Pairs per random stream. Fixed: the output must not depend on batching.
RNG_BLOCK = 1024
#: Redraw rounds after near-duplicates were rejected, in tiers 1 and 2.
MAX_ROUNDS = 16
#: Shortfalls passed on by each step (keys of :func:`fill_rows`'s counts).
SHORT_KEYS = ("tier1", "tier2", "tier3", "distant", "outside")
#: The other counts :func:`fill_rows` returns, summed over its rows:
#: ``fallback<t>`` slots of tier t's quota filled by another tier;
#: ``near_dup<t>`` near-duplicates drawn and rejected by steps labelled t;
#: ``near_dup_short`` quota slots of tiers 1, 2, 4 that fell back because of them.
COUNTER_KEYS = (
    "fallback1",
    "fallback2",
    "fallback3",
    "fallback4",
    "near_dup1",
    "near_dup2",
    "near_dup4",
    "near_dup_short",
)
_REDRAW_BASE = 16


def redraw_stage(step: str, round_: int) -> int:
    """Stream id of redraw round ``round_ >= 1`` of sampling step ``step``."""
    return _REDRAW_BASE + 8 * (round_ - 1) + STAGES[step]


class RowsUnfillable(ValueError):
    """A row ran out of sources that are neither positives nor near-duplicates.

    Attributes
    ----------
    row : int
        The first such row (index into the rows given to :func:`fill_rows`).
    have : int
        Ids it holds.
    """

    def __init__(self, row: int, have: int):
        super().__init__(f"row {row} holds only {have} ids that are neither positives nor "
                         "near-duplicates")  # fmt: skip
        self.row = row
        self.have = have


def block_uniforms(
    seed: int, p0: int, p1: int, counts: tuple[int, int, int, int]
) -> Callable[[int, int], np.ndarray]:
    """The random numbers of pairs ``p0:p1``, keyed by (seed, block of RNG_BLOCK pairs).

    Every block has one stream for the three common steps, drawn in a fixed
    order and shape (``[RNG_BLOCK, n1]``, ``[RNG_BLOCK, n1 + n2]``,
    ``[RNG_BLOCK, n_neg]``), and one stream per rare step, so a pair's numbers
    never depend on which other pairs are processed with it.

    Returns
    -------
    callable ``(stage, width) -> float64 [p1 - p0, >= width]``
    """
    n1, n2, n3, n4 = counts
    n_neg = n1 + n2 + n3 + n4
    common = {STAGES["tier1"]: n1, STAGES["tier2"]: n1 + n2, STAGES["distant"]: n_neg}
    blocks = range(p0 // RNG_BLOCK, -(-p1 // RNG_BLOCK))
    off = p0 - blocks.start * RNG_BLOCK
    cache: dict[int, np.ndarray] = {}

    def uniforms(stage: int, width: int) -> np.ndarray:
        if stage >= _REDRAW_BASE:  # redraw rounds: many, small, not kept
            u = np.concatenate(
                [np.random.default_rng([seed, b, stage]).random((RNG_BLOCK, n_neg))
                 for b in blocks]
            )[off : off + p1 - p0]  # fmt: skip
            if u.shape[1] < width:
                raise ValueError(f"stage {stage} needs {width} numbers per row; has {u.shape[1]}")
            return u
        if stage not in cache:
            if stage in common:
                parts: dict[int, list[np.ndarray]] = {st: [] for st in common}
                for b in blocks:
                    gen = np.random.default_rng([seed, b])
                    for st, w in common.items():
                        parts[st].append(gen.random((RNG_BLOCK, w)))
                for st in common:
                    cache[st] = np.concatenate(parts[st])[off : off + p1 - p0]
            else:
                cache[stage] = np.concatenate(
                    [np.random.default_rng([seed, b, stage]).random((RNG_BLOCK, n_neg))
                     for b in blocks]
                )[off : off + p1 - p0]  # fmt: skip
        u = cache[stage]
        if u.shape[1] < width:
            raise ValueError(f"stage {stage} needs {width} numbers per row; has {u.shape[1]}")
        return u

    return uniforms


_OWN, _ADJ, _FAR = 1, 2, 4


def _relation(src_cluster: np.ndarray, row_cluster: np.ndarray, row_adj: np.ndarray) -> np.ndarray:
    """1 (own cluster), 2 (adjacent) or 4 (distant) per point.

    ``src_cluster`` [R, w], ``row_cluster`` [R], ``row_adj`` [R, a] -> [R, w].
    """
    in_adj = (src_cluster[:, :, None] == row_adj[:, None, :]).any(axis=2)
    return np.where(src_cluster == row_cluster[:, None], _OWN, np.where(in_adj, _ADJ, _FAR))


def fill_rows(
    layout: ClusterLayout,
    positives: PositiveSets,
    question: np.ndarray,
    cluster: np.ndarray,
    tier3: np.ndarray,
    counts: tuple[int, int, int, int],
    uniforms: Callable[[int, int], np.ndarray],
    reject: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
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
    reject : callable ``(rows int64 [m], ids int64 [m]) -> bool [m]``, optional
        The near-duplicate test: True where source ``ids[i]`` must not go into
        row ``rows[i]``. Sampled ids it rejects are excluded and redrawn.

    Returns
    -------
    ids : int64 [R, n_neg]
        Source ids, columns ordered by tier label (stable).
    tiers : int64 [R, n_neg]
        Label of each id: where it really came from.
    counts : dict
        Summed over the rows: the shortfall passed on by each step
        (:data:`SHORT_KEYS`) and the counts of :data:`COUNTER_KEYS`.

    Raises
    ------
    RowsUnfillable
        With ``reject``, when a row cannot be filled with ids it accepts.
    """
    n1, n2, n3, n4 = counts
    n_neg = n1 + n2 + n3 + n4
    f = _RowFiller(layout, positives, question, cluster, n_neg, uniforms, reject)
    rows = f.rows
    every = np.arange(rows)
    short: dict[str, int] = {}
    if n3:
        rel3 = _relation(layout.source_cluster[np.maximum(tier3, 0)], cluster, f.adj)
        f.put(every, tier3, 3, rel3)
        need3 = n3 - (tier3 >= 0).sum(axis=1)
    else:
        need3 = np.zeros(rows, dtype=np.int64)
    short["tier3"] = int(need3.sum())

    k1 = np.full(rows, n1, dtype=np.int64)
    dom = union_domain(layout.offsets, cluster[:, None])
    got, first, _ = f.take(every, dom, k1, "tier1", _OWN, n1, 1, _scalar(_OWN), MAX_ROUNDS)
    need1 = k1 - got
    short["tier1"] = int(need1.sum())
    fb1, nd_short = _own_fallback(n1, got, first)

    k2 = n2 + need1
    dom = union_domain(layout.offsets, f.adj)
    got, first, _ = f.take(every, dom, k2, "tier2", _ADJ, n1 + n2, 2, _scalar(_ADJ), MAX_ROUNDS)
    need2 = k2 - got
    short["tier2"] = int(need2.sum())
    fb2, nd2 = _own_fallback(n2, got, first)

    fb4, nd4 = _fill_tier4(f, n4 + need2 + need3, n4, short)
    short.update(
        fallback1=fb1, fallback2=fb2, fallback3=short["tier3"], fallback4=fb4,
        near_dup1=f.removed[1], near_dup2=f.removed[2], near_dup4=f.removed[4],
        near_dup_short=nd_short + nd2 + nd4,
    )  # fmt: skip
    return f.result(short)


def _own_fallback(n: int, got: np.ndarray, first: np.ndarray) -> tuple[int, int]:
    """Quota slots of a tier (n per row) filled elsewhere, and those due to rejections."""
    fb = np.maximum(n - got, 0)
    return int(fb.sum()), int((fb - np.maximum(n - first, 0)).sum())


def _scalar(rel: int) -> Callable[[np.ndarray, np.ndarray], int]:
    return lambda _sel, _new: rel


def _fill_tier4(f: _RowFiller, k4: np.ndarray, n4: int, short: dict[str, int]) -> tuple[int, int]:
    """Tier 4 and its fallbacks (outside the pair's cluster, then the cluster itself).

    Returns the quota slots of tier 4 filled elsewhere and those due to
    near-duplicates.
    """
    lay, cluster, every = f.layout, f.cluster, np.arange(f.rows)
    own_adj = np.concatenate([cluster[:, None], f.adj], axis=1)
    dom = complement_domain(lay.offsets, own_adj, lay.n_sources)
    got4, _, rej4 = f.take(every, dom, k4, "distant", _FAR, f.n_neg, 4, _scalar(_FAR), None)
    need = k4 - got4
    short["distant"] = int(need.sum())
    # Without near-duplicates tier 4 would have had the room outside the
    # pair's cluster as it stood when tier 4 began: what the distant step drew
    # (kept or rejected) plus what the outside step's first draw found.
    room4 = got4 + rej4
    sel = np.flatnonzero(need)
    if sel.size:  # distant clusters exhausted: anything outside the pair's cluster
        dom = complement_domain(lay.offsets, cluster[sel, None], lay.n_sources)
        got, first, _ = f.take(sel, dom, need[sel], "outside", _ADJ | _FAR, f.n_neg, 4,
                               f.relation_of, None)  # fmt: skip
        room4[sel] += first
        got4[sel] += got
        need[sel] -= got
    short["outside"] = int(need.sum())
    fb4, nd4 = _own_fallback(n4, got4, np.minimum(k4, room4))
    sel = np.flatnonzero(need)
    if sel.size:  # only the pair's own cluster is left
        dom = union_domain(lay.offsets, cluster[sel, None])
        got, _, _ = f.take(sel, dom, need[sel], "anywhere", _OWN, f.n_neg, 1, _scalar(_OWN), None)
        need[sel] -= got
    if need.any():
        bad_row = int(np.flatnonzero(need)[0])
        if f.reject is not None:
            raise RowsUnfillable(bad_row, f.n_neg - int(need[bad_row]))
        raise RuntimeError(
            f"row {bad_row} could not be filled: fewer than n_neg "
            "non-positive sources; the caller must check feasibility first"
        )
    return fb4, nd4


class _RowFiller:
    """The rows being filled: ids, labels, how full each row is, and the
    (row, layout position) points each sampling step must avoid."""

    def __init__(self, layout, positives, question, cluster, n_neg, uniforms, reject):
        self.layout, self.cluster, self.n_neg = layout, cluster, n_neg
        self.uniforms, self.reject = uniforms, reject
        self.rows = rows = question.size
        self.adj = layout.adjacent[cluster]
        self.ids = np.full((rows, n_neg), -1, dtype=np.int64)
        self.tiers = np.zeros((rows, n_neg), dtype=np.int64)
        self.fill = np.zeros(rows, dtype=np.int64)
        self.removed = dict.fromkeys((1, 2, 4), 0)
        # Excluded points: (row, layout position, relation to the row).
        self.excluded: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {
            _OWN: [], _ADJ: [], _FAR: []
        }  # fmt: skip
        owner, at = csr_expand(positives.offsets, question)
        pos_src = positives.sources[at]
        pos_rel = _relation(layout.source_cluster[pos_src][:, None], cluster[owner],
                            self.adj[owner])  # fmt: skip
        self.exclude(owner, pos_src, pos_rel[:, 0])

    def relation_of(self, sel: np.ndarray, new: np.ndarray) -> np.ndarray:
        lay = self.layout
        return _relation(lay.source_cluster[np.maximum(new, 0)], self.cluster[sel], self.adj[sel])

    def exclude(self, r: np.ndarray, src: np.ndarray, rel: np.ndarray | int) -> None:
        lpos = self.layout.rank[src]
        if np.ndim(rel) == 0:
            self.excluded[int(rel)].append((r, lpos))
            return
        for key, lst in self.excluded.items():
            m = rel == key
            if m.any():
                lst.append((r[m], lpos[m]))

    def put(
        self, sel: np.ndarray, new: np.ndarray, label: int | np.ndarray, rel: np.ndarray | int
    ) -> None:
        ids, tiers, fill = self.ids, self.tiers, self.fill
        ok = new >= 0
        width = new.shape[1]
        f0 = int(fill[0]) if self.rows else 0
        if sel.size == self.rows and ok.all() and np.isscalar(label) and (fill == f0).all():
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
        self.exclude(r, vals, rel if np.ndim(rel) == 0 else rel[ok])

    def draw(self, sel, domain, k, stage, rel_mask, width):
        parts = [p for key, lst in self.excluded.items() if key & rel_mask for p in lst]
        er = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        ep = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        u = self.uniforms(stage, width)
        if sel.size != self.rows:
            local = np.full(self.rows, -1, dtype=np.int64)
            local[sel] = np.arange(sel.size)
            er = local[er]
            inside = er >= 0
            er, ep, u = er[inside], ep[inside], u[sel]
        lpos, got = sample_domain(domain[0], domain[1], k, er, ep, u)
        return np.where(lpos >= 0, self.layout.order[np.maximum(lpos, 0)], -1), got

    def take(self, sel, domain, k, step, rel_mask, width, label, rel_of, rounds):
        """Draw ``k`` ids per row of ``sel`` from ``domain`` and put them.

        Returns, int64 [sel.size] each: what each row got, what its first draw
        got (``min(k, room)``: the room before any near-duplicate was seen) and
        how many near-duplicates it rejected.
        """
        new, got = self.draw(sel, domain, k, STAGES[step], rel_mask, width)
        if self.reject is None:
            self.put(sel, new, label, rel_of(sel, new))
            return got, got, np.zeros_like(got)
        first = got.copy()
        n_rejected = np.zeros_like(got)
        idx = np.arange(sel.size)
        r_no = 0
        while True:
            rows_now = sel[idx]
            lost, new, rel = self._reject(rows_now, new, label, rel_of)
            self.put(rows_now, new, label, rel)
            got[idx] -= lost
            n_rejected[idx] += lost
            r_no += 1
            more = np.flatnonzero(lost)
            if not more.size or (rounds is not None and r_no > rounds):
                return got, first, n_rejected
            idx = idx[more]
            dom = (domain[0][idx], domain[1][idx])
            new, extra = self.draw(sel[idx], dom, lost[more], redraw_stage(step, r_no), rel_mask,
                                   self.n_neg)  # fmt: skip
            got[idx] += extra

    def _reject(self, rows_now, new, label, rel_of):
        """Drop (and exclude) the drawn ids the near-duplicate test rejects."""
        rel = rel_of(rows_now, new)
        bad = np.zeros(new.shape, dtype=bool)
        rr, cc = np.nonzero(new >= 0)
        if rr.size:
            bad[rr, cc] = self.reject(rows_now[rr], new[rr, cc])
        lost = bad.sum(axis=1)
        if lost.any():
            br, bc = np.nonzero(bad)
            self.exclude(rows_now[br], new[br, bc], rel if np.ndim(rel) == 0 else rel[br, bc])
            new = np.where(bad, -1, new)
            self.removed[label] += int(lost.sum())
        return lost, new, rel

    def result(self, short: dict[str, int]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Ids and labels with columns ordered by label (stable), and the counts."""
        ids, tiers = self.ids, self.tiers
        if self.rows and (tiers == tiers[:1]).all():
            perm = np.argsort(tiers[0], kind="stable")  # one pattern for all rows
            return ids[:, perm], tiers[:, perm], short
        order = np.argsort(tiers, axis=1, kind="stable")
        return np.take_along_axis(ids, order, 1), np.take_along_axis(tiers, order, 1), short
