"""Mining orchestration: inputs checked once, tier 3 searched, tiers 1, 2, 4 sampled.

The row-filling rules and fallbacks are in :mod:`negmine.assemble`. Random
streams are keyed by (seed, block of 1024 pairs, sampling step), so the output
depends on neither ``batch_size`` nor thread count.
"""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import (
    as_numpy,
    check_embeddings,
    check_ids,
    fail,
    normalized_float32,
    take_rows,
)
from .assemble import (
    COUNTER_KEYS,
    RNG_BLOCK,
    SHORT_KEYS,
    STAGES,
    RowsUnfillable,
    block_uniforms,
    fill_rows,
)
from .config import FILTER_NAMES, TIER_NAMES, MiningConfig
from .filters import COLUMN, Cosines, filtered_tier3, score_thresholds
from .index import SourceIndex, fingerprint
from .io import pause_point
from .layout import ClusterLayout, PositiveSets, adjacent_clusters
from .search import (
    QUERY_BLOCK,
    exact_outside_cluster,
    overfetch_outside_cluster,
    workspace_for,
)

__all__ = ["PAIR_BLOCK", "RNG_BLOCK", "T3_BLOCK", "NegativeMiner", "mine_negatives"]

if TYPE_CHECKING:
    from .io.runs import Checkpoints

log = logging.getLogger(__name__)

#: Tier-3 queries per checkpointed block (a multiple of the search's query block).
T3_BLOCK = 4 * QUERY_BLOCK
#: Pairs per checkpointed block (a multiple of the random-stream block).
PAIR_BLOCK = 64 * RNG_BLOCK
#: Clusters probed per query by a ``"clusters"`` index when no ``nprobe`` is given.
CLUSTERS_NPROBE = 32
#: Re-rank factor of compressed ``"clusters"`` lists when no ``rerank`` is given.
COMPRESSED_RERANK = 4


class NegativeMiner:
    """Mine ``n_neg`` negatives in four tiers for every (question, source) pair.

    Parameters
    ----------
    source_embeddings : float [S, d]
        numpy array, memmap or torch tensor.
    question_embeddings : float [Q, d]
    centroid_embeddings : float [C, d]
    pair_indices : int [P, 2]
        Positive pairs (question index, source index).
    pair_cluster_ids : int [P]
        Cluster of each pair, in [0, C).
    source_cluster_ids : int [S]
        Cluster of each source, in [0, C).
    n_neg : int
        Negatives per pair.
    tier_proportions : sequence of 4 numbers, optional
        Counts (four ints summing to ``n_neg``) or weights; see
        :func:`negmine.config.resolve_tier_counts`.
    adjacent_k : int
        Adjacent clusters of each cluster (tier 2).
    random_seed : int
    show_progress : bool
        Draw tqdm progress bars on stderr.
    batch_size : int
        Pairs sampled per step (rounded up to a multiple of 1024). Memory
        only: the output is the same for every value.
    index : SourceIndex or path, optional
        A prebuilt source index. Default: exact search over the sources,
        stored here in cluster order.
    nprobe : int, optional
        Without ``index``: approximate tier 3 over the user's clusters, which
        searches only the ``nprobe`` clusters whose centroids are nearest to
        the question, other than the pair's own (see :mod:`negmine.probe`);
        ``None``: exact. With a ``"clusters"`` index: the same search over its
        lists (default :data:`CLUSTERS_NPROBE`). With a FAISS IVF index: its
        ``nprobe``.
    ef_search : int, optional
        ``efSearch`` of an HNSW index (or of an IVF index's HNSW quantizer).
    rerank : int, optional
        With an approximate index: fetch ``rerank`` times as many tier-3
        candidates and keep the best by their exact cosine, computed from
        ``source_embeddings``. Default: 1 (no re-rank), except 4 for
        compressed ``"clusters"`` lists (SQ8, fp16).
    recall_sample : int
        With an approximate tier 3, measure its recall against exact search on
        this many tier-3 queries and record it in :attr:`last_stats`.
    validate : bool
        Check the result with :func:`negmine.validate_negatives` before
        returning it (raises ``ValidationError`` on a violation).
    max_score : float, optional
        Tier 3 skips sources whose cosine to the question is above it.
    relative_margin : float, optional
        Tier 3 skips sources whose cosine to the question is above
        ``(1 - relative_margin) * p``, ``p`` the question's lowest cosine to
        one of its positive sources (0.05: at most 95 % of the positive's).
    absolute_margin : float, optional
        Tier 3 skips sources whose cosine to the question is above
        ``p - absolute_margin``.
    near_duplicate_threshold : float, optional
        Every tier skips sources whose cosine to one of the question's positive
        sources is above it.
    tier3_rank_window : (int, int), optional
        ``(lo, hi)``: tier 3 draws from ranks ``lo <= rank < hi`` of the
        eligible sources (outside the cluster, not positives, passing the
        filters above), 0 the most similar.
    tier3_sampling : {"top", "random"}
        Take the window's first ``n3`` ranks, or ``n3`` of them uniformly.

    Notes
    -----
    All filters are off by default; see :mod:`negmine.filters` for their exact
    semantics and how the removed candidates and shortfalls are counted.
    """

    def __init__(
        self,
        source_embeddings: Any,
        question_embeddings: Any,
        centroid_embeddings: Any,
        pair_indices: Any,
        pair_cluster_ids: Any,
        source_cluster_ids: Any,
        n_neg: int = 12,
        tier_proportions: Any = None,
        adjacent_k: int = 3,
        random_seed: int = 42,
        show_progress: bool = False,
        batch_size: int = 16384,
        index: SourceIndex | str | os.PathLike | None = None,
        nprobe: int | None = None,
        recall_sample: int = 0,
        validate: bool = True,
        ef_search: int | None = None,
        rerank: int | None = None,
        max_score: float | None = None,
        relative_margin: float | None = None,
        absolute_margin: float | None = None,
        near_duplicate_threshold: float | None = None,
        tier3_rank_window: tuple[int, int] | None = None,
        tier3_sampling: str = "top",
    ):
        self.config = MiningConfig(
            n_neg=n_neg,
            tier_proportions=tier_proportions,
            adjacent_k=adjacent_k,
            random_seed=random_seed,
            max_score=max_score,
            relative_margin=relative_margin,
            absolute_margin=absolute_margin,
            near_duplicate_threshold=near_duplicate_threshold,
            tier3_rank_window=tier3_rank_window,
            tier3_sampling=tier3_sampling,
        )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            fail("batch_size", "be a positive integer", repr(batch_size), exc=TypeError)
        if batch_size < 1:
            fail("batch_size", "be a positive integer", batch_size)
        self.batch_size = int(batch_size)
        self.show_progress = bool(show_progress)
        self.validate = bool(validate)

        src = check_embeddings(source_embeddings, "source_embeddings")
        n_s, d = src.shape
        qry = check_embeddings(question_embeddings, "question_embeddings", d, "source_embeddings")
        cen = check_embeddings(centroid_embeddings, "centroid_embeddings", d, "source_embeddings")
        n_q, n_c = qry.shape[0], cen.shape[0]
        pairs = as_numpy(pair_indices, "pair_indices")
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            fail(
                "pair_indices", "have shape [P, 2] (question, source)", f"shape {list(pairs.shape)}"
            )
        if pairs.shape[0] == 0:
            fail("pair_indices", "hold at least one pair", "shape [0, 2]")
        q_ids = check_ids(
            pairs[:, 0],
            "pair_indices[:, 0]",
            ndim=1,
            upper=n_q,
            upper_what="Q = len(question_embeddings)",
        )
        s_ids = check_ids(
            pairs[:, 1],
            "pair_indices[:, 1]",
            ndim=1,
            upper=n_s,
            upper_what="S = len(source_embeddings)",
        )
        n_p = pairs.shape[0]
        pcl = check_ids(
            pair_cluster_ids, "pair_cluster_ids", ndim=1, upper=n_c,
            upper_what="C = len(centroid_embeddings)",
        )  # fmt: skip
        if pcl.shape[0] != n_p:
            fail(
                "pair_cluster_ids", f"have one entry per pair (P = {n_p})", f"length {pcl.shape[0]}"
            )
        scl = check_ids(
            source_cluster_ids, "source_cluster_ids", ndim=1, upper=n_c,
            upper_what="C = len(centroid_embeddings)",
        )  # fmt: skip
        if scl.shape[0] != n_s:
            fail(
                "source_cluster_ids",
                f"have one entry per source (S = {n_s})",
                f"length {scl.shape[0]}",
            )
        self.n_sources, self.n_questions, self.n_clusters, self.dim = n_s, n_q, n_c, d
        self.pair_question = q_ids
        self.pair_source = s_ids
        self.pair_cluster = pcl
        self._raw_sources = src
        self._raw_questions = qry
        self.positives = PositiveSets.from_pairs(np.stack([q_ids, s_ids], axis=1), n_q)
        self._check_feasible()
        adjacent = adjacent_clusters(cen, self.config.adjacent_k)
        self.layout = ClusterLayout.build(scl, n_c, adjacent)
        self._index_arg = index
        for name, v, lo in (("nprobe", nprobe, 1), ("recall_sample", recall_sample, 0),
                            ("ef_search", ef_search, 1), ("rerank", rerank, 1)):  # fmt: skip
            if v is None and name != "recall_sample":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                fail(name, f"be an integer >= {lo}", repr(v))
        self.nprobe = None if nprobe is None else int(nprobe)
        self.recall_sample = int(recall_sample)
        self.ef_search = None if ef_search is None else int(ef_search)
        self.rerank = None if rerank is None else int(rerank)
        if index is None:
            for name, v in (("ef_search", self.ef_search), ("rerank", self.rerank)):
                if v is not None:
                    fail(name, "come with an approximate `index`", v,
                         "Without an index the vectors searched are exact; drop it.")  # fmt: skip
        self._centroids = normalized_float32(cen)
        self.index: SourceIndex | None = None
        self._sorted: np.ndarray | None = None
        self._run_key: str | None = None
        self._workspace: np.ndarray | None = None
        self._recall: dict[str, Any] | None = None
        # A weak reference: a bound method here would tie the miner into a cycle
        # that keeps its arrays alive until the garbage collector runs.
        gather = weakref.WeakMethod(self._gather_sources)
        self._cos = Cosines(lambda ids, out: gather()(ids, out), d, self.positives)
        self._positive_scores: np.ndarray | None = None
        self._lists: Any = None
        self.last_stats: dict[str, Any] | None = None

    # ------------------------------------------------------------------ checks
    def _check_feasible(self) -> None:
        n_pos = self.positives.counts()
        worst = int(np.argmax(n_pos))
        if self.n_sources - n_pos[worst] < self.config.n_neg:
            fail(
                "n_neg",
                "leave enough non-positive sources for every question "
                f"(S - positives >= n_neg; question {worst} has {int(n_pos[worst])} positives "
                f"among S = {self.n_sources} sources)",
                self.config.n_neg,
                f"Use n_neg <= {self.n_sources - int(n_pos[worst])}.",
            )

    def _ensure_index(self) -> SourceIndex | None:
        """The user's index, loaded and checked; ``None`` for the built-in exact search."""
        if self.index is not None or self._index_arg is None:
            return self.index
        arg = self._index_arg
        idx = arg if isinstance(arg, SourceIndex) else SourceIndex.load(arg, mmap=True)
        idx.check_matches(fingerprint(self._raw_sources), self.dim)
        if idx.is_clusters:
            lay = self.layout
            idx.check_clusters(lay.source_cluster, self._centroids, lay.offsets, lay.order)
            if self.ef_search is not None:
                fail("ef_search", "apply to the index (a 'clusters' index has no graph)",
                     self.ef_search, "Drop it; use nprobe.")  # fmt: skip
        elif idx.is_exact:
            for name, v in (("nprobe", self.nprobe), ("ef_search", self.ef_search),
                            ("rerank", self.rerank)):  # fmt: skip
                if v is not None:
                    fail(name, "apply to the index (a flat index searches exactly)", v,
                         "Drop it, or pass an approximate index.")  # fmt: skip
        else:
            idx.set_search_params(nprobe=self.nprobe, ef_search=self.ef_search)
        self.index = idx
        return idx

    def _sorted_sources(self) -> np.ndarray:
        """Normalised sources in cluster-layout order, float32 [S, d] (built once)."""
        if self._sorted is None:
            order = self.layout.order
            out = np.empty((self.n_sources, self.dim), dtype=np.float32)
            step = 65536
            for a in range(0, order.size, step):
                rows = order[a : a + step]
                normalized_float32(take_rows(self._raw_sources, rows), out=out[a : a + rows.size])
            self._sorted = out
        return self._sorted

    # ------------------------------------------------------------------ mining
    def mine_all_negatives(self) -> dict[str, Any]:
        """Mine every pair.

        Returns
        -------
        dict
            ``hard_negatives`` int64 tensor [P, n_neg] of source ids,
            ``negative_tiers`` int64 tensor [P, n_neg] of tier labels 1-4,
            ``negative_scores`` float32 tensor [P, n_neg], the cosine of each
            negative to the pair's question, ``positive_scores`` float32
            tensor [P], the cosine of each pair's question to its source.
            Statistics of the run are kept in :attr:`last_stats`.
        """
        ids, tiers, scores, _stats = self.mine_arrays()
        return self._results(ids, tiers, scores)

    def _results(self, ids: np.ndarray, tiers: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        import torch

        res = {
            "hard_negatives": torch.from_numpy(ids),
            "negative_tiers": torch.from_numpy(tiers),
            "negative_scores": torch.from_numpy(scores),
        }
        if self._positive_scores is not None:
            res["positive_scores"] = torch.from_numpy(self._positive_scores)
        return res

    def mine_arrays(
        self, checkpoints: Checkpoints | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Like :meth:`mine_all_negatives`, as numpy arrays plus the statistics dict.

        Parameters
        ----------
        checkpoints : negmine.runs.Checkpoints, optional
            Where finished blocks are stored and, on resume, found.
        """
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        index = self._ensure_index()
        timings["index"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        t3_ids, combo_of_pair, t3_filters = self._tier3_blocks(index, checkpoints)
        timings["tier3_search"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        ids, tiers, scores, extra = self._pair_blocks(t3_ids, combo_of_pair, checkpoints)
        self._positive_scores = extra["positive_scores"]
        timings["sampling_and_scores"] = time.perf_counter() - t0

        ok = None
        if self.validate:
            t0 = time.perf_counter()
            ok = self._validate(ids, tiers)
            timings["validate"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        stats = self._stats(tiers, scores, extra, t3_filters, timings, index, len(t3_ids), ok)
        self.last_stats = stats
        log.info("mined %d pairs in %.2f s", len(ids), timings["total"])
        return ids, tiers, scores, stats

    def _tier3_blocks(
        self, index: SourceIndex | None, checkpoints: Checkpoints | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tier 3 once per distinct (cluster, question), grouped by cluster, in fixed
        blocks of queries. Returns the ids [M, n3], each pair's row in them [P] and
        the filter counts int64 [2, 5] (removed, shortfall; weighted by pairs)."""
        n3 = self.config.tier_counts[2]
        key = self.pair_cluster * self.n_questions + self.pair_question
        uniq, combo_of_pair = np.unique(key, return_inverse=True)
        combo_cluster = uniq // self.n_questions
        combo_question = uniq - combo_cluster * self.n_questions
        t3_ids = np.empty((uniq.size, n3), dtype=np.int64)
        filt = np.zeros((2, len(FILTER_NAMES)), dtype=np.int64)
        pairs_of = np.bincount(combo_of_pair, minlength=uniq.size)
        with _progress(self.show_progress, uniq.size, "tier 3 search", "query") as bar:
            for g, c0 in enumerate(range(0, uniq.size, T3_BLOCK)):
                c1 = min(c0 + T3_BLOCK, uniq.size)
                done = checkpoints.load("tier3", g) if checkpoints else None
                if done is None:
                    sl = slice(c0, c1)
                    # Normalised per block: all questions at once can be gigabytes.
                    qvec, rows = self._question_vectors(combo_question[sl])
                    ids, removed, short = self._tier3_ids(
                        index, qvec, rows, combo_cluster[sl], combo_question[sl], c0
                    )
                    done = {"ids": ids}
                    if removed is not None:
                        w = pairs_of[sl]
                        done["filters"] = np.stack([w @ removed, w @ short])
                    if checkpoints:
                        checkpoints.save("tier3", g, done)
                        pause_point(f"after-tier3-{g}")
                t3_ids[c0:c1] = done["ids"]
                if "filters" in done:
                    filt += done["filters"]
                bar.update(c1 - c0)
        self._recall = None
        if self.recall_sample and n3 and (self.nprobe is not None or index is not None):
            t0 = time.perf_counter()
            self._recall = self._measure_recall(index, combo_cluster, combo_question, t3_ids)
            self._recall["seconds"] = round(time.perf_counter() - t0, 4)
        return t3_ids, combo_of_pair, filt

    def _tier3_ids(
        self, index: SourceIndex | None, qvec: np.ndarray, rows: np.ndarray,
        combo_cluster: np.ndarray, combo_question: np.ndarray, c0: int = 0,
        exact: bool = False, keep_window: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:  # fmt: skip
        """Tier-3 ids of queries ``c0, c0 + 1, ...`` under the filters and the window.

        Returns
        -------
        ids : int64 [n, n3]
            ``-1`` where short; ``[n, hi - lo]`` (the whole window) with ``keep_window``.
        removed, short : int64 [n, 5] or None
            Per query and filter (see :func:`negmine.filters.filtered_tier3`);
            None when tier 3 is not filtered.
        """
        cfg = self.config
        n3 = cfg.tier_counts[2]
        if not cfg.tier3_filtered or n3 == 0:
            _, ids = self._search_tier3(
                index, qvec, rows, combo_cluster, combo_question, n3, exact=exact
            )
            return ids, None, None
        settings = cfg.filters
        if "relative_margin" in settings or "absolute_margin" in settings:
            floor = self._cos.positive_floor(qvec[rows], combo_question)
        else:
            floor = np.zeros(rows.size, dtype=np.float32)
        thresholds, columns = score_thresholds(settings, floor)
        near = None
        if cfg.near_duplicate_threshold is not None:
            cut = cfg.near_duplicate_threshold

            def near(sel: np.ndarray, ids: np.ndarray) -> np.ndarray:
                return self._cos.max_to_positives(combo_question[sel], ids) > cut

        u = None
        if cfg.tier3_sampling == "random" and not keep_window:
            u = block_uniforms(cfg.random_seed, c0, c0 + rows.size, cfg.tier_counts)(
                STAGES["tier3_window"], n3
            )

        def search(sel, k, score_cut):
            return self._search_tier3(
                index, qvec, rows[sel], combo_cluster[sel], combo_question[sel], k,
                exact=exact, score_cut=score_cut,
            )  # fmt: skip

        return filtered_tier3(
            search, rows.size, n3, cfg.window, self.n_sources, thresholds, columns, near, u,
            keep_window,
        )  # fmt: skip

    def _measure_recall(self, index, combo_cluster, combo_question, t3_ids):
        """Recall of the tier-3 ids against exact search on an even sample of queries."""
        from .probe import recall_at_k

        n = min(self.recall_sample, len(t3_ids))
        pick = np.unique(np.linspace(0, len(t3_ids) - 1, n).astype(np.int64))
        qvec, rows = self._question_vectors(combo_question[pick])
        args = (qvec, rows, combo_cluster[pick], combo_question[pick])
        # A random draw from the window is measured on the window itself.
        whole = self.config.tier3_sampling == "random"
        approx = t3_ids[pick]
        if whole:
            approx, _, _ = self._tier3_ids(index, *args, keep_window=True)
        exact, _, _ = self._tier3_ids(index, *args, exact=True, keep_window=whole)
        k = approx.shape[1]
        recall = recall_at_k(approx, exact)
        return {"k": k, "sample": int(pick.size), "recall": round(float(recall), 4)}

    def check_recall(self, sample: int = 2000, k: int | None = None) -> dict[str, Any]:
        """Measure tier-3 recall@k of this miner's search against exact search.

        Takes an even sample of the tier-3 queries (one per distinct question
        and pair cluster, as mining does), searches them the way mining would
        (index, ``nprobe``, ``ef_search``, ``rerank``) and exactly, with the
        same exclusions (the pair's cluster, the question's positives).

        Parameters
        ----------
        sample : int
            Queries to check, >= 1.
        k : int, optional
            Results per query; default the tier-3 count of the config.

        Returns
        -------
        dict
            ``recall`` (mean fraction of the exact top-k found), ``k``,
            ``sample``, ``index`` (as recorded in mining stats: factory, exact,
            search parameters), ``seconds_search`` and ``seconds_exact``.
        """
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            fail("sample", "be a positive integer", repr(sample))
        k = self.config.tier_counts[2] if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            fail("k", "be a positive integer", repr(k))
        from .probe import recall_at_k

        index = self._ensure_index()
        key = np.unique(self.pair_cluster * self.n_questions + self.pair_question)
        n = min(int(sample), key.size)
        key = key[np.unique(np.linspace(0, key.size - 1, n).astype(np.int64))]
        cl = key // self.n_questions
        qq = key - cl * self.n_questions
        qvec, rows = self._question_vectors(qq)
        t0 = time.perf_counter()
        _, got = self._search_tier3(index, qvec, rows, cl, qq, int(k))
        t1 = time.perf_counter()
        _, exact = self._search_tier3(index, qvec, rows, cl, qq, int(k), exact=True)
        t2 = time.perf_counter()
        return {
            "recall": round(float(recall_at_k(got, exact)), 4),
            "k": int(k),
            "sample": int(key.size),
            "index": self._describe_search(index),
            "seconds_search": round(t1 - t0, 4),
            "seconds_exact": round(t2 - t1, 4),
        }

    def _pair_blocks(
        self, t3_ids: np.ndarray, combo_of_pair: np.ndarray, checkpoints: Checkpoints | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Tiers 1, 2, 4 and the cosines, in fixed blocks of pairs.

        Returns ids, tiers, scores [P, n_neg] and a dict: ``short`` (the counts
        of :func:`fill_rows`), ``pos_neg`` float32 [P, n_neg] (cosine of each
        negative to the pair's source) and ``positive_scores`` float32 [P].
        """
        n_p, n_neg = self.pair_question.size, self.config.n_neg
        out_ids = np.empty((n_p, n_neg), dtype=np.int64)
        out_tiers = np.empty((n_p, n_neg), dtype=np.int64)
        out_scores = np.empty((n_p, n_neg), dtype=np.float32)
        out_pos_neg = np.empty((n_p, n_neg), dtype=np.float32)
        out_pos = np.empty(n_p, dtype=np.float32)
        short = dict.fromkeys(SHORT_KEYS + COUNTER_KEYS, 0)
        step = -(-self.batch_size // RNG_BLOCK) * RNG_BLOCK
        with _progress(self.show_progress, n_p, "sampling tiers 1, 2, 4") as bar:
            for g, b0 in enumerate(range(0, n_p, PAIR_BLOCK)):
                b1 = min(b0 + PAIR_BLOCK, n_p)
                done = checkpoints.load("pairs", g) if checkpoints else None
                if done is None:
                    sh = dict.fromkeys(short, 0)
                    for p0 in range(b0, b1, step):
                        p1 = min(p0 + step, b1)
                        ids, tiers, s_ = self._sample_rows(
                            p0, p1, t3_ids[combo_of_pair[p0:p1]], self.config.tier_counts
                        )
                        out_ids[p0:p1] = ids
                        out_tiers[p0:p1] = tiers
                        for k_, v in s_.items():
                            sh[k_] += v
                    out_scores[b0:b1], out_pos_neg[b0:b1] = self._cosines(
                        out_ids[b0:b1], self.pair_question[b0:b1], self.pair_source[b0:b1]
                    )
                    out_pos[b0:b1] = self._positive_cosines(b0, b1)
                    done = {
                        "ids": out_ids[b0:b1],
                        "tiers": out_tiers[b0:b1],
                        "scores": out_scores[b0:b1],
                        "pos_neg": out_pos_neg[b0:b1],
                        "pos": out_pos[b0:b1],
                        "short": np.array([sh[k_] for k_ in short], dtype=np.int64),
                    }
                    if checkpoints:
                        checkpoints.save("pairs", g, done)
                        pause_point(f"after-pairs-{g}")
                else:
                    out_ids[b0:b1] = done["ids"]
                    out_tiers[b0:b1] = done["tiers"]
                    out_scores[b0:b1] = done["scores"]
                    out_pos_neg[b0:b1] = done["pos_neg"]
                    out_pos[b0:b1] = done["pos"]
                for k_, v in zip(short, done["short"].tolist(), strict=True):
                    short[k_] += v
                bar.update(b1 - b0)
        extra = {"short": short, "pos_neg": out_pos_neg, "positive_scores": out_pos}
        return out_ids, out_tiers, out_scores, extra

    def _validate(self, ids: np.ndarray, tiers: np.ndarray) -> bool:
        """Check the result against every rule; a violation is a bug, raised."""
        from .validate import validate_negatives

        report = validate_negatives(
            ids,
            tiers,
            pair_indices=np.stack([self.pair_question, self.pair_source], axis=1),
            pair_cluster_ids=self.pair_cluster,
            source_cluster_ids=self.layout.source_cluster,
            adjacent=self.layout.adjacent,
            adjacent_k=self.config.adjacent_k,
            tier_proportions=list(self.config.tier_counts),
            source_embeddings=self._raw_sources,
            near_duplicate_threshold=self.config.near_duplicate_threshold,
        )
        report.raise_if_failed()
        return report.ok

    def _stats(
        self, tiers, scores, extra, t3_filters, timings, index, n_queries, ok
    ) -> dict[str, Any]:
        """The run's statistics (the ``stats`` of the manifest).

        Per tier: counts, the slots of its quota another tier filled
        (``fallback``), summaries and histograms of each negative's cosine to
        the question and to the pair's source; the cosine of each pair's
        question to its source; and per active filter the candidates it
        removed in each tier and the slots it sent to a fallback tier.
        """
        from .stats import histogram, summarize

        n_p = tiers.shape[0]
        short = extra["short"]
        pos_neg = extra["pos_neg"]
        counts = np.bincount(tiers.reshape(-1), minlength=5)[1:]
        per_tier = {}
        for t in range(1, 5):
            sel = tiers == t
            to_q, to_p = scores[sel], pos_neg[sel]
            cq = summarize(to_q)
            per_tier[str(t)] = {
                "name": TIER_NAMES[t],
                "requested": int(self.config.tier_counts[t - 1] * n_p),
                "count": int(counts[t - 1]),
                "mean_cosine": cq["mean"],
                "fallback": int(short[f"fallback{t}"]),
                "cosine_question": cq,
                "cosine_positive": summarize(to_p),
                "hist_question": histogram(to_q),
                "hist_positive": histogram(to_p),
            }
        pos = extra["positive_scores"]
        filters = {}
        for name, value in self.config.filters.items():
            col = COLUMN[name]
            removed = {"1": 0, "2": 0, "3": int(t3_filters[0, col]), "4": 0}
            shortfall = int(t3_filters[1, col])
            if name == "near_duplicate_threshold":
                for t in ("1", "2", "4"):
                    removed[t] = int(short[f"near_dup{t}"])
                shortfall += int(short["near_dup_short"])
            filters[name] = {"value": value, "removed": removed, "shortfall": shortfall}
        return {
            "n_pairs": int(n_p),
            "n_sources": self.n_sources,
            "n_questions": self.n_questions,
            "n_clusters": self.n_clusters,
            "tier3_queries": int(n_queries),
            "tiers": per_tier,
            "positive_cosine": {**summarize(pos), "hist": histogram(pos)},
            "filters": filters,
            "shortfalls": {k_: int(short[k_]) for k_ in SHORT_KEYS},
            "timings_seconds": {k_: round(v, 4) for k_, v in timings.items()},
            "index": self._describe_search(index),
            "tier3_recall": self._recall,
            "validation_ok": ok,
        }

    def _describe_search(self, index: SourceIndex | None) -> dict[str, Any]:
        params = {"nprobe": self._nprobe(index), "ef_search": self.ef_search,
                  "rerank": self._rerank(index)}  # fmt: skip
        params = {k_: v for k_, v in params.items() if v is not None}
        if index is not None:
            desc = {k_: v for k_, v in index.manifest.items() if k_ != "versions"}
            return dict(desc, exact=index.is_exact, search_params=params)
        if self.nprobe is not None:
            return {"factory": "clusters", "exact": False, "search_params": params,
                    "nprobe": self.nprobe, "built": "in memory, cluster-ordered"}  # fmt: skip
        return {"factory": "Flat", "exact": True, "built": "in memory, cluster-ordered"}

    def _nprobe(self, index: SourceIndex | None) -> int | None:
        if index is not None and index.is_exact:
            return None
        if index is not None and index.is_clusters and self.nprobe is None:
            return min(CLUSTERS_NPROBE, max(1, self.n_clusters - 1))
        return self.nprobe

    def _rerank(self, index: SourceIndex | None) -> int | None:
        if index is None or index.is_exact:
            return None
        if self.rerank is not None:
            return self.rerank
        if index.is_clusters and _codec(index) != "Flat":
            return COMPRESSED_RERANK
        return None

    def _question_vectors(self, questions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised vectors of the distinct ``questions`` and each entry's row in them."""
        uq, inv = np.unique(questions, return_inverse=True)
        return normalized_float32(take_rows(self._raw_questions, uq)), inv

    def _search_tier3(
        self, index: SourceIndex | None, qvec: np.ndarray, rows: np.ndarray,
        combo_cluster: np.ndarray, combo_question: np.ndarray, k: int, exact: bool = False,
        score_cut: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Tier-3 search of the given queries; ``exact`` forces an exact search.

        ``score_cut`` goes to the exact blocked kernel (see
        :func:`negmine.search.exact_outside_cluster`); the other kernels ignore
        it, and the filters then drop those candidates and search deeper.
        """
        from .probe import probe_outside_cluster

        args = (qvec, rows, combo_cluster, combo_question, self.layout, self.positives)
        if exact:
            # Exact = probing every other cluster of exact float32 lists.
            return probe_outside_cluster(
                self._exact_lists(index), self._centroids, *args, k, nprobe=self.n_clusters
            )
        if index is None and self.nprobe is not None:
            return probe_outside_cluster(
                self._sorted_sources(), self._centroids, *args, k, nprobe=self.nprobe
            )
        if index is None or index.is_exact:
            if self._workspace is None:
                self._workspace = workspace_for(self.n_sources)
            if index is None:
                return exact_outside_cluster(
                    self._sorted_sources(), *args, k, cluster_sorted=True,
                    workspace=self._workspace, score_cut=score_cut,
                )  # fmt: skip
            return exact_outside_cluster(
                index.vectors(), *args, k, workspace=self._workspace, score_cut=score_cut
            )
        r = self._rerank(index) or 1
        kk = k * r
        if index.is_clusters:
            self._lists = self._lists or index.cluster_lists(self.layout.offsets)
            d, i = probe_outside_cluster(
                self._lists, self._centroids, *args, kk, nprobe=self._nprobe(index)
            )
        else:
            d, i = overfetch_outside_cluster(index.search, index.ntotal, *args, kk)
        if r > 1:
            d, i = self._rescore(qvec[rows], i, k)
        return d, i

    def _exact_lists(self, index: SourceIndex | None):
        """float32 cluster lists to search exactly: the index's own when they
        are uncompressed, else the sorted sources (built once)."""
        from .probe import ClusterLists

        if index is not None and index.is_clusters and _codec(index) == "Flat":
            self._lists = self._lists or index.cluster_lists(self.layout.offsets)
            return self._lists
        return ClusterLists.from_sorted(self._sorted_sources(), self.layout.offsets)

    def _rescore(self, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Keep the ``k`` best of candidates ``ids`` [M, k'] by exact cosine to ``q`` [M, d]."""
        ok = ids >= 0
        uniq, at = np.unique(np.where(ok, ids, 0), return_inverse=True)
        vec = normalized_float32(take_rows(self._raw_sources, uniq))
        sc = np.einsum("md,mkd->mk", q, vec[at.reshape(ids.shape)])
        sc = np.where(ok, sc, -np.inf).astype(np.float32)
        id_key = np.where(ok, ids, np.iinfo(np.int64).max)
        order = np.lexsort((id_key, -sc), axis=-1)[:, :k]
        return np.take_along_axis(sc, order, 1), np.take_along_axis(ids, order, 1)

    def _sample_rows(
        self, p0: int, p1: int, t3: np.ndarray, counts: tuple[int, int, int, int]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """Fill pairs ``p0:p1``; ``t3`` int64 [R, n3] are their tier-3 ids (-1 = none)."""
        questions = self.pair_question[p0:p1]
        cut = self.config.near_duplicate_threshold
        reject = None
        if cut is not None:

            def reject(r: np.ndarray, ids: np.ndarray) -> np.ndarray:
                return self._cos.max_to_positives(questions[r], ids) > cut

        try:
            return fill_rows(
                self.layout,
                self.positives,
                questions,
                self.pair_cluster[p0:p1],
                t3,
                counts,
                block_uniforms(self.config.random_seed, p0, p1, counts),
                reject=reject,
            )
        except RowsUnfillable as e:
            fail(
                "near_duplicate_threshold",
                f"leave n_neg = {self.config.n_neg} sources that are neither positives nor "
                "near-duplicates of a positive for every question",
                f"{cut}, which leaves question {int(questions[e.row])} only {e.have}",
                "Raise the threshold or lower n_neg.",
            )

    def _gather_sources(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Unit vectors of sources ``ids`` int64 [n] into ``out`` float32 [n, d]."""
        if self._sorted is not None:
            return np.take(self._sorted, self.layout.rank[ids], axis=0, out=out)
        index = self.index
        if index is not None and index.is_exact:
            return np.take(index.vectors(), ids, axis=0, out=out)
        if index is not None and index.is_clusters and _codec(index) == "Flat":
            self._lists = self._lists or index.cluster_lists(self.layout.offsets)
            return self._lists.take(self.layout.rank[ids], out=out)
        # Compressed or foreign index: exact vectors come from the embeddings.
        return normalized_float32(take_rows(self._raw_sources, ids), out=out)

    def _positive_cosines(self, p0: int, p1: int) -> np.ndarray:
        """Cosine of each pair's question to its source, pairs ``p0:p1``, float32."""
        out = np.empty(p1 - p0, dtype=np.float32)
        step = 16384
        for a in range(p0, p1, step):
            b = min(a + step, p1)
            uq, inv = self._question_vectors(self.pair_question[a:b])
            out[a - p0 : b - p0] = self._cos.to_vectors(uq[inv], self.pair_source[a:b])
        return out

    def _cosines(
        self, ids: np.ndarray, questions: np.ndarray, anchors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cosine of each negative ``ids`` [R, n_neg] to its row's question and to
        its row's source ``anchors`` [R]: two float32 [R, n_neg], one gather of
        each negative."""
        out = np.empty(ids.shape, dtype=np.float32)
        out_a = np.empty(ids.shape, dtype=np.float32)
        step = 16384
        # Gathers go into reused buffers: fresh memory is slow to fault in.
        qbuf = np.empty((min(step, ids.shape[0]), self.dim), dtype=np.float32)
        sbuf = np.empty_like(qbuf)
        abuf = np.empty_like(qbuf)
        for p0 in range(0, ids.shape[0], step):
            p1 = min(p0 + step, ids.shape[0])
            uq, inv = self._question_vectors(questions[p0:p1])
            qv = np.take(uq, inv, axis=0, out=qbuf[: p1 - p0])
            av = self._gather_sources(anchors[p0:p1], abuf[: p1 - p0])
            for j in range(ids.shape[1]):
                sv = self._gather_sources(ids[p0:p1, j], sbuf[: p1 - p0])
                out[p0:p1, j] = np.einsum("ij,ij->i", qv, sv)
                out_a[p0:p1, j] = np.einsum("ij,ij->i", av, sv)
        return out, out_a

    # ------------------------------------------------------------------ durable runs
    def run_key(self) -> str:
        """sha256 of everything the output depends on: inputs, settings, index.

        ``batch_size``, progress and thread count are left out: the output does
        not depend on them.
        """
        import hashlib

        from ._version import __version__
        from .io.runs import hash_arrays

        h = hashlib.sha256(f"negmine-run:{__version__}:".encode())
        cfg = self.config.to_dict()
        index = self._ensure_index()
        desc = json.dumps(self._describe_search(index), sort_keys=True)
        h.update(json.dumps({"config": cfg, "index": desc}, sort_keys=True).encode())
        hash_arrays(
            h,
            {
                "sources": self._raw_sources,
                "questions": self._raw_questions,
                "pair_question": self.pair_question,
                "pair_source": self.pair_source,
                "pair_cluster": self.pair_cluster,
                "source_cluster": self.layout.source_cluster,
                "adjacent": self.layout.adjacent,
            },
        )
        return "sha256:" + h.hexdigest()

    def mine_to(
        self, output_dir: str | os.PathLike, *, overwrite: bool = False, resume: bool = False
    ) -> dict[str, Any]:
        """Mine every pair and write the outputs to ``output_dir``, durably.

        Finished blocks are checkpointed beside ``output_dir`` (see
        :mod:`negmine.runs`); the outputs are built aside and swapped in only
        when complete, so a killed run never leaves half-written outputs and
        never harms an earlier run's.

        Parameters
        ----------
        output_dir : path
        overwrite : bool
            Replace an earlier run's outputs (refused otherwise, before any work).
        resume : bool
            Reuse the finished blocks of an interrupted run of the same inputs
            and settings; the result is byte-identical to an uninterrupted run.

        Returns
        -------
        dict
            As :meth:`mine_all_negatives`.
        """

        from .io import check_output_dir
        from .io.runs import Checkpoints, completed_run, partial_dir

        key = self.run_key()
        if resume:
            done = completed_run(output_dir, key)
            if done is not None:
                log.info("%s already holds this run; nothing to do", output_dir)
                self.last_stats = done[1].get("stats")
                return done[0]
        check_output_dir(output_dir, overwrite)
        ckpt = Checkpoints(partial_dir(output_dir), key, resume)
        self._run_key = key
        ids, tiers, scores, stats = self.mine_arrays(checkpoints=ckpt)
        stats["checkpoint_blocks"] = {"reused": ckpt.reused, "computed": ckpt.computed}
        res = self._results(ids, tiers, scores)
        self.save(output_dir, res, overwrite=overwrite)
        ckpt.finish()
        return res

    # ------------------------------------------------------------------ output
    def save(
        self, output_dir: str | os.PathLike, results: dict[str, Any], overwrite: bool = False
    ) -> Path:
        """Write ``hard_negatives.pt``, ``negative_tiers.pt``, ``negative_scores.pt``,
        ``positive_scores.pt`` and ``manifest.json`` (last) into ``output_dir``,
        each atomically.

        Returns
        -------
        pathlib.Path
            The output directory.
        """
        from .io import save_outputs

        tensors = {
            k: as_numpy(v, k)
            for k, v in results.items()
            if k.startswith(("hard_", "negative_", "positive_"))
        }
        return save_outputs(output_dir, tensors, self.manifest(), overwrite=overwrite)

    def manifest(self) -> dict[str, Any]:
        """What a mining output directory records about this run."""
        import faiss

        from ._version import __version__

        return {
            "format": "negmine-output",
            "format_version": 1,
            "run_key": self._run_key,
            "config": self.config.to_dict(),
            "seed": self.config.random_seed,
            "stats": self.last_stats,
            "versions": {
                "negmine": __version__,
                "faiss": faiss.__version__,
                "numpy": np.__version__,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def _codec(index: SourceIndex) -> str:
    return index.manifest["clusters"]["codec"]


@contextmanager
def _progress(enabled: bool, total: int, desc: str, unit: str = "pair") -> Iterator[Any]:
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.5)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def mine_negatives(
    source_embeddings: Any,
    question_embeddings: Any,
    centroid_embeddings: Any,
    pair_indices: Any,
    pair_cluster_ids: Any,
    source_cluster_ids: Any,
    n_neg: int = 12,
    output_dir: str | os.PathLike | None = None,
    tier_proportions: Any = None,
    adjacent_k: int = 3,
    random_seed: int = 42,
    overwrite: bool = False,
    resume: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Mine negatives in one call and optionally save them to ``output_dir``.

    Takes the arguments of :class:`NegativeMiner` and returns the dict of
    :meth:`NegativeMiner.mine_all_negatives`. With ``output_dir`` the run is
    durable (:meth:`NegativeMiner.mine_to`): ``overwrite`` replaces an earlier
    run's outputs, ``resume`` continues an interrupted run.
    """
    miner = NegativeMiner(
        source_embeddings,
        question_embeddings,
        centroid_embeddings,
        pair_indices,
        pair_cluster_ids,
        source_cluster_ids,
        n_neg=n_neg,
        tier_proportions=tier_proportions,
        adjacent_k=adjacent_k,
        random_seed=random_seed,
        **kwargs,
    )
    if output_dir is not None:
        return miner.mine_to(output_dir, overwrite=overwrite, resume=resume)
    return miner.mine_all_negatives()
