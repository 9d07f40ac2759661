"""validate_negatives: resolve the inputs, check the whole arrays, then every entry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._checks import as_numpy, check_ids, fail
from .inputs import as_int64, check_near, check_pairs, check_proportions, resolve_adjacent
from .report import TIERS, ValidationReport, message, shape_str
from .rows import entries_got
from .rules import Entries, check_entries

__all__ = ["validate_negatives"]

logger = logging.getLogger("negmine.validate")

_NAME = "hard_negatives"


def validate_negatives(
    hard_negatives: Any,
    negative_tiers: Any,
    *,
    pair_indices: Any,
    pair_cluster_ids: Any,
    source_cluster_ids: Any,
    centroid_embeddings: Any = None,
    adjacent_k: int = 3,
    adjacent: Any = None,
    tier_proportions: Sequence[int] | np.ndarray | None = None,
    raise_on_error: bool = False,
    source_embeddings: Any = None,
    near_duplicate_threshold: float | None = None,
) -> ValidationReport:
    """Check mined hard negatives and their tier labels against every rule.

    Parameters
    ----------
    hard_negatives : numpy.ndarray or torch.Tensor, int64, shape [P, n_neg]
        Mined source ids, one row per pair.
    negative_tiers : numpy.ndarray or torch.Tensor, int64, shape [P, n_neg]
        Tier label 1..4 of each mined id.
    pair_indices : array-like, int, shape [P, 2]
        (question, source) of each positive pair. Questions >= 0, sources in
        ``[0, S)``.
    pair_cluster_ids : array-like, int, shape [P]
        Cluster of each pair, in ``[0, C)``; it may differ from its source's.
    source_cluster_ids : array-like, int, shape [S]
        Cluster of each source, in ``[0, C)``.
    centroid_embeddings : array-like, float, shape [C, d], optional
        Cluster centroids; the adjacent table is computed from them with
        :func:`negmine.layout.adjacent_clusters`. Needed unless ``adjacent``
        is given.
    adjacent_k : int, default 3
        Adjacent clusters per cluster when computing from centroids. Ignored
        when ``adjacent`` is given (its width is used).
    adjacent : array-like, int, shape [C, adjacent_k], optional
        Precomputed adjacent table, ``-1`` padded. Takes precedence over
        ``centroid_embeddings`` (which, if also given, must have ``C`` rows).
    tier_proportions : sequence of 4 int, optional
        Requested negatives per row for tiers 1..4. Enables
        ``report.requested`` and the fallback columns. Their sum must equal
        ``n_neg``, otherwise an ``n_neg`` error is reported.
    raise_on_error : bool, default False
        Raise :class:`ValidationError` instead of returning a failed report.
    source_embeddings : array-like, float, shape [S, d], optional
        Needed with ``near_duplicate_threshold``.
    near_duplicate_threshold : float, optional
        The miner's near-duplicate filter: no row may hold a source whose
        cosine to a positive of its question is above it, and the tier-4 rule
        does not expect such sources in the row.

    Returns
    -------
    ValidationReport
        ``report.ok`` is True when every rule holds; otherwise
        ``report.errors`` holds one message per violated rule.

    Raises
    ------
    ValueError, TypeError
        Malformed inputs other than the mined output (mismatched lengths,
        wrong ranks or dtypes, ids out of range, neither centroids nor an
        adjacent table).
    ValidationError
        With ``raise_on_error=True``, when a rule is violated.

    Notes
    -----
    Entries whose id is out of range skip the checks that look the id up
    (positive, tier) and are not counted as duplicates; entries whose label is
    not 1..4 skip the tier checks. Everything else is still checked. A label-4
    id from an adjacent cluster is accepted only if the row holds every
    non-positive source of the row's distant clusters. Ids and labels are
    quoted in messages as given: an unsigned id past ``2**63 - 1`` as itself.
    """
    hn = as_numpy(hard_negatives, "hard_negatives")
    tiers = as_numpy(negative_tiers, "negative_tiers")
    adj, n_clusters, c_from = resolve_adjacent(centroid_embeddings, adjacent_k, adjacent)
    src_cluster = check_ids(
        source_cluster_ids, "source_cluster_ids", ndim=1, upper=n_clusters, upper_what=c_from
    )
    pairs = check_pairs(pair_indices, int(src_cluster.size))
    pair_cluster = _check_pair_clusters(pair_cluster_ids, pairs.shape[0], n_clusters, c_from)
    per_row = check_proportions(tier_proportions)
    near_src = check_near(near_duplicate_threshold, source_embeddings, int(src_cluster.size))

    report = _new_report(hn, tiers, pairs.shape[0], per_row)
    shape_ok = _check_shapes(report, hn, tiers)
    ids = as_int64(hn, "hard_negatives", report)
    labels = as_int64(tiers, "negative_tiers", report)
    label_ok = None if labels is None else (labels >= 1) & (labels <= 4)
    if label_ok is not None:
        counts = np.bincount(np.where(label_ok, labels, 0).reshape(-1), minlength=5)
        report.tier_counts = {t: int(counts[t]) for t in TIERS}
    if shape_ok:
        _check_n_neg(report, per_row)
        valid = _check_values(report, hn, tiers, ids, label_ok, int(src_cluster.size))
        if ids is not None and valid is not None:
            entries = Entries(ids, valid, labels, label_ok, pairs, pair_cluster, src_cluster, adj)
            near = None if near_src is None else (near_src, float(near_duplicate_threshold))
            check_entries(report, entries, near)
    else:
        logger.debug("shape mismatch; entry checks skipped")
    if raise_on_error:
        report.raise_if_failed()
    return report


def _check_pair_clusters(x: Any, n_pairs: int, n_clusters: int, c_from: str) -> np.ndarray:
    pair_cluster = check_ids(x, "pair_cluster_ids", ndim=1, upper=n_clusters, upper_what=c_from)
    if pair_cluster.size != n_pairs:
        fail(
            "pair_cluster_ids",
            f"have one entry per pair (P = len(pair_indices) = {n_pairs})",
            f"length {pair_cluster.size}",
        )
    return pair_cluster


def _new_report(
    hn: np.ndarray, tiers: np.ndarray, n_pairs: int, per_row: np.ndarray | None
) -> ValidationReport:
    n_neg = hn.shape[1] if hn.ndim == 2 else (tiers.shape[1] if tiers.ndim == 2 else 0)
    report = ValidationReport(n_pairs=int(n_pairs), n_neg=int(n_neg))
    if per_row is not None:
        report.requested = {t: int(per_row[t - 1]) * int(n_pairs) for t in TIERS}
    return report


def _check_shapes(report: ValidationReport, hn: np.ndarray, tiers: np.ndarray) -> bool:
    """The whole-array shape rules; True when both arrays are [P, n_neg]."""
    ok = True
    if hn.ndim != 2 or hn.shape[0] != report.n_pairs:
        ok = False
        rule = f"have shape [P, n_neg] with P = len(pair_indices) = {report.n_pairs}"
        report._add("shape", 1, message(_NAME, rule, f"shape {shape_str(hn.shape)}"))
    if tiers.shape != hn.shape:
        ok = False
        rule = f"have the shape of `hard_negatives` {shape_str(hn.shape)}"
        got = f"shape {shape_str(tiers.shape)}"
        report._add("shape", 1, message("negative_tiers", rule, got))
    return ok


def _check_n_neg(report: ValidationReport, per_row: np.ndarray | None) -> None:
    if per_row is not None and int(per_row.sum()) != report.n_neg:
        rule = f"have sum(tier_proportions) = {int(per_row.sum())} columns"
        fix = "Pass the tier_proportions the miner was run with."
        report._add("n_neg", 1, message(_NAME, rule, f"{report.n_neg} columns", fix))


def _check_values(
    report: ValidationReport,
    hn: np.ndarray,
    tiers: np.ndarray,
    ids: np.ndarray | None,
    label_ok: np.ndarray | None,
    n_src: int,
) -> np.ndarray | None:
    """Ids in ``[0, S)`` and labels in 1..4; return where ids are in range.

    Offending values are quoted from the arrays as given (``hn``, ``tiers``),
    not from their int64 casts, which wrap unsigned values past ``2**63 - 1``.
    """
    valid = None
    if ids is not None:
        valid = (ids >= 0) & (ids < n_src)
        if not valid.all():
            n, got = entries_got(~valid, hn)
            rule = f"hold source ids in [0, {n_src}) where S = len(source_cluster_ids)"
            report._add("id_range", n, message(_NAME, rule, got))
    if label_ok is not None and not label_ok.all():
        n, got = entries_got(~label_ok, tiers, what="label")
        report._add(
            "label_value", n, message("negative_tiers", "hold tier labels in {1, 2, 3, 4}", got)
        )
    return valid
