"""The validator's inputs: the corpus arrays it checks against, and the mined arrays as int64."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import as_numpy, check_embeddings, check_ids, fail
from ..layout import adjacent_clusters
from .report import ValidationReport, message, shape_str

__all__ = ["as_int64", "check_near", "check_pairs", "check_proportions", "resolve_adjacent"]

_INT64_MAX = int(np.iinfo(np.int64).max)


def _check_integer_dtype(a: np.ndarray, name: str, fix: str) -> None:
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        fail(name, "have an integer dtype", f"dtype {a.dtype}", fix, exc=TypeError)


def _first_at(a: np.ndarray, value: int) -> str:
    """``"[i, j]"``: where ``value`` first occurs in ``a``."""
    flat = int(np.flatnonzero(a.reshape(-1) == value)[0])
    return "[" + ", ".join(str(int(i)) for i in np.unravel_index(flat, a.shape)) + "]"


def _check_table(a: np.ndarray, centroid_embeddings: Any) -> np.ndarray:
    """Check a precomputed adjacent table [C, k]; return it as int64."""
    _check_integer_dtype(a, "adjacent", "Pass the table from negmine.layout.adjacent_clusters.")
    if a.ndim != 2:
        fail("adjacent", "have shape [C, adjacent_k]", f"shape {shape_str(a.shape)}")
    a = np.asarray(a, dtype=np.int64)
    n_c = a.shape[0]
    if centroid_embeddings is not None:
        cents = check_embeddings(centroid_embeddings, "centroid_embeddings")
        if cents.shape[0] != n_c:
            fail(
                "adjacent",
                f"have one row per centroid (C = len(centroid_embeddings) = {cents.shape[0]})",
                f"shape {shape_str(a.shape)}",
                "Pass the table computed from these centroids, or only one of the two.",
            )
    bad = (a < -1) | (a >= n_c)
    if bad.any():
        r, j = np.argwhere(bad)[0]
        fail(
            "adjacent",
            f"hold cluster ids in [0, {n_c}) or -1 padding where C = len(adjacent)",
            f"{int(a[r, j])} at [{r}, {j}]",
        )
    own = a == np.arange(n_c, dtype=np.int64)[:, None]
    if own.any():
        r, j = np.argwhere(own)[0]
        fail(
            "adjacent",
            "never list a cluster as adjacent to itself",
            f"{r} at [{r}, {j}]",
            "Rebuild it with negmine.layout.adjacent_clusters.",
        )
    return a


def resolve_adjacent(
    centroid_embeddings: Any, adjacent_k: Any, adjacent: Any
) -> tuple[np.ndarray, int, str]:
    """Return the adjacent table int64 [C, k], C and how C was fixed."""
    if adjacent is not None:
        a = _check_table(as_numpy(adjacent, "adjacent"), centroid_embeddings)
        return a, int(a.shape[0]), "C = len(adjacent)"
    if centroid_embeddings is None:
        fail(
            "centroid_embeddings",
            "be given when `adjacent` is not",
            "None for both",
            "Pass the cluster centroids [C, d] or a precomputed `adjacent` table [C, adjacent_k].",
        )
    if isinstance(adjacent_k, bool) or not isinstance(adjacent_k, (int, np.integer)):
        fail("adjacent_k", "be an int", f"{adjacent_k!r}", exc=TypeError)
    if adjacent_k < 0:
        fail("adjacent_k", "be >= 0", str(adjacent_k))
    cents = check_embeddings(centroid_embeddings, "centroid_embeddings")
    table = adjacent_clusters(cents, int(adjacent_k))
    return table, int(cents.shape[0]), "C = len(centroid_embeddings)"


def check_pairs(pair_indices: Any, n_src: int) -> np.ndarray:
    """Check ``pair_indices`` [P, 2] of (question, source); return it as int64.

    Both columns are checked in the input's own dtype, before the cast, so a
    uint64 id past ``2**63 - 1`` is reported as itself, not as a wrapped
    negative number. Question ids must be >= 0 and fit in int64 (the validator
    does not know ``Q``); source ids must lie in ``[0, S)``.
    """
    a = as_numpy(pair_indices, "pair_indices")
    _check_integer_dtype(a, "pair_indices", "Convert with .astype(np.int64).")
    if a.ndim != 2 or a.shape[1] != 2:
        fail(
            "pair_indices",
            "have shape [P, 2] of (question, source)",
            f"shape {shape_str(a.shape)}",
        )
    questions = a[:, 0]
    if questions.size:
        lo, hi = int(questions.min()), int(questions.max())
        if lo < 0 or hi > _INT64_MAX:
            bad = lo if lo < 0 else hi
            fail(
                "pair_indices[:, 0]",
                "hold question ids >= 0 that fit in int64 (below 2**63)",
                f"{bad} at {_first_at(questions, bad)}",
                "Question ids are rows of question_embeddings.",
            )
    check_ids(
        a[:, 1],
        "pair_indices[:, 1]",
        ndim=1,
        upper=n_src,
        upper_what="S = len(source_cluster_ids)",
    )
    return np.asarray(a, dtype=np.int64)


def check_proportions(tier_proportions: Any) -> np.ndarray | None:
    """Check four per-row tier counts; return them as int64 [4], or None."""
    if tier_proportions is None:
        return None
    p = np.asarray(as_numpy(tier_proportions, "tier_proportions"))
    if p.dtype == np.bool_ or not np.issubdtype(p.dtype, np.integer):
        fail(
            "tier_proportions",
            "be four ints (negatives per row for tiers 1..4)",
            f"{tier_proportions!r}",
            exc=TypeError,
        )
    if p.shape != (4,) or (p < 0).any():
        fail(
            "tier_proportions",
            "be four ints >= 0 (negatives per row for tiers 1..4)",
            f"{tier_proportions!r}",
        )
    return p.astype(np.int64)


def check_near(threshold: Any, source_embeddings: Any, n_src: int) -> np.ndarray | None:
    """Check the near-duplicate setting; return the source embeddings it needs, or None."""
    if threshold is None:
        return None
    t = threshold
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
        fail("near_duplicate_threshold", "be a number in [-1, 1] or None", repr(t), exc=TypeError)
    if not -1 <= t <= 1:
        fail("near_duplicate_threshold", "be in [-1, 1]", t)
    if source_embeddings is None:
        fail("source_embeddings", "be given with `near_duplicate_threshold`", "None")
    src = check_embeddings(source_embeddings, "source_embeddings")
    if src.shape[0] != n_src:
        fail(
            "source_embeddings",
            f"have one row per source (S = {n_src})",
            f"{src.shape[0]} rows",
        )
    return src


def as_int64(a: np.ndarray, name: str, report: ValidationReport) -> np.ndarray | None:
    """Return ``a`` as int64, recording a dtype error; None when values are unusable.

    Values of an unsigned array past ``2**63 - 1`` become negative in the cast:
    they are out of range either way, and messages quote them from ``a``.
    """
    if a.dtype == np.int64:
        return a
    fix = "Convert with .astype(np.int64)."
    if a.dtype.kind in "iu":
        report._add("dtype", 1, message(name, "be int64", f"dtype {a.dtype}", fix))
        return a.astype(np.int64)
    if a.dtype.kind == "f" and bool(np.isfinite(a).all() and (a == np.round(a)).all()):
        got = f"dtype {a.dtype}"
        report._add(
            "dtype", 1, message(name, "be int64", got, fix + " Values were checked as ints.")
        )
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        fix = "Its values are not all whole numbers and were not checked."
    else:
        fix = "Its values were not checked."
    report._add("dtype", 1, message(name, "be int64", f"dtype {a.dtype}", fix))
    return None
