"""``negmine remine``: mine again from a pooled run, or sweep a filter over its pool."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from .options import add_command, proportions

__all__ = ["register", "run"]

log = logging.getLogger("negmine")


def _number_or_none(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none'; got {text!r}") from None


def _window(text: str) -> tuple[int, int] | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        lo, hi = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LO:HI such as 10:30, or 'none'; got {text!r}"
        ) from None
    return lo, hi


def _sweep(text: str) -> tuple[str, list[float | None]]:
    name, sep, vals = text.partition("=")
    if not sep or not vals:
        raise argparse.ArgumentTypeError(
            f"expected FILTER=V1,V2,... such as relative_margin=0.02,0.05,0.1; got {text!r}"
        )
    return name.strip().replace("-", "_"), [_number_or_none(v) for v in vals.split(",")]


#: Options -> the settings they change (only the options given are passed).
_SETTINGS = ("seed", "n_neg", "tier_proportions", "adjacent_k", "max_score", "relative_margin",
             "absolute_margin", "near_duplicate_threshold", "tier3_rank_window",
             "tier3_sampling", "batch_size")  # fmt: skip


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``remine`` command to the subparsers ``sub``."""
    p = add_command(
        sub, common, "remine", help="mine again from a pooled run, without searching",
        description="Mine RUN_DIR (mined with --pool-depth) again with new settings, tier 3 "
        "read from its pool; the output equals mining from scratch with those settings. "
        "Options left out keep the run's values; a filter or window set to 'none' is "
        "turned off. With --sweep, print what each threshold of one filter would remove "
        "instead of mining.",
        example="negmine remine run/ --data data/ --out run-epoch2/ --seed 44",
    )  # fmt: skip
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a run mined with --pool-depth")  # fmt: skip
    p.add_argument("--data", type=Path, required=True, metavar="DATA_DIR",
                   help="the data RUN_DIR was mined from")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, metavar="OUT_DIR",
                   help="where to write the new outputs (required unless --sweep)")  # fmt: skip
    p.add_argument("--index", type=Path, default=None, metavar="INDEX_DIR",
                   help="the run's index, if it had one")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    g = p.add_argument_group("settings (default: the run's)", argument_default=argparse.SUPPRESS)
    g.add_argument("--seed", type=int, help="random seed (epoch e: base seed + e)")
    g.add_argument("--n-neg", type=int, metavar="N", help="negatives per pair")
    g.add_argument("--tier-proportions", type=proportions, metavar="T1,T2,T3,T4",
                   help="counts summing to --n-neg, or weights")  # fmt: skip
    g.add_argument("--adjacent-k", type=int, metavar="K", help="adjacent clusters of tier 2")
    for name in ("max-score", "relative-margin", "absolute-margin", "near-duplicate-threshold"):
        g.add_argument(f"--{name}", type=_number_or_none, metavar="X|none",
                       help=f"the {name.replace('-', ' ')} filter ('none': off)")  # fmt: skip
    g.add_argument("--tier3-rank-window", type=_window, metavar="LO:HI|none",
                   help="ranks tier 3 draws from ('none': off)")  # fmt: skip
    g.add_argument("--tier3-sampling", choices=("top", "random"),
                   help="the window's first ranks, or a uniform draw from it")  # fmt: skip
    g.add_argument("--batch-size", type=int, metavar="N", help="pairs per step; memory only")
    s = p.add_argument_group("sweep")
    s.add_argument("--sweep", type=_sweep, default=None, metavar="FILTER=V1,V2,...",
                   help="e.g. relative_margin=0.02,0.05,0.1: a table of what each value would "
                   "remove from tier 3 and the shortfall that follows, from the pool")  # fmt: skip
    s.add_argument("--png", type=Path, default=None, metavar="PATH",
                   help="also draw the sweep to this PNG (needs negmine[plot])")  # fmt: skip
    p.set_defaults(func=run)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line (absent options keep the run's)."""
    return {name: getattr(args, name) for name in _SETTINGS if hasattr(args, name)}


def run(args: argparse.Namespace) -> int:
    """Run ``negmine remine``; returns the exit code."""
    if args.sweep is not None:
        from ..pool_report import format_sweep, plot_sweep, sweep_filter

        name, values = args.sweep
        rows = sweep_filter(args.run_dir, args.data, name, values, index=args.index)
        print(format_sweep(name, rows))
        if args.png is not None:
            plot_sweep(name, rows, args.png)
            print(f"figure: {args.png}")
        return 0
    if args.out is None:
        raise ValueError("`--out` is required to re-mine (or pass --sweep); got none.")
    from ..remine import remine

    t0 = time.perf_counter()
    res = remine(args.run_dir, args.data, args.out, index=args.index, overwrite=args.overwrite,
                 show_progress=not args.quiet, **_given(args))  # fmt: skip
    secs = time.perf_counter() - t0
    stats = res["stats"]
    pool = stats["pool"]
    if not args.quiet:
        print(f"re-mined {stats['n_pairs']} pairs from {args.run_dir} in {secs:.2f} s: "
              f"{pool['rows_searched_again']} of {stats['tier3_queries']} tier-3 rows searched "
              f"again (pool depth {pool['depth']})")  # fmt: skip
        print(f"wrote {args.out}")
    return 0
