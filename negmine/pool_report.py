"""What a filter threshold would cost, read from a run's pool without mining.

:func:`sweep_filter` applies each candidate value of one filter (the run's
other filters and window kept) to the pooled candidates of every tier-3
query, and counts, weighted by each query's pairs as a run's statistics are,
the tier-3 candidates the filter removes and the tier-3 slots left to the
fallback tier. :func:`format_sweep` prints it as a table and
:func:`plot_sweep` draws it (needs matplotlib).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np

from ._checks import fail
from .filters import COLUMN

__all__ = ["SWEEP_FILTERS", "format_sweep", "plot_sweep", "sweep_filter"]

#: Filters a sweep can vary.
SWEEP_FILTERS = ("max_score", "relative_margin", "absolute_margin", "near_duplicate_threshold")


def sweep_filter(
    run_dir: str | os.PathLike, data: Any, name: str, values: list[float], *, index: Any = None
) -> list[dict[str, Any]]:
    """Per value of filter ``name``: what it removes from tier 3 and the shortfall.

    Parameters
    ----------
    run_dir : path
        A run mined with ``pool_depth``.
    data : path, Dataset or dict
        Its inputs (see :func:`negmine.remine.remine`).
    name : str
        One of :data:`SWEEP_FILTERS`.
    values : list of float
        Thresholds to try (``None`` turns the filter off).
    index : optional
        The run's index, when it had one.

    Returns
    -------
    list of dict
        One per value: ``value``; ``removed``, tier-3 candidates the filter
        removes among each query's unfiltered top ``hi`` (``hi`` the window's
        end); ``shortfall``, tier-3 slots it leaves to the fallback tier;
        ``tier3_short``, tier-3 slots left short by every filter together;
        ``pairs_past_pool``, pairs whose query needs candidates past the pool
        (their counts are what the pool shows, a lower bound).
    """
    from .blocks import pooled_tier3_ids
    from .miner import NegativeMiner
    from .pool import read_pool
    from .remine import _arrays, _check_run_matches, config_of_run
    from .vectors import question_vectors

    if name not in SWEEP_FILTERS:
        fail("name", f"be one of {', '.join(SWEEP_FILTERS)}", repr(name))
    manifest, pool = read_pool(run_dir)
    base = config_of_run(manifest)
    configs = [base.replace(**{name: v}) for v in values]  # validates every value
    miner = NegativeMiner(**_arrays(data), config=base, index=index, validate=False)
    _check_run_matches(miner, manifest["pool"], pool)
    base_plan = miner.plan
    weight = np.bincount(base_plan.pair_query, minlength=base_plan.n_tier3)
    col = COLUMN[name]
    rows = []
    for value, cfg in zip(values, configs, strict=True):
        plan = copy.copy(base_plan)
        plan.config, plan.pool = cfg, pool
        total = np.zeros(4, dtype=np.int64)
        for g in range(plan.n_tier3_blocks):
            c0, c1 = plan.tier3_range(g)
            qq, cl = plan.t3_question[c0:c1], plan.t3_cluster[c0:c1]
            qvec, at = question_vectors(plan.inputs.questions, qq)
            scores, ids = pool.block(c0, c1)
            _, removed, short, again = pooled_tier3_ids(
                plan, qvec, at, cl, qq, c0, scores, ids, recompute=False
            )  # fmt: skip
            w = weight[c0:c1]
            if removed is not None:
                total[:3] += [w @ removed[:, col], w @ short[:, col], w @ short.sum(axis=1)]
            total[3] += w[again].sum()
        rows.append({"value": value, "removed": int(total[0]), "shortfall": int(total[1]),
                     "tier3_short": int(total[2]), "pairs_past_pool": int(total[3])})  # fmt: skip
    return rows


def format_sweep(name: str, rows: list[dict[str, Any]]) -> str:
    """The sweep as a text table."""
    head = f"{name:>26}{'removed (tier 3)':>18}{'shortfall':>11}{'tier-3 short':>14}"
    lines = [head + f"{'pairs past pool':>17}"]
    for r in rows:
        v = "off" if r["value"] is None else f"{r['value']:g}"
        lines.append(f"{v:>26}{r['removed']:>18}{r['shortfall']:>11}{r['tier3_short']:>14}"
                     f"{r['pairs_past_pool']:>17}")  # fmt: skip
    return "\n".join(lines)


def plot_sweep(name: str, rows: list[dict[str, Any]], png: str | os.PathLike) -> None:
    """Draw removed candidates and shortfall against the threshold to ``png``.

    Raises
    ------
    ImportError
        Without matplotlib (``pip install negmine[plot]``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["value"] is not None]
    x = [r["value"] for r in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, [r["removed"] for r in pts], marker="o", label="tier-3 candidates removed")
    ax.plot(x, [r["shortfall"] for r in pts], marker="s", label="slots to the fallback tier")
    ax.set_xlabel(name)
    ax.set_ylabel("count (weighted by pairs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
