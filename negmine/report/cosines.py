"""Cosines of mined negatives recomputed from a dataset, and the checks that it is the right one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._checks import check_embeddings, check_ids, fail, normalized_float32

__all__ = ["PAIR_BLOCK", "SCORE_TOLERANCE", "check_data", "compare_scores", "pair_cosines"]

#: Largest difference between ``negative_scores.pt`` and the cosines recomputed
#: from a dataset directory for the two to count as the same run.
SCORE_TOLERANCE = 1e-3

#: Pairs per block when recomputing cosines from embeddings.
PAIR_BLOCK = 4096


def pair_cosines(
    source_embeddings: Any,
    question_embeddings: Any,
    pair_indices: np.ndarray,
    hard_negatives: np.ndarray,
    block: int = PAIR_BLOCK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines of every negative to its question and to its pair's positive.

    Parameters
    ----------
    source_embeddings : float [S, d]
    question_embeddings : float [Q, d]
    pair_indices : int [P, 2]
        (question, source) of each pair.
    hard_negatives : int [P, n_neg]
        Source ids in ``[0, S)``.
    block : int
        Pairs per block.

    Returns
    -------
    question_negative : float32 [P, n_neg]
        cos(question, negative).
    positive_negative : float32 [P, n_neg]
        cos(positive source, negative).
    question_positive : float32 [P]
        cos(question, positive source).

    Notes
    -----
    Only the sources and questions that occur are read; each is normalised once
    in float32. Products run in blocks of ``block`` pairs, so memory beyond the
    outputs stays ``O(block * n_neg * d)``.
    """
    neg = np.asarray(hard_negatives, dtype=np.int64)
    qi = np.asarray(pair_indices[:, 0], dtype=np.int64)
    si = np.asarray(pair_indices[:, 1], dtype=np.int64)
    used_s = np.unique(np.concatenate([neg.reshape(-1), si]))
    used_q = np.unique(qi)
    src = normalized_float32(np.asarray(source_embeddings)[used_s])
    qry = normalized_float32(np.asarray(question_embeddings)[used_q])
    n_p, n_neg = neg.shape
    qn = np.empty((n_p, n_neg), dtype=np.float32)
    pn = np.empty((n_p, n_neg), dtype=np.float32)
    qp = np.empty(n_p, dtype=np.float32)
    for a in range(0, n_p, block):
        b = min(a + block, n_p)
        qv = qry[np.searchsorted(used_q, qi[a:b])]
        pv = src[np.searchsorted(used_s, si[a:b])]
        nv = src[np.searchsorted(used_s, neg[a:b])]  # [B, n_neg, d]
        qn[a:b] = np.matmul(nv, qv[:, :, None])[:, :, 0]
        pn[a:b] = np.matmul(nv, pv[:, :, None])[:, :, 0]
        qp[a:b] = np.einsum("ij,ij->i", qv, pv)
    return qn, pn, qp


def _mismatch(what: str, fix: str = "") -> None:
    fail(
        "DATA_DIR",
        "hold the inputs OUT_DIR was mined from",
        what,
        fix or "Pass the dataset directory this run was mined from.",
    )


def check_data(
    arrays: Mapping[str, Any], ids: np.ndarray, stats: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the dataset against the output; return (sources, questions, pairs)."""
    src = check_embeddings(arrays["source_embeddings"], "source_embeddings")
    qry = check_embeddings(
        arrays["question_embeddings"], "question_embeddings", src.shape[1], "source_embeddings"
    )
    pairs = np.asarray(arrays["pair_indices"])
    n_s, n_q = src.shape[0], qry.shape[0]
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        _mismatch(f"pair_indices of shape {list(pairs.shape)}, not [P, 2]")
    if pairs.shape[0] != ids.shape[0]:
        _mismatch(f"{pairs.shape[0]} pairs, while OUT_DIR holds {ids.shape[0]} rows of negatives")
    check_ids(
        pairs[:, 0],
        "pair_indices[:, 0]",
        ndim=1,
        upper=n_q,
        upper_what="Q = len(question_embeddings)",
    )
    check_ids(
        pairs[:, 1],
        "pair_indices[:, 1]",
        ndim=1,
        upper=n_s,
        upper_what="S = len(source_embeddings)",
    )
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_s):
        _mismatch(
            f"S = {n_s} sources, while hard_negatives.pt holds ids in "
            f"[{int(ids.min())}, {int(ids.max())}]"
        )
    recorded = {
        "n_pairs": pairs.shape[0],
        "n_sources": n_s,
        "n_questions": n_q,
        "n_clusters": len(arrays["centroid_embeddings"]),
    }
    for key, have in recorded.items():
        want = stats.get(key)
        if isinstance(want, int) and want != have:
            _mismatch(f"{key} = {have}, while the manifest records {want}")
    own = ids == pairs[:, 1:2].astype(np.int64)
    if own.any():
        p = int(np.flatnonzero(own.any(axis=1))[0])
        _mismatch(f"pair {p}'s own source {int(pairs[p, 1])} among its negatives")
    return src, qry, pairs.astype(np.int64)


def compare_scores(recorded: np.ndarray, recomputed: np.ndarray, fname: str) -> None:
    if recorded.shape != recomputed.shape:
        _mismatch(f"{fname} of shape {list(recorded.shape)} for {list(recomputed.shape)} cosines")
    diff = np.abs(recorded.astype(np.float64) - recomputed)
    if diff.size and not diff.max() <= SCORE_TOLERANCE:
        where = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(diff), diff, np.inf))),
                                 diff.shape)  # fmt: skip
        _mismatch(
            f"embeddings whose cosines differ from {fname} by up to {float(np.max(diff)):.3g} "
            f"(at {list(map(int, where))})",
            "These are not the embeddings this run was mined from.",
        )
