"""The outcome of a validation: counts per tier and one message per violated rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import TIER_NAMES

__all__ = ["TIERS", "ValidationError", "ValidationReport", "message", "plural", "shape_str"]

#: The tier labels.
TIERS = (1, 2, 3, 4)


class ValidationError(ValueError):
    """Mined negatives break at least one rule (see :meth:`ValidationReport.raise_if_failed`)."""


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word[:-1]}ies" if word.endswith("y") else f"{n} {word}s"


def message(name: str, rule: str, got: str, fix: str = "") -> str:
    """The project's one message form, as text rather than an exception."""
    msg = f"`{name}` must {rule}; got {got}."
    if fix:
        msg += f" {fix}"
    return msg


def shape_str(shape: tuple[int, ...]) -> str:
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
    tier_counts: dict[int, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
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
        return {t: self.requested[t] - self.tier_counts.get(t, 0) for t in TIERS}

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
                f"mined negatives break {plural(len(self.errors), 'rule')} "
                f"({plural(self.n_pairs, 'pair')} x {self.n_neg} per row):\n{lines}"
            )

    def summary(self) -> str:
        """A readable multi-line table of the tiers, followed by any errors.

        Returns
        -------
        str
            Columns: tier, name, count, requested, fallback, share of all entries.
        """
        status = "OK" if self.ok else f"FAILED ({plural(len(self.errors), 'error')})"
        lines = [f"negatives: {status}; {plural(self.n_pairs, 'pair')} x {self.n_neg} per row"]
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

        for t in TIERS:
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
