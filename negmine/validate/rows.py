"""Row kernels of the validator: positives, repeats and adjacency as boolean masks [P, K]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._order import stable_order
from .report import plural

__all__ = [
    "Positives",
    "adjacent_mask",
    "entries_got",
    "later_duplicates",
]

_N_EXAMPLES = 5
# Questions with at most this many positives are checked by comparing columns;
# rows of questions with more use a sorted-key lookup.
_FEW_POSITIVES = 32


def entries_got(
    mask: np.ndarray,
    ids: np.ndarray,
    detail: Callable[[int, int], str] | None = None,
    what: str = "id",
) -> tuple[int, str]:
    """Count the offending entries of ``mask`` [P, K] and describe the first few."""
    n = int(np.count_nonzero(mask))
    n_rows = int(np.count_nonzero(mask.any(axis=1)))
    flat = np.flatnonzero(mask)[:_N_EXAMPLES]
    rows, cols = np.divmod(flat, mask.shape[1])
    parts = []
    for r, j in zip(rows.tolist(), cols.tolist(), strict=True):
        extra = f": {detail(r, j)}" if detail is not None else ""
        parts.append(f"(row {r}, column {j}, {what} {int(ids[r, j])}{extra})")
    more = ", ..." if n > len(parts) else ""
    return n, f"{plural(n, 'entry')} in {plural(n_rows, 'row')}: {', '.join(parts)}{more}"


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D int64 array."""
    s = np.sort(x)
    keep = np.ones(s.size, dtype=bool)
    keep[1:] = s[1:] != s[:-1]
    return s[keep]


def _dense_rank(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank of each value of ``x`` [n] among its distinct values, and their number."""
    order = stable_order(x)
    s = x[order]
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] != s[:-1]
    rank = np.empty(s.size, dtype=np.int64)
    rank[order] = np.cumsum(new) - 1
    return rank, int(np.count_nonzero(new))


def _positive_mask(
    ids: np.ndarray,
    valid: np.ndarray,
    qd: np.ndarray,
    pos_offsets: np.ndarray,
    pos_sources: np.ndarray,
    keys: np.ndarray,
    n_src: int,
) -> np.ndarray:
    """True where a row of ``ids`` [P, K] holds a positive of its question.

    ``qd`` [P] is each row's dense question rank, ``pos_offsets``/``pos_sources``
    the positives CSR over those ranks and ``keys`` the sorted ``rank * S + source``.
    """
    is_pos = np.zeros(ids.shape, dtype=bool)
    if ids.size == 0:
        return is_pos
    starts = pos_offsets[qd]
    counts = pos_offsets[qd + 1] - starts
    few = counts <= _FEW_POSITIVES
    # Compare column by column against the j-th positive of each row's question.
    for j in range(int(counts[few].max(initial=0))):
        rows = np.flatnonzero(few & (counts > j))
        if rows.size == ids.shape[0]:
            is_pos |= ids == pos_sources[starts + j][:, None]
        else:
            is_pos[rows] |= ids[rows] == pos_sources[starts[rows] + j][:, None]
    many = np.flatnonzero(~few)
    if many.size:
        want = qd[many][:, None] * n_src + ids[many]
        at = np.minimum(np.searchsorted(keys, want), keys.size - 1)
        is_pos[many] |= keys[at] == want
    is_pos &= valid
    return is_pos


#: Rows :func:`later_duplicates` sorts at a time.
REPEAT_ROWS = 1 << 16


def later_duplicates(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """True at every repeat of an in-range id within its row (first occurrence stays False)."""
    n_rows, k = ids.shape
    later = np.zeros(ids.shape, dtype=bool)
    if n_rows == 0 or k < 2:
        return later
    stand_in = -1 - np.arange(k, dtype=np.int64)
    for r0 in range(0, n_rows, REPEAT_ROWS):  # in steps: a sorted copy of every row is large
        r1 = min(r0 + REPEAT_ROWS, n_rows)
        # Out-of-range entries get distinct negative stand-ins so they never match.
        work = np.where(valid[r0:r1], ids[r0:r1], stand_in)
        srt = np.sort(work, axis=1)
        dup_rows = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
        if dup_rows.size:
            sub = work[dup_rows]
            order = np.argsort(sub, axis=1, kind="stable")
            s = np.take_along_axis(sub, order, axis=1)
            sub_later = np.zeros(sub.shape, dtype=bool)
            np.put_along_axis(sub_later, order[:, 1:], s[:, 1:] == s[:, :-1], axis=1)
            later[r0 + dup_rows] = sub_later
    return later


def adjacent_mask(adj: np.ndarray, owner_cluster: np.ndarray, cl: np.ndarray) -> np.ndarray:
    """True where ``cl`` [R, K] is adjacent to ``owner_cluster`` [R]."""
    hit = np.zeros(cl.shape, dtype=bool)
    for j in range(adj.shape[1]):
        col = adj[owner_cluster, j]
        hit |= cl == col.reshape(col.shape + (1,) * (cl.ndim - 1))
    return hit


@dataclass(frozen=True)
class Positives:
    """The positives of each question as a CSR over dense question ranks.

    Attributes
    ----------
    qd : int64 [P]
        Dense rank of each pair's question.
    offsets : int64 [n_questions + 1]
    sources : int64 [N]
        Positive source ids, sorted within each question.
    keys : int64 [N]
        Sorted ``rank * S + source``.
    n_src : int
    """

    qd: np.ndarray
    offsets: np.ndarray
    sources: np.ndarray
    keys: np.ndarray
    n_src: int

    @classmethod
    def from_pairs(cls, pairs: np.ndarray, n_src: int) -> Positives:
        """Build from ``pairs`` int64 [P, 2] of (question, source) with sources in ``[0, S)``."""
        qd, n_questions = _dense_rank(pairs[:, 0])
        keys = _sorted_unique(qd * n_src + pairs[:, 1])
        div = max(n_src, 1)
        owner = keys // div
        offsets = np.zeros(n_questions + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=n_questions), out=offsets[1:])
        return cls(qd, offsets, keys - owner * div, keys, n_src)

    def mask(self, ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """True where ``ids`` [P, K] (in range where ``valid``) holds a positive of its row."""
        return _positive_mask(
            ids, valid, self.qd, self.offsets, self.sources, self.keys, self.n_src
        )
