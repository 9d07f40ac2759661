"""The per-entry rules: positives, near-duplicates, repeats and the cluster of each tier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..config import TIER_NAMES
from ..layout import csr_expand
from .near import NEAR_TOLERANCE, NearDuplicates
from .report import ValidationReport, message
from .rows import Positives, adjacent_mask, entries_got, later_duplicates

__all__ = ["Entries", "check_entries"]

_NAME = "hard_negatives"


@dataclass
class Entries:
    """Mined entries and the corpus they are checked against.

    Attributes
    ----------
    ids : int64 [P, K]
        Mined source ids (as int64).
    valid : bool [P, K]
        Where ``ids`` lies in ``[0, S)``.
    labels : int64 [P, K] or None
        Tier labels; None when unusable (then no tier rule is checked).
    label_ok : bool [P, K] or None
        Where ``labels`` is 1..4.
    pairs : int64 [P, 2]
    pair_cluster : int64 [P]
    src_cluster : int64 [S]
    adj : int64 [C, k]
        Adjacent clusters, ``-1`` padded.
    """

    ids: np.ndarray
    valid: np.ndarray
    labels: np.ndarray | None
    label_ok: np.ndarray | None
    pairs: np.ndarray
    pair_cluster: np.ndarray
    src_cluster: np.ndarray
    adj: np.ndarray

    @cached_property
    def safe(self) -> np.ndarray:
        """``ids`` with out-of-range entries replaced by 0, for lookups (made once:
        three rules look sources up, and ``ids`` is not changed meanwhile)."""
        return np.where(self.valid, self.ids, 0)


def check_entries(
    report: ValidationReport, e: Entries, near_args: tuple[np.ndarray, float] | None = None
) -> None:
    """Add to ``report`` every per-entry rule ``e`` breaks.

    ``near_args`` is (source embeddings [S, d], threshold) with the
    near-duplicate filter.
    """
    pos = Positives.from_pairs(e.pairs, int(e.src_cluster.size))
    is_pos = _check_positives(report, e, pos)
    near = None
    if near_args is not None:
        near = NearDuplicates(near_args[0], near_args[1], pos.offsets, pos.sources)
        _check_near(report, e, pos, near, is_pos)
    later = _check_repeats(report, e)
    if e.labels is None or e.label_ok is None:
        return
    cl = e.src_cluster[e.safe]
    own = cl == e.pair_cluster[:, None]
    in_adj = adjacent_mask(e.adj, e.pair_cluster, cl)
    check = e.valid & e.label_ok
    _check_tier_clusters(report, e, e.labels, check, cl, own, in_adj)
    widened = check & (e.labels == 4) & in_adj
    if widened.any():
        in_row = e.valid & ~own & ~in_adj & ~is_pos & ~later
        _check_widened(report, e, pos, near, widened, in_row.sum(axis=1), cl)


def _check_positives(report: ValidationReport, e: Entries, pos: Positives) -> np.ndarray:
    is_pos = pos.mask(e.safe, e.valid)
    if is_pos.any():
        n, got = entries_got(is_pos, e.ids, lambda r, j: f"question {int(e.pairs[r, 0])}")
        rule = "not hold a positive of the row's question (a source of any pair with that question)"
        fix = "Exclude every positive of the question when mining."
        report._add("positive", n, message(_NAME, rule, got, fix))
    return is_pos


def _check_near(
    report: ValidationReport,
    e: Entries,
    pos: Positives,
    near: NearDuplicates,
    is_pos: np.ndarray,
) -> None:
    best = near.row_max(e.safe, pos.qd, e.valid & ~is_pos)
    is_near = best > near.threshold + NEAR_TOLERANCE
    if is_near.any():
        n, got = entries_got(is_near, e.ids, lambda r, j: f"cosine {float(best[r, j]):.6f}")
        rule = (
            "not hold a near-duplicate of a positive of the row's question (cosine "
            f"above near_duplicate_threshold = {near.threshold})"
        )
        report._add("near_duplicate", n, message(_NAME, rule, got))


def _check_repeats(report: ValidationReport, e: Entries) -> np.ndarray:
    later = later_duplicates(e.ids, e.valid)
    if later.any():

        def first_col(r: int, j: int) -> str:
            return f"also at column {int(np.flatnonzero(e.ids[r] == e.ids[r, j])[0])}"

        n, got = entries_got(later, e.ids, first_col)
        report._add("duplicate", n, message(_NAME, "not hold the same id twice in a row", got))
    return later


def _where(e: Entries, cl: np.ndarray) -> Callable[[int, int], str]:
    def where(r: int, j: int) -> str:
        return f"cluster {int(cl[r, j])}, pair cluster {int(e.pair_cluster[r])}"

    return where


def _check_tier_clusters(
    report: ValidationReport,
    e: Entries,
    labels: np.ndarray,
    check: np.ndarray,
    cl: np.ndarray,
    own: np.ndarray,
    in_adj: np.ndarray,
) -> None:
    """Tiers 1, 2, 3 and 4 against the cluster of each id (the widening rule aside),
    where ``check`` (id in range, label 1..4)."""
    where = _where(e, cl)

    def where_adj(r: int, j: int) -> str:
        a = e.adj[e.pair_cluster[r]]
        return f"{where(r, j)} with adjacent {[int(x) for x in a[a >= 0]]}"

    rules: list[tuple[str, int, np.ndarray, str, Callable[[int, int], str]]] = [
        ("tier1", 1, ~own, "only from the pair's cluster", where),
        ("tier2", 2, ~in_adj, "only from clusters adjacent to the pair's cluster", where_adj),
        ("tier3", 3, own, "only from outside the pair's cluster", where),
        ("tier4_own", 4, own, "only from outside the pair's cluster", where),
    ]
    for kind, tier, wrong, rule, detail in rules:
        bad = check & (labels == tier) & wrong
        if bad.any():
            n, got = entries_got(bad, e.ids, detail)
            text = f"hold tier-{tier} ({TIER_NAMES[tier]}) ids {rule}"
            report._add(kind, n, message(_NAME, text, got))


def _distant_need(
    e: Entries, pos: Positives, near: NearDuplicates | None, rows: np.ndarray
) -> np.ndarray:
    """Per row of ``rows``: the non-positive (and non-near-duplicate) sources of the
    clusters distant from the row's pair cluster."""
    n_src, n_clusters = int(e.src_cluster.size), int(e.adj.shape[0])
    c_rows = e.pair_cluster[rows]
    sizes = np.bincount(e.src_cluster, minlength=n_clusters).astype(np.int64)
    # Set semantics: a cluster listed twice in a row counts once.
    adj_sorted = np.sort(np.where(e.adj >= 0, e.adj, -1), axis=1)
    first = adj_sorted >= 0
    first[:, 1:] &= adj_sorted[:, 1:] != adj_sorted[:, :-1]
    adj_size = np.where(first, sizes[np.maximum(adj_sorted, 0)], 0).sum(axis=1)
    distant_total = n_src - sizes - adj_size
    if near is not None:
        # Near-duplicates (positives among them) are not expected in the row.
        return distant_total[c_rows] - near.near_counts(pos.qd[rows], c_rows, e.src_cluster, e.adj)
    owner, at = csr_expand(pos.offsets, pos.qd[rows])
    p_cl = e.src_cluster[pos.sources[at]]
    p_owner_cl = c_rows[owner]
    p_distant = (p_cl != p_owner_cl) & ~adjacent_mask(e.adj, p_owner_cl, p_cl)
    return distant_total[c_rows] - np.bincount(owner[p_distant], minlength=rows.size)


def _check_widened(
    report: ValidationReport,
    e: Entries,
    pos: Positives,
    near: NearDuplicates | None,
    widened: np.ndarray,
    have: np.ndarray,
    cl: np.ndarray,
) -> None:
    """A label-4 id from an adjacent cluster is allowed only once its row holds
    every non-positive source of the distant clusters (``have`` [P] per row)."""
    rows = np.flatnonzero(widened.any(axis=1))
    need = np.zeros(e.ids.shape[0], dtype=np.int64)
    need[rows] = _distant_need(e, pos, near, rows)
    short = np.zeros(e.ids.shape[0], dtype=bool)
    short[rows] = have[rows] < need[rows]
    bad = widened & short[:, None]
    if not bad.any():
        return
    where = _where(e, cl)

    def detail(r: int, j: int) -> str:
        return (
            f"{where(r, j)}; the row holds {int(have[r])} of "
            f"{int(need[r])} non-positive distant sources"
        )

    n, got = entries_got(bad, e.ids, detail)
    rule = (
        "hold tier-4 (random) ids only from distant clusters (neither the pair's "
        "cluster nor adjacent to it), or from adjacent ones once the row holds every "
        "non-positive source of the distant clusters"
    )
    report._add("tier4_adjacent", n, message(_NAME, rule, got))
