"""One sample of queries searched at many settings from a single scan.

Tuning (:mod:`negmine.tuning`) searches the same sample at a ladder of
``nprobe`` and ``rerank`` values. Over 8-bit lists (whole clusters or
sub-lists) a search at ``nprobe = p`` and ``rerank = r`` depends on two things
only: the ``p`` lists each query probes, its best-scoring ones, and the
``r * k`` best integer scores over their sources, which an exact re-rank then
orders. Both nest. The ``p`` best lists are the first ``p`` of one ranking of
the query's lists, and a candidate among the ``r * k`` best over ``p`` lists is
among the ``r * k`` best of its own list, and scores at least the ``r * k``-th
best over the lists ranked before and with it.

So :class:`PrefixSearch` ranks each query's lists once, scans each (query,
list) pair once, the lists taken in rank order, and keeps only the candidates
that pass that test (about ``r * k * ln p`` a query). A search at any ``nprobe``
scanned so far and any ``rerank`` up to the depth kept is then a selection
among them and an exact re-rank: the integer products, most of a search's
cost, are paid once for the whole ladder instead of once for each setting.

The result equals the search's own up to ties: between list scores at the
probe cut, and between candidate scores at the re-rank cut, where the search
keeps the first score it meets and this selection the lower id.
:func:`negmine.tuning.tune` therefore searches the setting it settles on once
more, with the search itself, and reports that measurement.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .codes import quantize_queries
from .common import faiss_single_threaded
from .probe import PROBE_BLOCK, SCAN_THREADS, _probe_sets, _scan_part, sub_list_scores
from .products import one_thread_pool, product_threads
from .scan import ListScan

__all__ = ["PREFIX_ENTRIES", "PrefixSearch"]

#: (query, list, candidate) entries one scan step of :class:`PrefixSearch`
#: holds before its candidates are merged (12 bytes each).
PREFIX_ENTRIES = 1 << 22

_INT_MIN = np.iinfo(np.int32).min
#: Lists ranked per query at first (doubled as searches probe more).
_FIRST_RANKS = 64


class PrefixSearch:
    """A sample's searches over 8-bit lists at every ``nprobe`` up to ``max_nprobe``.

    Parameters
    ----------
    backend : negmine.search.backends.ProbeBackend
        Over 8-bit lists (``lists.codes``), not reduced.
    queries : float32 [Q', d]
        Unit question vectors.
    rows, cluster, question : int64 [n]
        Each query's row of ``queries``, the cluster it skips and its question.
    depth : int
        Candidates kept per query: ``k`` times the deepest ``rerank`` asked for.
    max_nprobe : int, optional
        The most lists a search may probe (default: every list a query may
        probe); larger ones are not :meth:`covers`-ed.
    """

    def __init__(
        self, backend: Any, queries: np.ndarray, rows: np.ndarray, cluster: np.ndarray,
        question: np.ndarray, depth: int, max_nprobe: int | None = None,
    ):  # fmt: skip
        lists, ctx = backend.lists, backend.ctx
        if lists.codes is None or backend.project is not None:
            raise ValueError("PrefixSearch needs a back-end over 8-bit lists, not reduced.")
        self.backend = backend
        self.queries, self.rows, self.question = queries, rows, question
        self.depth = int(depth)
        xq = np.ascontiguousarray(queries[rows], dtype=np.float32)
        self.xw = quantize_queries(xq, lists.step)
        n = rows.shape[0]
        if lists.sub is not None:
            self.layout = lists.sub.layout(ctx.layout)
            with faiss_single_threaded():
                scores = sub_list_scores(lists.sub, self.xw, cluster)
            n_lists, gone = lists.sub.n_lists, _INT_MIN
            self.limit = n_lists  # a search's nprobe is capped at every list
        else:
            self.layout = ctx.layout
            scores = np.empty((n, ctx.centroids.shape[0]), dtype=np.float32)
            for r0 in range(0, n, PROBE_BLOCK):  # as the search computes them
                scores[r0 : r0 + PROBE_BLOCK] = xq[r0 : r0 + PROBE_BLOCK] @ ctx.centroids.T
            scores[np.arange(n), cluster] = -np.inf
            n_lists, gone = scores.shape[1], -np.inf
            self.limit = n_lists - 1  # the own cluster is never probed
        self.max_nprobe = max(1, self.limit if max_nprobe is None else min(max_nprobe, self.limit))
        self._scores, self._gone = scores, gone
        #: int64 [n, w]: each query's ``w`` best lists, best first (-1: none left);
        #: ``w`` grows as searches probe more (:meth:`_rank_to`).
        self.ranked = np.zeros((n, 0), dtype=np.int64)
        self.scanned = 0
        # Kept candidates, one entry each: query row, rank of its list, score, source id.
        self._q = np.zeros(0, dtype=np.int64)
        self._rank = np.zeros(0, dtype=np.int64)
        self._score = np.zeros(0, dtype=np.int32)
        self._id = np.zeros(0, dtype=np.int64)
        self._run_d = np.full((n, self.depth), _INT_MIN, dtype=np.int32)
        self._scans = [ListScan(lists, self.layout, ctx.positives, self.depth, True)
                       for _ in range(SCAN_THREADS)]  # fmt: skip

    def covers(self, nprobe: int, rerank: int, k: int) -> bool:
        """Whether :meth:`search` can answer at these settings."""
        return 1 <= nprobe <= self.max_nprobe and 1 <= rerank * k <= self.depth

    def search(self, nprobe: int, rerank: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample's tier-3 top-``k`` at ``nprobe`` and ``rerank``.

        Returns
        -------
        scores : float32 [n, k]
            Exact cosines, descending (ties by lower id); ``-inf`` for none.
        ids : int64 [n, k]
            Source ids; ``-1`` for none.
        """
        depth = rerank * k
        if not self.covers(nprobe, rerank, k):
            raise ValueError(
                f"nprobe={nprobe}, rerank={rerank} is past what was kept "
                f"(nprobe <= {self.max_nprobe}, rerank * k <= {self.depth})."
            )
        p = min(nprobe, self.limit)
        self._scan_to(p)
        n = self.rows.shape[0]
        keep = self._rank < p
        q, ids = self._q[keep], self._id[keep]
        # Entries are sorted by query, then score descending, then id: the
        # first ``depth`` of each query are its candidates.
        start = np.searchsorted(q, np.arange(n))
        slot = np.arange(q.size) - start[q]
        take = slot < depth
        cand = np.full((n, depth), -1, dtype=np.int64)
        cand[q[take], slot[take]] = ids[take]
        return self.backend._rescore(self.queries, self.rows, cand, k)

    def _rank_to(self, p: int) -> None:
        """Rank at least each query's ``p`` best lists: score descending, then
        list ascending, as the search's probe sets take them (a total order,
        so a longer ranking starts with a shorter one)."""
        have, n_lists = self.ranked.shape[1], self._scores.shape[1]
        if p <= have:
            return
        width = min(n_lists, max(p, 2 * have, _FIRST_RANKS))
        top = _probe_sets(self._scores, width)
        ts = np.take_along_axis(self._scores, top, axis=1)
        by_rank = np.argsort(-ts.astype(np.float64), axis=1, kind="stable")
        gone = np.take_along_axis(ts, by_rank, 1) == self._gone
        self.ranked = np.where(gone, -1, np.take_along_axis(top, by_rank, 1))

    def _scan_to(self, p: int) -> None:
        """Scan the lists of ranks ``[scanned, p)`` and keep their candidates."""
        n = self.rows.shape[0]
        if p <= self.scanned or n == 0:
            return
        self._rank_to(p)
        step = max(1, PREFIX_ENTRIES // (n * self.depth))
        new: list[tuple[np.ndarray, ...]] = []
        for r0 in range(self.scanned, p, step):
            r1 = min(r0 + step, p)
            lists = self.ranked[:, r0:r1]
            q, r = np.nonzero(lists >= 0)
            top_d, top_i = self._scan(q, lists[q, r])
            new.append(self._merge(q, r, top_d, top_i, r1 - r0, r0))
        self.scanned = p
        self._q, self._rank, self._score, self._id = (
            np.concatenate([a, *(b[j] for b in new)]) for j, a in
            enumerate((self._q, self._rank, self._score, self._id)))  # fmt: skip
        # Query, then score descending, then id ascending (see search).
        order = np.lexsort((self._id, -self._score.astype(np.int64), self._q))
        self._q, self._rank, self._score, self._id = (
            a[order] for a in (self._q, self._rank, self._score, self._id))  # fmt: skip

    def _scan(self, q: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best ``depth`` integer scores of query ``q[j]`` in list ``lists[j]``
        (its positives left out), cut over the scans' threads."""
        xw, qq = self.xw[q], self.question[q]
        cuts = np.linspace(0, q.size, len(self._scans) + 1).astype(np.int64).tolist()
        # One-thread integer products on each scan's thread (exact on any count).
        with product_threads("torch", 1), one_thread_pool(len(self._scans)) as pool:
            done = [job.result() for job in [
                pool.submit(_scan_part, s, xw[a:b], lists[a:b, None], lists[a:b], qq[a:b])
                for s, a, b in zip(self._scans, cuts[:-1], cuts[1:], strict=True)]]  # fmt: skip
        top_d = np.concatenate([d for d, _ in done])
        top_i = np.concatenate([i for _, i in done])
        return top_d, np.where(top_i < 0, -1, self.layout.order[np.maximum(top_i, 0)])

    def _merge(
        self, q: np.ndarray, r: np.ndarray, top_d: np.ndarray, top_i: np.ndarray, width: int,
        r0: int,
    ) -> tuple[np.ndarray, ...]:  # fmt: skip
        """The candidates of one scan step worth keeping, in rank order per query.

        A candidate is kept when its score reaches the ``depth``-th best of its
        query over the lists ranked before and with its own: below that, no
        larger ``nprobe`` can bring it back into the best ``depth``.
        """
        n = self.rows.shape[0]
        scores = np.full((n, width, self.depth), _INT_MIN, dtype=np.int32)
        ids = np.full((n, width, self.depth), -1, dtype=np.int64)
        scores[q, r] = np.where(np.isfinite(top_d), top_d, _INT_MIN).astype(np.int32)
        ids[q, r] = top_i
        keep = np.zeros(scores.shape, dtype=bool)
        run = self._run_d
        for j in range(width):
            both = np.concatenate([run, scores[:, j]], axis=1)
            run = -np.partition(-both.astype(np.int64), self.depth - 1, axis=1)[:, : self.depth]
            run = run.astype(np.int32)
            cut = run.min(axis=1)
            keep[:, j] = (scores[:, j] >= cut[:, None]) & (ids[:, j] >= 0)
        self._run_d = run
        qq, jj, cc = np.nonzero(keep)
        return qq, jj + r0, scores[qq, jj, cc], ids[qq, jj, cc]
