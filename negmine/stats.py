"""Summaries of cosine distributions for the run statistics.

Every distribution is summarised the same way: :func:`summarize` gives the mean,
min, max and the 5/25/50/75/95 % quantiles (numpy's linear interpolation, in
float64), :func:`histogram` the counts in 40 equal bins over [-1, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["HIST_EDGES", "SUMMARY_KEYS", "histogram", "summarize"]

#: Keys of a summary.
SUMMARY_KEYS = ("mean", "min", "q05", "q25", "q50", "q75", "q95", "max")
_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Bin edges of every histogram: 41 values from -1 to 1.
HIST_EDGES = np.round(np.linspace(-1.0, 1.0, 41), 6)


def summarize(values: np.ndarray) -> dict[str, float | None]:
    """Mean, min, quantiles and max of ``values`` (any shape), as floats.

    Returns
    -------
    dict
        :data:`SUMMARY_KEYS` -> float, or None for every key when ``values`` is empty.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return dict.fromkeys(SUMMARY_KEYS)
    q = np.quantile(x, _QUANTILES)
    return {
        "mean": float(x.mean()),
        "min": float(x.min()),
        "q05": float(q[0]),
        "q25": float(q[1]),
        "q50": float(q[2]),
        "q75": float(q[3]),
        "q95": float(q[4]),
        "max": float(x.max()),
    }


def histogram(values: np.ndarray) -> dict[str, Any]:
    """Counts of ``values`` in the 40 bins of :data:`HIST_EDGES`.

    Values are clipped to [-1, 1] first (float rounding can put a cosine a hair
    outside); the last bin includes 1.

    Returns
    -------
    dict
        ``{"edges": [41 floats], "counts": [40 ints]}``.
    """
    x = np.clip(np.asarray(values, dtype=np.float64).reshape(-1), -1.0, 1.0)
    counts, _ = np.histogram(x, bins=HIST_EDGES)
    return {"edges": HIST_EDGES.tolist(), "counts": [int(c) for c in counts]}
