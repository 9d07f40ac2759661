"""Candidate filters against false negatives, and the filtered tier-3 search.

The filters (all off by default; settings live in :class:`negmine.MiningConfig`):

``max_score``
    Tier 3 skips sources whose cosine to the question is above the value.
``relative_margin`` / ``absolute_margin``
    Tier 3 skips sources whose cosine to the question is above
    ``(1 - margin) * p`` / ``p - margin``, where ``p`` is the question's lowest
    cosine to any of its positive sources.
``near_duplicate_threshold``
    Every tier skips sources whose cosine to one of the question's positive
    sources is above the value. Only candidates are compared with positives:
    never a sources x sources product.
``tier3_rank_window = (lo, hi)``
    Tier 3 takes its negatives from ranks ``lo <= rank < hi`` of the sources
    that pass everything above (``"top"``: ranks ``lo .. lo + n3 - 1``;
    ``"random"``: ``n3`` of the window's ranks, uniformly).

A tier-3 source is *eligible* when it lies outside the pair's cluster, is no
positive of the question and passes the score filters and the near-duplicate
filter; window ranks count eligible sources only.

:func:`filtered_tier3` runs any tier-3 kernel with these rules. The score
filters are per-row thresholds: the exact kernel masks scores above them inside
the score block (so its result stays exact with no deeper search), other
kernels have the hits above them dropped afterwards. The near-duplicate filter
needs each candidate's cosine to the positives, computed only for the returned
candidates; the first search asks for ``hi`` plus a slack of
``max(8, hi // 2)`` candidates when it is on. Rows left with fewer than ``hi``
eligible candidates are searched again with twice the k, up to the whole
corpus or the depth cap of :func:`negmine.search.common.max_depth` (the results
of one search call stay within 256 MiB), before tier 3 gives up and the
fallback tier takes over.

Counting, per tier-3 query (the statistics weight each query by its pairs):

*removed*
    Among the ``hi`` sources the unfiltered search would rank first (outside
    the cluster, not positives), how many each filter rejects. A source several
    filters reject counts for the first of ``max_score``, ``relative_margin``,
    ``absolute_margin``, ``near_duplicate_threshold``. ``tier3_rank_window``
    counts the eligible sources it skips (``min(lo, eligible)``).
*shortfall*
    Tier-3 slots (of ``n3``) left to the fallback tier because of the filter:
    the filters are applied one after the other in the order above, and each is
    charged the slots lost when it was added.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .config import FILTER_NAMES
from .search.common import QUERY_BLOCK, RESULT_BYTES, max_depth
from .tiers import floyd_sample

__all__ = [
    "COLUMN",
    "SCORE_FILTERS",
    "filtered_tier3",
    "score_thresholds",
]

#: Column of each filter in the per-query ``removed`` / ``shortfall`` arrays.
COLUMN = {name: i for i, name in enumerate(FILTER_NAMES)}
#: Filters that are a threshold on the cosine to the question, in their order.
SCORE_FILTERS = ("max_score", "relative_margin", "absolute_margin")
#: Extra depth of the first search when the near-duplicate filter is on (at
#: least; ``hi // 2`` for deep windows).
MIN_SLACK = 8


def score_thresholds(
    settings: dict[str, float], floor: np.ndarray
) -> tuple[np.ndarray | None, list[int]]:
    """The cumulative score thresholds of the active score filters.

    Parameters
    ----------
    settings : dict
        Active filters and their values (see :data:`SCORE_FILTERS`).
    floor : float32 [n]
        Each query's lowest cosine to its question's positives.

    Returns
    -------
    thresholds : float32 [n, T] or None
        Column ``j`` is the smallest threshold of the first ``j + 1`` active
        score filters (non-increasing along a row): a score above column ``j``
        is rejected by one of those filters. ``None`` when no score filter is on.
    columns : list of int
        The :data:`COLUMN` of each threshold column's filter.
    """
    cols, thr = [], []
    f64 = floor.astype(np.float64)
    for name in SCORE_FILTERS:
        v = settings.get(name)
        if v is None:
            continue
        if name == "max_score":
            t = np.full(floor.shape[0], v, dtype=np.float64)
        elif name == "relative_margin":
            t = (1.0 - v) * f64
        else:
            t = f64 - v
        cols.append(COLUMN[name])
        thr.append(t)
    if not cols:
        return None, []
    stacked = np.minimum.accumulate(np.stack(thr, axis=1), axis=1)
    return np.ascontiguousarray(stacked, dtype=np.float32), cols


def filtered_tier3(
    search: Callable[
        [np.ndarray, int, tuple[np.ndarray, np.ndarray] | None], tuple[np.ndarray, np.ndarray]
    ],
    n: int,
    n3: int,
    window: tuple[int, int],
    n_total: int,
    thresholds: np.ndarray | None = None,
    score_columns: list[int] | None = None,
    near_dup: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    uniforms: np.ndarray | None = None,
    keep_window: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tier 3 of ``n`` queries under the filters and the rank window.

    Parameters
    ----------
    search : callable ``(sel int64 [m], k, score_cut) -> (scores [m, k], ids [m, k])``
        The tier-3 kernel on queries ``sel``: descending cosines outside the
        cluster, positives excluded, ids ``-1`` past the end. ``score_cut`` is
        ``(thresholds[sel], counts int64 [m, T])`` or None; a kernel that
        applies it masks scores above the last column and writes into
        ``counts[:, j]`` how many candidates scored above column ``j``; one
        that does not leaves ``counts`` negative.
    n : int
        Queries.
    n3 : int
        Tier-3 negatives per query.
    window : (lo, hi)
        Eligible ranks to draw from.
    n_total : int
        Sources in the search's universe (the largest useful k).
    thresholds : float32 [n, T], optional
        From :func:`score_thresholds`.
    score_columns : list of int, optional
        Their filter columns.
    near_dup : callable ``(query int64 [m], ids int64 [m]) -> bool [m]``, optional
        True where source ``ids[i]`` is a near-duplicate of a positive of
        query ``query[i]``'s question.
    uniforms : float64 [n, >= n3], optional
        Given: draw ``n3`` of the window's ranks uniformly (``"random"``);
        otherwise take the first ``n3`` (``"top"``).
    keep_window : bool
        Return the whole window (``hi - lo`` columns) instead of ``n3`` ids.

    Returns
    -------
    ids : int64 [n, n3] (or [n, hi - lo])
        Best first (a random draw keeps the rank order); ``-1`` where short.
    removed : int64 [n, 5]
        Candidates each filter removed, columns in :data:`COLUMN` order
        (see the module notes for what is counted).
    short : int64 [n, 5]
        Tier-3 slots each filter left to the fallback tier.
    """
    hi = window[1]
    rows = _Tier3Rows(n, n3, window, keep_window, thresholds, score_columns, near_dup, uniforms)
    cap = max_depth(n_total)
    k = min(hi + (max(MIN_SLACK, hi // 2) if near_dup is not None else 0), n_total, cap)
    todo = np.arange(n, dtype=np.int64)
    while todo.size and k > 0:
        # Rows per call: whole query blocks, results within RESULT_BYTES.
        step = max(QUERY_BLOCK, RESULT_BYTES // (12 * k) // QUERY_BLOCK * QUERY_BLOCK)
        last = k >= n_total or k >= cap
        done = np.concatenate(
            [rows.round(search, todo[a : a + step], k, last) for a in range(0, todo.size, step)]
        )
        todo = todo[~done]
        k = min(2 * k, n_total, cap)
    return rows.out, rows.removed, rows.short


class _Tier3Rows:
    """The output of :func:`filtered_tier3` and one round of its search."""

    def __init__(self, n, n3, window, keep_window, thresholds, score_columns, near_dup, uniforms):
        lo, hi = window
        self.n3, self.lo, self.hi = n3, lo, hi
        self.width = hi - lo if keep_window else n3
        self.keep_window = keep_window
        self.out = np.full((n, self.width), -1, dtype=np.int64)
        self.removed = np.zeros((n, len(COLUMN)), dtype=np.int64)
        self.short = np.zeros((n, len(COLUMN)), dtype=np.int64)
        self.thresholds = thresholds
        self.n_thr = 0 if thresholds is None else thresholds.shape[1]
        self.cols = score_columns or []
        self.near_dup = near_dup
        self.uniforms = uniforms

    def round(self, search, todo: np.ndarray, k: int, last: bool) -> np.ndarray:
        """Search rows ``todo`` at depth ``k``; finish the rows that can be; bool [m] done."""
        n_thr = self.n_thr
        cut = None
        if n_thr:
            cut = (self.thresholds[todo], np.full((todo.size, n_thr), -1, dtype=np.int64))
        scores, ids = search(todo, k, cut)
        valid = ids >= 0
        exhausted = (valid.sum(axis=1) < k) | last
        if n_thr:
            thr = self.thresholds[todo]
            keep_s = valid & ~(scores > thr[:, -1:])
            n_over = cut[1]
            if (n_over < 0).any():  # not applied by the kernel: count in the list
                n_over = np.stack(
                    [np.count_nonzero(valid & (scores > thr[:, j : j + 1]), axis=1)
                     for j in range(n_thr)], axis=1,
                )  # fmt: skip
        else:
            keep_s = valid
            n_over = np.zeros((todo.size, 0), dtype=np.int64)
        nd = np.zeros(valid.shape, dtype=bool)
        if self.near_dup is not None:
            r, c = np.nonzero(keep_s)
            if r.size:
                nd[r, c] = self.near_dup(todo[r], ids[r, c])
        elig = keep_s & ~nd
        n_elig = elig.sum(axis=1)
        done = exhausted | (n_elig >= self.hi)
        d = np.flatnonzero(done)
        if d.size:
            self._finish(todo[d], elig[d], ids[d], keep_s[d], nd[d], n_over[d], n_elig[d])
        return done

    def _finish(self, g, el, idd, keep_s, nd, n_over, ne) -> None:
        """Write rows ``g``: their ids, and what each filter removed and cost."""
        lo, hi, n3 = self.lo, self.hi, self.n3
        rank = np.cumsum(el, axis=1) - 1
        if self.uniforms is None or self.keep_window:
            sel = el & (rank >= lo) & (rank < lo + self.width)
            r, c = np.nonzero(sel)
            self.out[g[r], rank[r, c] - lo] = idd[r, c]
        else:
            _sample_window(self.out, g, el, rank, idd, ne, lo, hi, n3, self.uniforms)
        # Removed among the unfiltered top hi.
        over = np.minimum(n_over, hi)
        prev = np.zeros(g.size, dtype=np.int64)
        for j, col in enumerate(self.cols):
            self.removed[g, col] = over[:, j] - prev
            prev = over[:, j]
        if self.near_dup is not None:
            rank_s = np.cumsum(keep_s, axis=1) - 1
            first = rank_s < (hi - prev)[:, None]
            self.removed[g, COLUMN["near_duplicate_threshold"]] = (nd & first).sum(axis=1)
        self.removed[g, COLUMN["tier3_rank_window"]] = np.minimum(lo, ne)
        # Slots lost as the filters are added one by one (exact once the
        # search is exhausted; every count is >= hi >= lo + n3 otherwise).
        size_s = keep_s.sum(axis=1)
        size0 = size_s + (n_over[:, -1] if self.n_thr else 0)
        got = np.minimum(n3, size0)
        for j, col in enumerate(self.cols):
            nxt = np.minimum(n3, size0 - n_over[:, j])
            self.short[g, col] = got - nxt
            got = nxt
        nxt = np.minimum(n3, ne)
        self.short[g, COLUMN["near_duplicate_threshold"]] = got - nxt
        self.short[g, COLUMN["tier3_rank_window"]] = nxt - np.clip(ne - lo, 0, n3)


def _sample_window(
    out: np.ndarray,
    g: np.ndarray,
    el: np.ndarray,
    rank: np.ndarray,
    ids: np.ndarray,
    n_elig: np.ndarray,
    lo: int,
    hi: int,
    n3: int,
    uniforms: np.ndarray,
) -> None:
    """Draw ``n3`` of each row's window ranks ``[lo, hi)`` uniformly, keep rank order.

    ``g`` int64 [m] are the rows of ``out`` [n, n3] to fill; ``el`` bool [m, k]
    marks the eligible entries of ``ids`` int64 [m, k], ``rank`` int64 [m, k]
    their eligible rank, ``n_elig`` int64 [m] their number; ``uniforms``
    float64 [n, >= n3].
    """
    avail = np.clip(n_elig - lo, 0, hi - lo)
    want = np.minimum(n3, avail)
    picks = floyd_sample(avail, want, uniforms[g])
    if picks.shape[1] == 0:
        return
    picks = np.sort(np.where(picks >= 0, picks, hi), axis=1)
    # Window members of each row, by rank.
    win = np.full((g.size, hi - lo + 1), -1, dtype=np.int64)
    sel = el & (rank >= lo) & (rank < hi)
    r, c = np.nonzero(sel)
    win[r, rank[r, c] - lo] = ids[r, c]
    chosen = np.take_along_axis(win, np.minimum(picks, hi - lo), axis=1)
    out[g, : chosen.shape[1]] = chosen
