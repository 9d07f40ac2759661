"""Mining settings, validated once on construction."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._checks import fail

__all__ = ["TIER_NAMES", "MiningConfig", "resolve_tier_counts"]

#: Tier label -> name.
TIER_NAMES = {1: "in-cluster", 2: "adjacent", 3: "high-similarity", 4: "random"}


def resolve_tier_counts(n_neg: int, tier_proportions: Sequence[float] | None) -> tuple[int, ...]:
    """Turn ``tier_proportions`` into four per-row counts summing to ``n_neg``.

    Parameters
    ----------
    n_neg : int
        Negatives per pair, >= 1.
    tier_proportions : sequence of 4 non-negative numbers, or None
        Four integers that sum to ``n_neg`` are taken as counts. Any other
        non-negative numbers are weights, allocated by largest remainder (ties
        to the lower tier). ``None`` gives ``n_neg // 4`` each with the
        remainder going to tiers 1, 2, 3 in turn.

    Returns
    -------
    tuple of 4 int
        Counts for tiers 1 (in-cluster), 2 (adjacent), 3 (high-similarity),
        4 (random).
    """
    if tier_proportions is None:
        base = [n_neg // 4] * 4
        for i in range(n_neg % 4):
            base[i] += 1
        return tuple(base)
    props = list(tier_proportions)
    if len(props) != 4:
        fail(
            "tier_proportions",
            "hold four numbers (tiers 1-4: in-cluster, adjacent, high-similarity, random)",
            f"{len(props)} values {props!r}",
        )
    for p in props:
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            fail("tier_proportions", "hold real numbers", repr(props), exc=TypeError)
        if not p >= 0 or p == float("inf"):
            fail("tier_proportions", "hold finite non-negative numbers", repr(props))
    if all(isinstance(p, numbers.Integral) for p in props) and sum(props) == n_neg:
        return tuple(int(p) for p in props)
    try:
        weights = [float(p) for p in props]
    except OverflowError:
        fail("tier_proportions", "hold numbers within the float range", repr(props))
    top = max(weights)
    if not top > 0:
        fail("tier_proportions", "have a positive sum", repr(props))
    # Scale by the largest weight first, so huge weights cannot overflow.
    weights = [w / top for w in weights]
    total = sum(weights)
    quotas = [n_neg * w / total for w in weights]
    counts = [int(q) for q in quotas]
    left = n_neg - sum(counts)
    by_rem = sorted(range(4), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_rem[:left]:
        counts[i] += 1
    return tuple(counts)


@dataclass(frozen=True)
class MiningConfig:
    """What to mine. Frozen and validated on construction.

    Parameters
    ----------
    n_neg : int
        Negatives per pair, >= 1.
    tier_proportions : sequence of 4 numbers or None
        See :func:`resolve_tier_counts`.
    adjacent_k : int
        Adjacent clusters per cluster (tier 2), >= 0.
    random_seed : int
        Seed of every random tier; output is a pure function of the inputs and it.
    """

    n_neg: int = 12
    tier_proportions: tuple[float, ...] | None = None
    adjacent_k: int = 3
    random_seed: int = 42
    tier_counts: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        for name in ("n_neg", "adjacent_k", "random_seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                fail(name, "be an integer", repr(v), exc=TypeError)
            object.__setattr__(self, name, int(v))
        if self.n_neg < 1:
            fail("n_neg", "be at least 1", self.n_neg)
        if self.adjacent_k < 0:
            fail("adjacent_k", "be >= 0 (0 disables the adjacent tier)", self.adjacent_k)
        if self.random_seed < 0:
            fail("random_seed", "be a non-negative integer", self.random_seed)
        props = self.tier_proportions
        if props is not None:
            if hasattr(props, "numpy") or isinstance(props, np.ndarray):
                arr = np.asarray(props.numpy() if hasattr(props, "numpy") else props)
                if arr.ndim != 1:
                    fail("tier_proportions", "be a 1-D sequence of four numbers",
                         f"an array of shape {list(arr.shape)}", exc=TypeError)  # fmt: skip
                props = arr.tolist()
            if isinstance(props, (str, bytes, Mapping)) or not hasattr(props, "__len__"):
                fail(
                    "tier_proportions", "be a sequence of four numbers", repr(props), exc=TypeError
                )
            props = tuple(p.item() if isinstance(p, np.generic) else p for p in props)
            object.__setattr__(self, "tier_proportions", props)
        object.__setattr__(self, "tier_counts", resolve_tier_counts(self.n_neg, props))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        d = asdict(self)
        d["tier_proportions"] = (
            None if self.tier_proportions is None else list(self.tier_proportions)
        )
        d["tier_counts"] = list(self.tier_counts)
        return d
