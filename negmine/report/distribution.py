"""One similarity distribution: exact values, or a manifest's summary and histogram."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..stats import SUMMARY_KEYS, summarize

__all__ = ["Distribution"]


@dataclass
class Distribution:
    """One similarity distribution and where it came from.

    Attributes
    ----------
    origin : str
        ``"data"``, ``"files"``, ``"manifest"`` or ``"none"``.
    summary : dict
        :data:`SUMMARY_KEYS` to float or ``None`` (unknown).
    values : numpy.ndarray, optional
        Every value, float32 1-D, when known exactly.
    hist : tuple of (edges, counts), optional
        A recorded histogram, when the values are not known.
    """

    origin: str = "none"
    summary: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(SUMMARY_KEYS))
    values: np.ndarray | None = None
    hist: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def exact(cls, values: np.ndarray, origin: str) -> Distribution:
        """A distribution known value by value."""
        v = np.asarray(values, dtype=np.float32).reshape(-1)
        return cls(origin=origin, summary=summarize(v), values=v)

    @classmethod
    def recorded(cls, summary: Any, hist: Any, mean: float | None = None) -> Distribution:
        """A distribution from a manifest's summary and histogram (either may be absent)."""
        s: dict[str, float | None] = dict.fromkeys(SUMMARY_KEYS)
        if isinstance(summary, Mapping):
            for k in SUMMARY_KEYS:
                v = summary.get(k)
                s[k] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        if s["mean"] is None and isinstance(mean, (int, float)):
            s["mean"] = float(mean)
        h = _parse_hist(hist)
        if h is None and all(v is None for v in s.values()):
            return cls()
        return cls(origin="manifest", summary=s, hist=h)

    @property
    def known(self) -> bool:
        """Whether anything at all is known about the distribution."""
        return self.origin != "none"

    def histogram(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(edges, density) over ``edges`` for exact values, else the recorded histogram."""
        if self.values is not None and self.values.size:
            counts, e = np.histogram(self.values, bins=edges)
            return e, _density(counts, e)
        if self.hist is not None and self.hist[1].sum() > 0:
            return self.hist[0], _density(self.hist[1], self.hist[0])
        return None


def _density(counts: np.ndarray, edges: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / (total * np.diff(edges)) if total else counts.astype(np.float64)


def _parse_hist(h: Any) -> tuple[np.ndarray, np.ndarray] | None:
    if not isinstance(h, Mapping):
        return None
    try:
        edges = np.asarray(h.get("edges"), dtype=np.float64)
        counts = np.asarray(h.get("counts"), dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if (
        edges.ndim != 1
        or counts.ndim != 1
        or edges.size != counts.size + 1
        or counts.size == 0
        or not np.isfinite(edges).all()
        or not (np.diff(edges) > 0).all()
        or not np.isfinite(counts).all()
    ):
        return None
    return edges, counts
