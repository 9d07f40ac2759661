"""Mining settings, validated once on construction."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._checks import fail

__all__ = [
    "EXECUTORS",
    "FILTER_NAMES",
    "PRODUCTS",
    "RUNTIME_SETTINGS",
    "SEARCH_SETTINGS",
    "TIER3_SAMPLING",
    "TIER_NAMES",
    "MiningConfig",
    "resolve_tier_counts",
]

#: Tier label -> name.
TIER_NAMES = {1: "in-cluster", 2: "adjacent", 3: "high-similarity", 4: "random"}

#: The candidate filters, in the order a rejected candidate is attributed to them
#: (a candidate several filters reject counts for the first one only).
FILTER_NAMES = (
    "max_score",
    "relative_margin",
    "absolute_margin",
    "near_duplicate_threshold",
    "tier3_rank_window",
)

#: How tier 3 picks its negatives from the rank window.
TIER3_SAMPLING = ("top", "random")

#: Where mining blocks run.
EXECUTORS = ("local", "ray")

#: Libraries of tier 3's float32 products: numpy's BLAS, torch's, or the faster
#: one of the machine (see :mod:`negmine.search.products`).
PRODUCTS = ("numpy", "torch", "auto")

#: Settings that decide where and in what steps the work runs, never its result.
RUNTIME_SETTINGS = ("executor", "ray_address", "batch_size")

#: Settings that decide the tier-3 search itself, and so what a pool holds.
SEARCH_SETTINGS = ("nprobe", "ef_search", "rerank", "pool_depth")


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
    seed : int
        Seed of every random tier; output is a pure function of the inputs and it.
    max_score : float or None
        Tier 3 skips sources whose cosine to the question is above this value,
        in [-1, 1]. ``None``: off.
    relative_margin : float or None
        Tier 3 skips sources whose cosine to the question is above
        ``(1 - relative_margin) * p``, where ``p`` is the question's *lowest*
        cosine to any of its positive sources; in [0, 1] (0.05 keeps what
        scores at most 95 % of the positive). ``None``: off.
    absolute_margin : float or None
        Tier 3 skips sources whose cosine to the question is above
        ``p - absolute_margin`` (``p`` as above); in [0, 2]. ``None``: off.
    near_duplicate_threshold : float or None
        Every tier skips sources whose cosine to one of the question's
        positive sources is above this value, in [-1, 1]. ``None``: off.
    tier3_rank_window : (int, int) or None
        ``(lo, hi)``: tier 3 draws from ranks ``lo <= rank < hi`` of the
        eligible sources (0 = most similar), ``hi - lo >= n3`` (the tier-3
        count). ``None``: ``(0, n3)``.
    tier3_sampling : {"top", "random"}
        ``"top"`` takes ranks ``lo .. lo + n3 - 1``; ``"random"`` draws ``n3``
        of the window's ranks uniformly without replacement (needs
        ``tier3_rank_window``).
    nprobe : int or None
        Without an index: approximate tier 3 over the user's clusters, probing
        the ``nprobe`` clusters nearest the question other than its own
        (``None``: exact). With a ``"clusters"`` index: the same over its lists
        (default 32). With a FAISS IVF index: its ``nprobe``.
    ef_search : int or None
        ``efSearch`` of an HNSW index (or of an IVF index's HNSW quantizer).
    rerank : int or None
        With an approximate index: fetch ``rerank`` times as many tier-3
        candidates and keep the best by exact cosine (default 1, or 4 for
        compressed ``"clusters"`` lists).
    pool_depth : int or None
        Keep, for every tier-3 query, its ``pool_depth`` best candidates
        (the unfiltered search, cluster skipped, positives excluded) and take
        the filtered tier 3 from them; a row whose filters or window reach
        past the pool is searched again. The pool is written with the outputs
        so :func:`negmine.remine` can re-mine without searching. ``None``:
        no pool.
    recall_sample : int
        With an approximate tier 3, measure its recall against exact search on
        this many tier-3 queries (0: do not measure).
    target_recall : float or None
        In (0, 1]: choose the cheapest search settings whose tier-3 recall@k,
        measured on a sample against exact search, reaches this value, and
        mine with them (see :mod:`negmine.tuning`); instead of ``nprobe``,
        ``ef_search`` and ``rerank``. ``None``: explicit settings are used as
        given, and an approximate index given none is tuned to
        :data:`negmine.tuning.DEFAULT_TARGET_RECALL`.
    products : {"numpy", "torch", "auto"}
        The library of tier 3's matrix products: numpy's BLAS (OpenBLAS in
        numpy's wheel), torch's (MKL in its CPU wheel), or ``"auto"``, the
        faster of the two on this machine, measured once and cached (see
        :func:`negmine.search.products.calibrate`). The libraries round
        differently, so a near-tie may order differently between them; the
        output is keyed and recorded with the library used.
    executor : {"local", "ray"}
        Where the blocks run: this process, or tasks on a Ray cluster. The
        output is the same bytes either way.
    ray_address : str or None
        The Ray cluster to join (``"auto"``, ``"ray://host:10001"``, ...);
        ``None``: ``RAY_ADDRESS`` when set, else a local instance sized to the
        machine, shut down at the end.
    batch_size : int
        Pairs sampled per step (rounded up to a multiple of 1024). Memory only:
        the output is the same for every value.
    """

    n_neg: int = 12
    tier_proportions: tuple[float, ...] | None = None
    adjacent_k: int = 3
    seed: int = 42
    max_score: float | None = None
    relative_margin: float | None = None
    absolute_margin: float | None = None
    near_duplicate_threshold: float | None = None
    tier3_rank_window: tuple[int, int] | None = None
    tier3_sampling: str = "top"
    nprobe: int | None = None
    ef_search: int | None = None
    rerank: int | None = None
    pool_depth: int | None = None
    recall_sample: int = 0
    target_recall: float | None = None
    products: str = "numpy"
    executor: str = "local"
    ray_address: str | None = None
    batch_size: int = 16384
    tier_counts: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        for name in ("n_neg", "adjacent_k", "seed", "recall_sample", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                fail(name, "be an integer", repr(v), exc=TypeError)
            object.__setattr__(self, name, int(v))
        if self.n_neg < 1:
            fail("n_neg", "be at least 1", self.n_neg)
        if self.adjacent_k < 0:
            fail("adjacent_k", "be >= 0 (0 disables the adjacent tier)", self.adjacent_k)
        if self.seed < 0:
            fail("seed", "be a non-negative integer", self.seed)
        if self.recall_sample < 0:
            fail("recall_sample", "be an integer >= 0", self.recall_sample)
        if self.batch_size < 1:
            fail("batch_size", "be a positive integer", self.batch_size)
        self._check_search()
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
        self._check_filters()

    def _check_search(self) -> None:
        for name in ("nprobe", "ef_search", "rerank", "pool_depth"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                fail(name, "be an integer >= 1 or None", repr(v))
            object.__setattr__(self, name, int(v))
        self._check_target()
        self._check_products()
        if self.executor not in EXECUTORS:
            fail("executor", f"be one of {', '.join(map(repr, EXECUTORS))}", repr(self.executor))
        if self.ray_address is not None and not isinstance(self.ray_address, str):
            fail("ray_address", "be a string or None", repr(self.ray_address), exc=TypeError)
        if self.ray_address is not None and self.executor != "ray":
            fail("ray_address", "come with executor='ray'", repr(self.ray_address),
                 "Pass executor='ray' as well, or drop it.")  # fmt: skip

    def _check_target(self) -> None:
        v = self.target_recall
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            fail("target_recall", "be a number in (0, 1] or None", repr(v), exc=TypeError)
        if not 0 < float(v) <= 1:  # NaN fails too
            fail("target_recall", "be in (0, 1] (a recall@k, e.g. 0.95)", repr(v))
        given = {n: getattr(self, n) for n in ("nprobe", "ef_search", "rerank")}
        given = {n: x for n, x in given.items() if x is not None}
        if given:
            fail("target_recall", "come without explicit search settings (it chooses them)",
                 f"{v!r} with {', '.join(f'{n}={x}' for n, x in given.items())}",
                 "Drop the explicit settings to tune them, or drop target_recall.")  # fmt: skip
        object.__setattr__(self, "target_recall", float(v))

    def _check_products(self) -> None:
        v = self.products
        if not isinstance(v, str) or v not in PRODUCTS:
            fail("products", f"be one of {', '.join(map(repr, PRODUCTS))}", repr(v))
        if v == "torch":
            import importlib.util

            if importlib.util.find_spec("torch") is None:
                fail("products", "name an importable library", "'torch' (torch is not installed)",
                     "Install torch, or use 'numpy' ('auto' falls back to numpy).")  # fmt: skip

    def _check_filters(self) -> None:
        ranges = {
            "max_score": (-1.0, 1.0, "a cosine"),
            "relative_margin": (0.0, 1.0, "a fraction of the positive's score, e.g. 0.05"),
            "absolute_margin": (0.0, 2.0, "a cosine difference, e.g. 0.05"),
            "near_duplicate_threshold": (-1.0, 1.0, "a cosine, e.g. 0.95"),
        }
        for name, (lo, hi, what) in ranges.items():
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                fail(name, f"be a number in [{lo:g}, {hi:g}] or None", repr(v), exc=TypeError)
            v = float(v)
            if not lo <= v <= hi:  # NaN fails too
                fail(
                    name,
                    f"be in [{lo:g}, {hi:g}] ({what})",
                    v,
                    "Leave it unset (None) to turn the filter off.",
                )
            object.__setattr__(self, name, v)
        n3 = self.tier_counts[2]
        win = self.tier3_rank_window
        if win is not None:
            if hasattr(win, "tolist"):
                win = win.tolist()
            if isinstance(win, (str, bytes, Mapping)) or not hasattr(win, "__len__"):
                fail("tier3_rank_window", "be a pair (lo, hi) of integers", repr(win),
                     exc=TypeError)  # fmt: skip
            win = tuple(win)
            if len(win) != 2 or any(
                isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in win
            ):
                fail("tier3_rank_window", "be a pair (lo, hi) of integers", repr(win),
                     exc=TypeError)  # fmt: skip
            lo, hi = int(win[0]), int(win[1])
            if lo < 0 or hi <= lo or hi - lo < n3:
                fail(
                    "tier3_rank_window",
                    f"be (lo, hi) with 0 <= lo < hi and hi - lo >= n3 = {n3} (the tier-3 "
                    "negatives per pair, which the window must hold)",
                    f"({lo}, {hi})",
                    f"For example ({lo}, {lo + max(n3, 1)}).",
                )
            object.__setattr__(self, "tier3_rank_window", (lo, hi))
        if self.tier3_sampling not in TIER3_SAMPLING:
            fail("tier3_sampling", "be 'top' or 'random'", repr(self.tier3_sampling))
        if self.tier3_sampling == "random" and win is None:
            fail(
                "tier3_sampling",
                "be 'top' unless `tier3_rank_window` is set (random draws from the window)",
                "'random'",
                "Pass tier3_rank_window=(lo, hi) as well.",
            )

    @property
    def filters(self) -> dict[str, Any]:
        """The active filters (see :data:`FILTER_NAMES`) and their settings."""
        out = {}
        for name in FILTER_NAMES:
            v = getattr(self, name)
            if v is not None:
                out[name] = list(v) if name == "tier3_rank_window" else v
        return out

    @property
    def window(self) -> tuple[int, int]:
        """The tier-3 rank window ``(lo, hi)``, ``(0, n3)`` when not set."""
        return self.tier3_rank_window or (0, self.tier_counts[2])

    @property
    def tier3_filtered(self) -> bool:
        """Whether tier 3 needs the filtered search (any filter or a window)."""
        return bool(self.filters)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view."""
        d = asdict(self)
        d["tier_proportions"] = (
            None if self.tier_proportions is None else list(self.tier_proportions)
        )
        d["tier_counts"] = list(self.tier_counts)
        d["tier3_rank_window"] = (
            None if self.tier3_rank_window is None else list(self.tier3_rank_window)
        )
        return d

    def result_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the settings that cannot change the output."""
        d = self.to_dict()
        for name in RUNTIME_SETTINGS:
            d.pop(name)
        d.pop("target_recall")  # the settings it chooses are keyed instead
        if d["pool_depth"] is None:  # the keys of runs without a pool stay as they were
            d.pop("pool_depth")
        if d["products"] == "numpy":  # keyed only where it can change the bytes
            d.pop("products")
        return d

    def replace(self, **changes: Any) -> MiningConfig:
        """A copy with ``changes`` applied (validated again)."""
        import dataclasses

        return dataclasses.replace(self, **changes)
