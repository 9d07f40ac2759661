"""``negmine export``: a mining run's ids back to texts."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

EXAMPLE = """example:
  negmine export run/ --data data/ --format n-tuple --out train/        # load_from_disk('train/')
  negmine export run/ --data data/ --format triplet --scores --out train.parquet
  negmine export run/ --data data/ --format jsonl --out negatives.jsonl
"""


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``export`` command to the sub-parsers ``sub``."""
    from ..export import FILE_FORMATS, ST_FORMATS

    p = sub.add_parser(
        "export",
        parents=[common],
        help="mined ids back to texts (ST formats, jsonl, parquet)",
        description="Join the negatives of RUN_DIR with the texts of DATA_DIR (written by "
        "`negmine prepare`). A sentence-transformers format goes to a saved dataset directory, "
        "or to a .jsonl/.parquet file by --out's suffix; jsonl and parquet write one row per "
        "pair with every field.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--data", type=Path, required=True, metavar="DATA_DIR")
    p.add_argument("--format", required=True, choices=ST_FORMATS + FILE_FORMATS)
    p.add_argument("--out", type=Path, required=True, metavar="PATH")
    p.add_argument("--scores", action="store_true", help="ST formats: add the cosines")
    p.add_argument("--tiers", action="store_true", help="ST formats: add the tier of each negative")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``negmine export``; returns the exit code."""
    from ..export import FILE_FORMATS, export_run

    if args.quiet:
        import datasets

        datasets.disable_progress_bars()

    if args.format in FILE_FORMATS and (args.scores or args.tiers):
        raise ValueError(
            f"`--scores`/`--tiers` apply to the ST formats; --format {args.format} always holds "
            "scores and tiers. Drop them."
        )
    path, n = export_run(
        args.run_dir,
        args.data,
        args.out,
        args.format,
        output_scores=args.scores,
        output_tiers=args.tiers,
    )
    print(f"{n} rows ({args.format}) written to {path}")
    return 0
