"""The blocks of a mining run: pure functions of ``(plan, g)``.

:func:`tier3_block` searches tier-3 block ``g`` (:data:`~negmine.plan.T3_BLOCK`
distinct queries) under the filters and the rank window; :func:`pair_block`
fills pair block ``g`` (:data:`~negmine.plan.PAIR_BLOCK` pairs) with tiers 1, 2
and 4 around its tier-3 ids and computes every cosine. Neither reads or
writes files, reports progress or keeps state between calls, so any executor
may run them in any order, anywhere, and get the same bytes: random streams
are keyed by (seed, block) and the blocks are fixed by negmine, not by the
caller's batch size.

With ``pool_depth`` a tier-3 block first takes its pool, the unfiltered
search's best candidates of each query (searched here, or read from a stored
pool by a re-mine), and serves the filtered tier 3 from it; only the rows
whose filters or window reach past the pool are searched again
(:func:`pooled_tier3_ids`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._checks import fail
from .assemble import (
    COUNTER_KEYS,
    RNG_BLOCK,
    SHORT_KEYS,
    STAGES,
    RowsUnfillable,
    block_uniforms,
    fill_rows,
)
from .filters import filtered_tier3, score_thresholds
from .plan import MiningPlan
from .search.common import QUERY_BLOCK, RESULT_BYTES
from .vectors import question_vectors

__all__ = ["PAIR_COUNTS", "pair_block", "pool_search", "pooled_tier3_ids", "tier3_block",
           "tier3_ids"]  # fmt: skip

#: The counts a pair block returns, in order (see :func:`pair_block`).
PAIR_COUNTS = SHORT_KEYS + COUNTER_KEYS


def tier3_block(plan: MiningPlan, g: int) -> dict[str, np.ndarray]:
    """Tier 3 of the plan's tier-3 block ``g``.

    Returns
    -------
    dict
        ``ids`` int64 [m, n3] (``-1`` where short) and, when tier 3 is
        filtered, ``filters`` int64 [2, 5]: candidates each filter removed and
        slots it left to the fallback tier, weighted by the pairs of each query.
        With a pool (``config.pool_depth``) also ``again`` int64 [1], the rows
        searched again past the pool, and, when the pool was searched here
        rather than read from ``plan.pool``, ``pool_scores`` float32 [m, w] and
        ``pool_ids`` int64 [m, w] (``w = plan.pool_width``).
    """
    c0, c1 = plan.tier3_range(g)
    qq, cl = plan.t3_question[c0:c1], plan.t3_cluster[c0:c1]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    out: dict[str, np.ndarray] = {}
    if plan.config.pool_depth is None:
        ids, removed, short = tier3_ids(plan, qvec, rows, cl, qq, c0)
    else:
        if plan.pool is None:
            scores, pids = pool_search(plan, qvec, rows, cl, qq)
            out["pool_scores"], out["pool_ids"] = scores, pids
        else:
            scores, pids = plan.pool.block(c0, c1)
        ids, removed, short, again = pooled_tier3_ids(
            plan, qvec, rows, cl, qq, c0, scores, pids
        )  # fmt: skip
        out["again"] = np.array([again.size], dtype=np.int64)
    out["ids"] = ids
    if removed is not None:
        w = np.bincount(plan.pair_query, minlength=plan.n_tier3)[c0:c1]
        out["filters"] = np.stack([w @ removed, w @ short])
    return out


def pool_search(
    plan: MiningPlan, qvec: np.ndarray, rows: np.ndarray, cluster: np.ndarray,
    question: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The pool of queries ``rows``: the back-end's unfiltered top ``plan.pool_width``.

    Returns
    -------
    scores : float32 [n, w]
        Descending cosines to the question; ``-inf`` where the row ran short.
    ids : int64 [n, w]
        Source ids (cluster skipped, positives excluded); ``-1`` where short.
    """
    k, n = plan.pool_width, rows.size
    scores = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    # Whole query blocks per call, results within RESULT_BYTES (as the filtered search).
    step = max(QUERY_BLOCK, RESULT_BYTES // (12 * max(k, 1)) // QUERY_BLOCK * QUERY_BLOCK)
    for a in range(0, n, step):
        b = min(a + step, n)
        scores[a:b], ids[a:b] = plan.backend.search(
            qvec, rows[a:b], cluster[a:b], question[a:b], k
        )  # fmt: skip
    return scores, ids


def pooled_tier3_ids(
    plan: MiningPlan, qvec: np.ndarray, rows: np.ndarray, cluster: np.ndarray,
    question: np.ndarray, c0: int, pool_scores: np.ndarray, pool_ids: np.ndarray,
    recompute: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray]:  # fmt: skip
    """:func:`tier3_ids` served from a pool of candidates.

    Every search of depth ``k <= w`` is answered with the pool's first ``k``
    columns (the filters then count what they remove in that list). A row
    asked for more than ``w`` candidates is complete when its pool ran short
    (it holds every candidate there is); the other such rows are searched
    again, together, with the back-end (:func:`tier3_ids` with ``take``).
    Mining with a pool and re-mining from it both run this function, so they
    search the same rows in the same groups and agree byte for byte. With the
    exact back-end the result is also the result without a pool (near-ties
    aside: a product over other rows may round a last bit differently).

    Parameters
    ----------
    plan, qvec, rows, cluster, question, c0
        As :func:`tier3_ids`.
    pool_scores : float32 [n, w]
    pool_ids : int64 [n, w]
        The pool of each query (see :func:`pool_search`).
    recompute : bool
        Search the rows past the pool again. Without it those rows keep what
        the pool gives them (a lower bound of what they would find).

    Returns
    -------
    ids, removed, short
        As :func:`tier3_ids`.
    again : int64 [r]
        The rows (positions among the ``n`` queries) the pool could not settle.
    """
    width = pool_ids.shape[1]
    complete = pool_ids[:, -1] < 0 if width else np.zeros(rows.size, dtype=bool)
    if width >= plan.inputs.n_sources:
        complete[:] = True
    deeper: list[np.ndarray] = []

    def search(sel, k, score_cut=None):
        if k <= width:
            return pool_scores[sel, :k], pool_ids[sel, :k]
        deeper.append(sel[~complete[sel]])
        d = np.full((sel.size, k), -np.inf, dtype=np.float32)
        i = np.full((sel.size, k), -1, dtype=np.int64)
        d[:, :width], i[:, :width] = pool_scores[sel], pool_ids[sel]
        return d, i

    ids, removed, short = tier3_ids(plan, qvec, rows, cluster, question, c0, search=search)
    again = np.unique(np.concatenate(deeper)) if deeper else np.zeros(0, dtype=np.int64)
    if again.size and recompute:
        f_ids, f_removed, f_short = tier3_ids(plan, qvec, rows, cluster, question, c0, take=again)
        ids[again] = f_ids
        if removed is not None:
            removed[again], short[again] = f_removed, f_short
    return ids, removed, short, again


def tier3_ids(
    plan: MiningPlan, qvec: np.ndarray, rows: np.ndarray, cluster: np.ndarray,
    question: np.ndarray, c0: int = 0, exact: bool = False, keep_window: bool = False,
    search: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
    take: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:  # fmt: skip
    """Tier-3 ids of queries ``c0, c0 + 1, ...`` under the filters and the window.

    Parameters
    ----------
    plan : MiningPlan
    qvec : float32 [Q', d]
        Unit vectors of the queries' distinct questions.
    rows : int64 [n]
        Row of ``qvec`` of each query.
    cluster, question : int64 [n]
        The cluster each query skips and its question.
    c0 : int
        Index of the first query among the plan's (keys its random stream).
    exact : bool
        Search with the back-end's exact reference instead.
    keep_window : bool
        Return the whole rank window instead of ``n3`` ids.
    search : callable ``(sel, k, score_cut) -> (scores, ids)``, optional
        Answers the searches instead of the back-end (see
        :func:`negmine.filters.filtered_tier3`; ``sel`` are positions among
        the ``n`` queries).
    take : int64 [r], optional
        Only these queries (positions among the ``n``), searched together:
        each keeps its own random draw, and the result has ``r`` rows.

    Returns
    -------
    ids : int64 [n, n3]
        ``-1`` where short; ``[n, hi - lo]`` (the whole window) with ``keep_window``.
    removed, short : int64 [n, 5] or None
        Per query and filter (see :func:`negmine.filters.filtered_tier3`);
        None when tier 3 is not filtered.
    """
    cfg = plan.config
    n3 = cfg.tier_counts[2]
    u = None
    if cfg.tier3_sampling == "random" and not keep_window and cfg.tier3_filtered:
        u = block_uniforms(cfg.seed, c0, c0 + rows.size, cfg.tier_counts)(
            STAGES["tier3_window"], n3
        )
    if take is not None:
        rows, cluster, question = rows[take], cluster[take], question[take]
        u = None if u is None else u[take]

    def backend_search(sel, k, score_cut=None):
        if exact:
            return plan.exact_reference(qvec, rows[sel], cluster[sel], question[sel], k)
        return plan.backend.search(qvec, rows[sel], cluster[sel], question[sel], k, score_cut)

    search = search or backend_search
    if not cfg.tier3_filtered or n3 == 0:
        return search(np.arange(rows.size), n3)[1], None, None
    settings = cfg.filters
    if "relative_margin" in settings or "absolute_margin" in settings:
        floor = plan.vectors.positive_floor(qvec[rows], question)
    else:
        floor = np.zeros(rows.size, dtype=np.float32)
    thresholds, columns = score_thresholds(settings, floor)
    near = None
    if cfg.near_duplicate_threshold is not None:
        cut = cfg.near_duplicate_threshold

        def near(sel: np.ndarray, ids: np.ndarray) -> np.ndarray:
            return plan.vectors.max_to_positives(question[sel], ids) > cut

    return filtered_tier3(
        search, rows.size, n3, cfg.window, plan.inputs.n_sources, thresholds, columns, near, u,
        keep_window,
    )  # fmt: skip


def pair_block(plan: MiningPlan, g: int, tier3: np.ndarray) -> dict[str, np.ndarray]:
    """Tiers 1, 2, 4 and the cosines of the plan's pair block ``g``.

    Parameters
    ----------
    plan : MiningPlan
    g : int
    tier3 : int64 [p1 - p0, n3]
        Tier-3 ids of the block's pairs (``-1`` where short).

    Returns
    -------
    dict
        ``ids``, ``tiers`` int64 [m, n_neg]; ``scores`` float32 [m, n_neg], the
        cosine of each negative to the pair's question; ``pos_neg`` float32
        [m, n_neg], to the pair's source; ``pos`` float32 [m], the question's
        cosine to its source; ``short`` int64 [len(PAIR_COUNTS)], the counts of
        :func:`negmine.assemble.fill_rows` summed over the block.
    """
    inp, n_neg = plan.inputs, plan.config.n_neg
    p0, p1 = plan.pair_range(g)
    ids = np.empty((p1 - p0, n_neg), dtype=np.int64)
    tiers = np.empty((p1 - p0, n_neg), dtype=np.int64)
    short = dict.fromkeys(PAIR_COUNTS, 0)
    step = -(-plan.config.batch_size // RNG_BLOCK) * RNG_BLOCK
    for a in range(p0, p1, step):
        b = min(a + step, p1)
        ids[a - p0 : b - p0], tiers[a - p0 : b - p0], counts = _sample_rows(
            plan, a, b, tier3[a - p0 : b - p0]
        )
        for k, v in counts.items():
            short[k] += v
    qq, src = inp.pair_question[p0:p1], inp.pair_source[p0:p1]
    scores, pos_neg, pos = plan.vectors.pair_cosines(inp.questions, ids, qq, src)
    return {
        "ids": ids,
        "tiers": tiers,
        "scores": scores,
        "pos_neg": pos_neg,
        "pos": pos,
        "short": np.array([short[k] for k in PAIR_COUNTS], dtype=np.int64),
    }


def _sample_rows(
    plan: MiningPlan, p0: int, p1: int, t3: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Fill pairs ``p0:p1``; ``t3`` int64 [R, n3] are their tier-3 ids (-1 = none)."""
    cfg = plan.config
    questions = plan.inputs.pair_question[p0:p1]
    cut = cfg.near_duplicate_threshold
    reject = None
    if cut is not None:

        def reject(r: np.ndarray, ids: np.ndarray) -> np.ndarray:
            return plan.vectors.max_to_positives(questions[r], ids) > cut

    try:
        return fill_rows(
            plan.layout, plan.positives, questions, plan.inputs.pair_cluster[p0:p1], t3,
            cfg.tier_counts, block_uniforms(cfg.seed, p0, p1, cfg.tier_counts), reject=reject,
        )  # fmt: skip
    except RowsUnfillable as e:
        fail(
            "near_duplicate_threshold",
            f"leave n_neg = {cfg.n_neg} sources that are neither positives nor "
            "near-duplicates of a positive for every question",
            f"{cut}, which leaves question {int(questions[e.row])} only {e.have}",
            "Raise the threshold or lower n_neg.",
        )
