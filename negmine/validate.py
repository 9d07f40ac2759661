"""Check mined hard negatives against the tier rules.

A miner returns, for ``P`` positive pairs, ``hard_negatives`` int64 ``[P, n_neg]``
(source ids) and ``negative_tiers`` int64 ``[P, n_neg]`` (labels 1..4).
:func:`validate_negatives` checks every entry against the rules below and
returns a :class:`ValidationReport`; it never trusts the miner.

For row ``r`` with pair cluster ``c`` and question ``q``, ``A(c)`` the clusters
adjacent to ``c`` and the *distant* clusters all others except ``c``:

========  =================  ==============================================
label     tier               the id's source cluster must be
========  =================  ==============================================
1         in-cluster         ``c``
2         adjacent           in ``A(c)``
3         high-similarity    not ``c``
4         random             distant; in ``A(c)`` only once the row already
                             holds every non-positive source of the distant
                             clusters (the miner widened its pool)
========  =================  ==============================================

Every row must also hold ids in ``[0, S)``, no positive of ``q`` (a source of
any pair whose question is ``q``) and no id twice.

With ``near_duplicate_threshold`` (and the source embeddings) the validator
also checks that no row holds a source whose cosine to a positive of its
question is above the threshold, and the tier-4 rule above counts only the
distant sources that are neither positives nor such near-duplicates. Cosines
are recomputed here from the embeddings, with a tolerance of
:data:`NEAR_TOLERANCE` for float32 round-off.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._checks import as_numpy, check_embeddings, check_ids, fail, normalized_float32
from .layout import adjacent_clusters, csr_expand

__all__ = [
    "NEAR_TOLERANCE",
    "TIER_NAMES",
    "ValidationError",
    "ValidationReport",
    "validate_negatives",
]

logger = logging.getLogger(__name__)

TIER_NAMES: dict[int, str] = {1: "in-cluster", 2: "adjacent", 3: "high-similarity", 4: "random"}
"""Name of each tier label."""

_TIERS = (1, 2, 3, 4)
_N_EXAMPLES = 5
# Questions with at most this many positives are checked by comparing columns;
# rows of questions with more use a sorted-key lookup.
_FEW_POSITIVES = 32
#: Cosine round-off allowed around ``near_duplicate_threshold``.
NEAR_TOLERANCE = 1e-6
_ROWS = 16384


class ValidationError(ValueError):
    """Mined negatives break at least one rule (see :meth:`ValidationReport.raise_if_failed`)."""


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def _message(name: str, rule: str, got: str, fix: str = "") -> str:
    """The project's one message form, as text rather than an exception."""
    msg = f"`{name}` must {rule}; got {got}."
    if fix:
        msg += f" {fix}"
    return msg


def _shape_str(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_negatives`.

    Attributes
    ----------
    n_pairs : int
        Number of pairs ``P`` (rows expected).
    n_neg : int
        Negatives per row (columns of ``hard_negatives``; 0 if it is not 2-D).
    errors : list of str
        One message per violated rule, with how many entries and rows break it
        and the first few ``(row, column, id)`` examples. Empty when all rules hold.
    tier_counts : dict of int to int
        Number of entries carrying each label 1..4, over all rows.
    requested : dict of int to int or None
        Entries requested per tier (per-row count times ``P``) when
        ``tier_proportions`` was given.
    violations : dict of str to int
        For each violated rule (same order as ``errors``), a short key and the
        number of offending entries (1 for whole-array rules such as dtype).
        Keys: ``shape``, ``dtype``, ``n_neg``, ``id_range``, ``label_value``,
        ``positive``, ``near_duplicate``, ``duplicate``, ``tier1``, ``tier2``,
        ``tier3``, ``tier4_own``, ``tier4_adjacent``.
    """

    n_pairs: int
    n_neg: int
    errors: list[str] = field(default_factory=list)
    tier_counts: dict[int, int] = field(default_factory=lambda: dict.fromkeys(_TIERS, 0))
    requested: dict[int, int] | None = None
    violations: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no rule is violated."""
        return not self.errors

    @property
    def fallback(self) -> dict[int, int] | None:
        """Requested minus delivered entries per tier, or None without a request.

        Positive: the tier got fewer entries than requested (its pool ran
        short and another tier filled in); negative: it received the extra.
        This is information, not an error.
        """
        if self.requested is None:
            return None
        return {t: self.requested[t] - self.tier_counts.get(t, 0) for t in _TIERS}

    def _add(self, kind: str, count: int, message: str) -> None:
        self.violations[kind] = self.violations.get(kind, 0) + int(count)
        self.errors.append(message)

    def raise_if_failed(self) -> None:
        """Raise :class:`ValidationError` listing every error, if there is any.

        Raises
        ------
        ValidationError
            When ``errors`` is not empty.
        """
        if self.errors:
            lines = "\n".join(f"- {e}" for e in self.errors)
            raise ValidationError(
                f"mined negatives break {_plural(len(self.errors), 'rule')} "
                f"({_plural(self.n_pairs, 'pair')} x {self.n_neg} per row):\n{lines}"
            )

    def summary(self) -> str:
        """A readable multi-line table of the tiers, followed by any errors.

        Returns
        -------
        str
            Columns: tier, name, count, requested, fallback, share of all entries.
        """
        status = "OK" if self.ok else f"FAILED ({_plural(len(self.errors), 'error')})"
        lines = [f"negatives: {status}; {_plural(self.n_pairs, 'pair')} x {self.n_neg} per row"]
        total = self.n_pairs * self.n_neg
        fb = self.fallback
        head = (
            f"{'tier':>4}  {'name':<15}  {'count':>10}  {'requested':>10}  "
            f"{'fallback':>9}  {'share':>6}"
        )
        lines.append(head)
        lines.append("-" * len(head))

        def row(tier: str, name: str, count: int, req: int | None, fall: int | None) -> str:
            share = f"{100.0 * count / total:5.1f}%" if total else "     -"
            req_s = "-" if req is None else str(req)
            fall_s = "-" if fall is None else f"{fall:+d}"
            return f"{tier:>4}  {name:<15}  {count:>10}  {req_s:>10}  {fall_s:>9}  {share:>6}"

        for t in _TIERS:
            req = None if self.requested is None else self.requested[t]
            fall = None if fb is None else fb[t]
            lines.append(row(str(t), TIER_NAMES[t], self.tier_counts.get(t, 0), req, fall))
        req_total = None if self.requested is None else sum(self.requested.values())
        fall_total = None if fb is None else sum(fb.values())
        lines.append(row("all", "", sum(self.tier_counts.values()), req_total, fall_total))
        lines.extend(f"error: {e}" for e in self.errors)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (tier keys become strings ``"1"``..``"4"``).

        Returns
        -------
        dict
            Keys ``ok``, ``n_pairs``, ``n_neg``, ``errors``, ``violations``,
            ``tier_counts``, ``requested`` and ``fallback`` (the last two None
            without a request).
        """

        def tiers(d: dict[int, int] | None) -> dict[str, int] | None:
            return None if d is None else {str(int(k)): int(v) for k, v in d.items()}

        return {
            "ok": self.ok,
            "n_pairs": int(self.n_pairs),
            "n_neg": int(self.n_neg),
            "errors": list(self.errors),
            "violations": {k: int(v) for k, v in self.violations.items()},
            "tier_counts": tiers(self.tier_counts),
            "requested": tiers(self.requested),
            "fallback": tiers(self.fallback),
        }


# --------------------------------------------------------------------------- inputs


def _resolve_adjacent(
    centroid_embeddings: Any, adjacent_k: Any, adjacent: Any
) -> tuple[np.ndarray, int, str]:
    """Return the adjacent table int64 [C, k], C and how C was fixed."""
    if adjacent is not None:
        a = as_numpy(adjacent, "adjacent")
        if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
            fail(
                "adjacent",
                "have an integer dtype",
                f"dtype {a.dtype}",
                "Pass the table from negmine.layout.adjacent_clusters.",
                exc=TypeError,
            )
        if a.ndim != 2:
            fail("adjacent", "have shape [C, adjacent_k]", f"shape {_shape_str(a.shape)}")
        a = np.asarray(a, dtype=np.int64)
        n_c = a.shape[0]
        if centroid_embeddings is not None:
            cents = check_embeddings(centroid_embeddings, "centroid_embeddings")
            if cents.shape[0] != n_c:
                fail(
                    "adjacent",
                    f"have one row per centroid (C = len(centroid_embeddings) = {cents.shape[0]})",
                    f"shape {_shape_str(a.shape)}",
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
        return a, n_c, "C = len(adjacent)"
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


def _check_pairs(pair_indices: Any, n_src: int) -> np.ndarray:
    a = as_numpy(pair_indices, "pair_indices")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        fail(
            "pair_indices",
            "have an integer dtype",
            f"dtype {a.dtype}",
            "Convert with .astype(np.int64).",
            exc=TypeError,
        )
    if a.ndim != 2 or a.shape[1] != 2:
        fail(
            "pair_indices",
            "have shape [P, 2] of (question, source)",
            f"shape {_shape_str(a.shape)}",
        )
    a = np.asarray(a, dtype=np.int64)
    check_ids(
        a[:, 1],
        "pair_indices[:, 1]",
        ndim=1,
        upper=n_src,
        upper_what="S = len(source_cluster_ids)",
    )
    return a


def _check_proportions(tier_proportions: Any) -> np.ndarray | None:
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


def _as_int64(a: np.ndarray, name: str, report: ValidationReport) -> np.ndarray | None:
    """Return ``a`` as int64, recording a dtype error; None when values are unusable."""
    if a.dtype == np.int64:
        return a
    fix = "Convert with .astype(np.int64)."
    if a.dtype.kind in "iu":
        report._add("dtype", 1, _message(name, "be int64", f"dtype {a.dtype}", fix))
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        whole = bool(np.isfinite(a).all() and (a == np.round(a)).all())
        if whole:
            report._add(
                "dtype",
                1,
                _message(
                    name, "be int64", f"dtype {a.dtype}", fix + " Values were checked as ints."
                ),
            )
            return a.astype(np.int64)
    report._add(
        "dtype",
        1,
        _message(
            name,
            "be int64",
            f"dtype {a.dtype}",
            "Its values are not all whole numbers and were not checked."
            if a.dtype.kind == "f"
            else "Its values were not checked.",
        ),
    )
    return None


# --------------------------------------------------------------------------- row checks


def _entries_got(
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
    return n, f"{_plural(n, 'entry')} in {_plural(n_rows, 'row')}: {', '.join(parts)}{more}"


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a 1-D int64 array."""
    s = np.sort(x)
    keep = np.ones(s.size, dtype=bool)
    keep[1:] = s[1:] != s[:-1]
    return s[keep]


def _dense_rank(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Rank of each value of ``x`` [n] among its distinct values, and their number."""
    order = np.argsort(x, kind="stable")
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


def _later_duplicates(ids: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """True at every repeat of an in-range id within its row (first occurrence stays False)."""
    n_rows, k = ids.shape
    later = np.zeros(ids.shape, dtype=bool)
    if n_rows == 0 or k < 2:
        return later
    # Out-of-range entries get distinct negative stand-ins so they never match.
    work = np.where(valid, ids, -1 - np.arange(k, dtype=np.int64))
    srt = np.sort(work, axis=1)
    dup_rows = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))
    if dup_rows.size:
        sub = work[dup_rows]
        order = np.argsort(sub, axis=1, kind="stable")
        s = np.take_along_axis(sub, order, axis=1)
        sub_later = np.zeros(sub.shape, dtype=bool)
        np.put_along_axis(sub_later, order[:, 1:], s[:, 1:] == s[:, :-1], axis=1)
        later[dup_rows] = sub_later
    return later


class _NearDuplicates:
    """Cosines of sources to the positives of questions (dense question ranks)."""

    def __init__(
        self, sources: np.ndarray, threshold: float, offsets: np.ndarray, pos_sources: np.ndarray
    ):
        self.sources = sources
        self.threshold = threshold
        self.offsets = offsets
        self.pos_sources = pos_sources

    def _vecs(self, ids: np.ndarray) -> np.ndarray:
        return normalized_float32(np.asarray(self.sources[ids]))

    def row_max(self, ids: np.ndarray, qd: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Largest cosine of ``ids[r, j]`` [R, K] (valid source ids) to a positive of
        row r's question ``qd[r]``, where ``mask``; -inf elsewhere. Each id and
        positive is gathered once per row block."""
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        for r0 in range(0, ids.shape[0], _ROWS):
            r1 = min(r0 + _ROWS, ids.shape[0])
            starts = self.offsets[qd[r0:r1]]
            counts = self.offsets[qd[r0:r1] + 1] - starts
            slots = [
                (rows, self._vecs(self.pos_sources[starts[rows] + j]))
                for j in range(int(counts.max(initial=0)))
                for rows in [np.flatnonzero(counts > j)]
            ]
            for c in range(ids.shape[1]):
                vec = self._vecs(ids[r0:r1, c])
                best = out[r0:r1, c]
                for rows, pvec in slots:
                    cos = np.einsum("ij,ij->i", vec[rows] if rows.size < r1 - r0 else vec, pvec)
                    best[rows] = np.maximum(best[rows], cos)
        out[~mask] = -np.inf
        return out

    def near_counts(
        self, qd: np.ndarray, clusters: np.ndarray, src_cluster: np.ndarray, adj: np.ndarray
    ) -> np.ndarray:
        """Per row: sources of the distant clusters of ``clusters[r]`` whose cosine to
        a positive of question ``qd[r]`` is above ``threshold - NEAR_TOLERANCE``
        (a positive counts too: its cosine to itself is 1). One product of the
        distant sources with the rows' positives per cluster, not per row."""
        out = np.zeros(qd.size, dtype=np.int64)
        cut = self.threshold - NEAR_TOLERANCE
        for c in np.unique(clusters).tolist():
            sel = np.flatnonzero(clusters == c)
            skip = adj[c][adj[c] >= 0]
            far = np.flatnonzero((src_cluster != c) & ~np.isin(src_cluster, skip))
            uq, inv = np.unique(qd[sel], return_inverse=True)
            owner, at = csr_expand(self.offsets, uq)
            pvec = self._vecs(self.pos_sources[at])
            first = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
            per_q = np.zeros(uq.size, dtype=np.int64)
            for s0 in range(0, far.size, _ROWS):
                sims = self._vecs(far[s0 : s0 + _ROWS]) @ pvec.T
                hit = np.logical_or.reduceat(sims > cut, first, axis=1)
                per_q[owner[first]] += hit.sum(axis=0)
            out[sel] = per_q[inv]
        return out


def _adjacent_mask(adj: np.ndarray, owner_cluster: np.ndarray, cl: np.ndarray) -> np.ndarray:
    """True where ``cl`` [R, K] is adjacent to ``owner_cluster`` [R]."""
    hit = np.zeros(cl.shape, dtype=bool)
    for j in range(adj.shape[1]):
        col = adj[owner_cluster, j]
        hit |= cl == col.reshape(col.shape + (1,) * (cl.ndim - 1))
    return hit


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
        (question, source) of each positive pair. Sources in ``[0, S)``.
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
    non-positive source of the row's distant clusters.
    """
    hn = as_numpy(hard_negatives, "hard_negatives")
    tiers = as_numpy(negative_tiers, "negative_tiers")
    adj, n_clusters, c_from = _resolve_adjacent(centroid_embeddings, adjacent_k, adjacent)
    src_cluster = check_ids(
        source_cluster_ids, "source_cluster_ids", ndim=1, upper=n_clusters, upper_what=c_from
    )
    n_src = int(src_cluster.size)
    pairs = _check_pairs(pair_indices, n_src)
    n_pairs = int(pairs.shape[0])
    pair_cluster = check_ids(
        pair_cluster_ids, "pair_cluster_ids", ndim=1, upper=n_clusters, upper_what=c_from
    )
    if pair_cluster.size != n_pairs:
        fail(
            "pair_cluster_ids",
            f"have one entry per pair (P = len(pair_indices) = {n_pairs})",
            f"length {pair_cluster.size}",
        )
    per_row = _check_proportions(tier_proportions)
    near_src = None
    if near_duplicate_threshold is not None:
        t = near_duplicate_threshold
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)):
            fail("near_duplicate_threshold", "be a number in [-1, 1] or None", repr(t),
                 exc=TypeError)  # fmt: skip
        if not -1 <= t <= 1:
            fail("near_duplicate_threshold", "be in [-1, 1]", t)
        if source_embeddings is None:
            fail("source_embeddings", "be given with `near_duplicate_threshold`", "None")
        near_src = check_embeddings(source_embeddings, "source_embeddings")
        if near_src.shape[0] != n_src:
            fail("source_embeddings", f"have one row per source (S = {n_src})",
                 f"{near_src.shape[0]} rows")  # fmt: skip

    n_neg = hn.shape[1] if hn.ndim == 2 else (tiers.shape[1] if tiers.ndim == 2 else 0)
    report = ValidationReport(n_pairs=n_pairs, n_neg=int(n_neg))
    if per_row is not None:
        report.requested = {t: int(per_row[t - 1]) * n_pairs for t in _TIERS}

    # Whole-array rules.
    shape_ok = True
    if hn.ndim != 2 or hn.shape[0] != n_pairs:
        shape_ok = False
        report._add(
            "shape",
            1,
            _message(
                "hard_negatives",
                f"have shape [P, n_neg] with P = len(pair_indices) = {n_pairs}",
                f"shape {_shape_str(hn.shape)}",
            ),
        )
    if tiers.shape != hn.shape:
        shape_ok = False
        report._add(
            "shape",
            1,
            _message(
                "negative_tiers",
                f"have the shape of `hard_negatives` {_shape_str(hn.shape)}",
                f"shape {_shape_str(tiers.shape)}",
            ),
        )
    ids = _as_int64(hn, "hard_negatives", report)
    labels = _as_int64(tiers, "negative_tiers", report)

    label_ok = None
    if labels is not None:
        label_ok = (labels >= 1) & (labels <= 4)
        counts = np.bincount(np.where(label_ok, labels, 0).reshape(-1), minlength=5)
        report.tier_counts = {t: int(counts[t]) for t in _TIERS}

    if not shape_ok:
        logger.debug("shape mismatch; entry checks skipped")
        if raise_on_error:
            report.raise_if_failed()
        return report

    if per_row is not None and int(per_row.sum()) != report.n_neg:
        report._add(
            "n_neg",
            1,
            _message(
                "hard_negatives",
                f"have sum(tier_proportions) = {int(per_row.sum())} columns",
                f"{report.n_neg} columns",
                "Pass the tier_proportions the miner was run with.",
            ),
        )

    valid = None
    if ids is not None:
        valid = (ids >= 0) & (ids < n_src)
        if not valid.all():
            n, got = _entries_got(~valid, ids)
            report._add(
                "id_range",
                n,
                _message(
                    "hard_negatives",
                    f"hold source ids in [0, {n_src}) where S = len(source_cluster_ids)",
                    got,
                ),
            )
    if labels is not None and label_ok is not None and not label_ok.all():
        n, got = _entries_got(~label_ok, labels, what="label")
        report._add(
            "label_value",
            n,
            _message("negative_tiers", "hold tier labels in {1, 2, 3, 4}", got),
        )

    if ids is not None and valid is not None:
        near = None if near_src is None else (near_src, float(near_duplicate_threshold))
        _check_entries(
            report, ids, valid, labels, label_ok, pairs, pair_cluster, src_cluster, adj, near
        )

    if raise_on_error:
        report.raise_if_failed()
    return report


def _check_entries(
    report: ValidationReport,
    ids: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray | None,
    label_ok: np.ndarray | None,
    pairs: np.ndarray,
    pair_cluster: np.ndarray,
    src_cluster: np.ndarray,
    adj: np.ndarray,
    near_args: tuple[np.ndarray, float] | None = None,
) -> None:
    """The per-entry rules: positives, near-duplicates, duplicates and the tier of each id."""
    n_src = int(src_cluster.size)
    n_clusters = int(adj.shape[0])
    safe = np.where(valid, ids, 0)

    # Positives of each question as a CSR over dense question ranks.
    qd, n_questions = _dense_rank(pairs[:, 0])
    pos_key = _sorted_unique(qd * n_src + pairs[:, 1])
    n_src_div = max(n_src, 1)
    pos_q = pos_key // n_src_div
    pos_sources = pos_key - pos_q * n_src_div
    pos_offsets = np.zeros(n_questions + 1, dtype=np.int64)
    np.cumsum(np.bincount(pos_q, minlength=n_questions), out=pos_offsets[1:])

    is_pos = _positive_mask(safe, valid, qd, pos_offsets, pos_sources, pos_key, n_src)
    if is_pos.any():
        n, got = _entries_got(is_pos, ids, lambda r, j: f"question {int(pairs[r, 0])}")
        report._add(
            "positive",
            n,
            _message(
                "hard_negatives",
                "not hold a positive of the row's question "
                "(a source of any pair with that question)",
                got,
                "Exclude every positive of the question when mining.",
            ),
        )

    near = None
    if near_args is not None:
        near = _NearDuplicates(near_args[0], near_args[1], pos_offsets, pos_sources)
        best = near.row_max(safe, qd, valid & ~is_pos)
        is_near = best > near.threshold + NEAR_TOLERANCE
        if is_near.any():
            n, got = _entries_got(is_near, ids, lambda r, j: f"cosine {float(best[r, j]):.6f}")
            report._add(
                "near_duplicate",
                n,
                _message(
                    "hard_negatives",
                    "not hold a near-duplicate of a positive of the row's question (cosine "
                    f"above near_duplicate_threshold = {near.threshold})",
                    got,
                ),
            )

    later = _later_duplicates(ids, valid)
    if later.any():

        def first_col(r: int, j: int) -> str:
            return f"also at column {int(np.flatnonzero(ids[r] == ids[r, j])[0])}"

        n, got = _entries_got(later, ids, first_col)
        report._add(
            "duplicate",
            n,
            _message("hard_negatives", "not hold the same id twice in a row", got),
        )

    if labels is None or label_ok is None:
        return

    cl = src_cluster[safe]
    own = cl == pair_cluster[:, None]
    in_adj = _adjacent_mask(adj, pair_cluster, cl)
    check = valid & label_ok

    def where(r: int, j: int) -> str:
        return f"cluster {int(cl[r, j])}, pair cluster {int(pair_cluster[r])}"

    def where_adj(r: int, j: int) -> str:
        a = adj[pair_cluster[r]]
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
            n, got = _entries_got(bad, ids, detail)
            report._add(
                kind,
                n,
                _message(
                    "hard_negatives",
                    f"hold tier-{tier} ({TIER_NAMES[tier]}) ids {rule}",
                    got,
                ),
            )

    widened = check & (labels == 4) & in_adj
    if not widened.any():
        return
    rows = np.flatnonzero(widened.any(axis=1))
    c_rows = pair_cluster[rows]

    # Non-positive sources of the distant clusters, per suspect row.
    sizes = np.bincount(src_cluster, minlength=n_clusters).astype(np.int64)
    adj_valid = adj >= 0
    # Set semantics: a cluster listed twice in a row counts once.
    adj_sorted = np.sort(np.where(adj_valid, adj, -1), axis=1)
    first = adj_sorted >= 0
    first[:, 1:] &= adj_sorted[:, 1:] != adj_sorted[:, :-1]
    adj_size = np.where(first, sizes[np.maximum(adj_sorted, 0)], 0).sum(axis=1)
    distant_total = n_src - sizes - adj_size

    owner, at = csr_expand(pos_offsets, qd[rows])
    p_cl = src_cluster[pos_sources[at]]
    p_owner_cl = c_rows[owner]
    p_distant = (p_cl != p_owner_cl) & ~_adjacent_mask(adj, p_owner_cl, p_cl)
    n_pos_distant = np.bincount(owner[p_distant], minlength=rows.size)
    need = distant_total[c_rows] - n_pos_distant

    if near is not None:
        # Near-duplicates (positives among them) are not expected in the row.
        need = distant_total[c_rows] - near.near_counts(qd[rows], c_rows, src_cluster, adj)
    in_row = valid[rows] & ~own[rows] & ~in_adj[rows] & ~is_pos[rows] & ~later[rows]
    have = in_row.sum(axis=1)
    short = np.zeros(ids.shape[0], dtype=bool)
    short[rows] = have < need
    bad = widened & short[:, None]
    if bad.any():
        have_full = np.zeros(ids.shape[0], dtype=np.int64)
        need_full = np.zeros(ids.shape[0], dtype=np.int64)
        have_full[rows] = have
        need_full[rows] = need

        def detail(r: int, j: int) -> str:
            return (
                f"{where(r, j)}; the row holds {int(have_full[r])} of "
                f"{int(need_full[r])} non-positive distant sources"
            )

        n, got = _entries_got(bad, ids, detail)
        report._add(
            "tier4_adjacent",
            n,
            _message(
                "hard_negatives",
                "hold tier-4 (random) ids only from distant clusters (neither the pair's "
                "cluster nor adjacent to it), or from adjacent ones once the row holds every "
                "non-positive source of the distant clusters",
                got,
            ),
        )
