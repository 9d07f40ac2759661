"""``negmine validate`` and ``negmine report``: read a mining output directory."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .options import add_command

__all__ = ["register"]


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``validate`` and ``report`` to the command parsers."""
    p = add_command(
        sub, common, "validate", help="check a mining output against its inputs",
        example="negmine validate runs/first --data data/",
        description="Check every rule of a mining output against the inputs it was mined from "
        "(distinct ids, no positives, tiers where they belong, counts, filters). Exit 1 when a "
        "rule is broken; each violation is printed once.",
    )  # fmt: skip
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a mining output directory")
    p.add_argument("--data", type=Path, required=True, metavar="DATA_DIR",
                   help="the inputs OUT_DIR was mined from")  # fmt: skip
    p.add_argument("--adjacent-k", type=int, default=None, metavar="K",
                   help="adjacent clusters of tier 4 "
                   "(default: from OUT_DIR's manifest)")  # fmt: skip
    p.set_defaults(func=_validate)

    p = add_command(
        sub, common, "report", help="per-tier counts and similarity distributions of a run",
        example="negmine report runs/first --data data/ --png first.png",
        description="Print per-tier counts, fallbacks, similarity summaries and what each filter "
        "removed, and draw the similarity distributions to a PNG (needs negmine[plot]).",
    )  # fmt: skip
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a mining output directory")
    p.add_argument("--data", type=Path, default=None, metavar="DATA_DIR",
                   help="recompute the cosines from the inputs OUT_DIR was mined from")  # fmt: skip
    p.add_argument("--png", type=Path, default=None, metavar="PATH",
                   help="figure file (default: OUT_DIR-report.png beside OUT_DIR)")  # fmt: skip
    p.add_argument("--no-png", action="store_true", help="print the tables only")
    p.set_defaults(func=_report)


def _validate(args: argparse.Namespace) -> int:
    from ..io import load_outputs
    from ..io.datasets import load_dataset
    from ..validate import validate_negatives

    outputs = load_outputs(args.out_dir)
    config = outputs["manifest"].get("config", {})
    adjacent_k = args.adjacent_k if args.adjacent_k is not None else config.get("adjacent_k", 3)
    a = load_dataset(args.data).arrays
    report = validate_negatives(
        outputs["hard_negatives"],
        outputs["negative_tiers"],
        pair_indices=a["pair_indices"],
        pair_cluster_ids=a["pair_cluster_ids"],
        source_cluster_ids=a["source_cluster_ids"],
        centroid_embeddings=a["centroid_embeddings"],
        adjacent_k=adjacent_k,
        tier_proportions=config.get("tier_counts"),
        source_embeddings=a["source_embeddings"],
        near_duplicate_threshold=config.get("near_duplicate_threshold"),
    )
    print(report.summary())  # the table, then one "error: ..." line per violation
    if report.ok:
        print("ok: every rule holds")
        return 0
    return 1


def _report(args: argparse.Namespace) -> int:
    from ..report import PlotUnavailable, build_report, default_png_path, format_report, plot_report

    png = args.png if args.png is not None else default_png_path(args.out_dir)
    inside = os.path.commonpath([os.path.abspath(png), os.path.abspath(args.out_dir)])
    if not args.no_png and inside == os.path.abspath(args.out_dir):
        raise ValueError(
            f"`--png` must lie outside OUT_DIR, which negmine replaces whole; got '{png}'."
        )
    report = build_report(args.out_dir, data=args.data)
    print(format_report(report))
    if args.no_png:
        return 0
    try:
        plot_report(report, png)
    except PlotUnavailable as e:
        print(f"negmine report: {e}", file=sys.stderr)
        return 2 if args.png is not None else 0
    print(f"figure: {png}")
    return 0
