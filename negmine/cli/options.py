"""Options shared by several commands, and the parser class they all use.

One spelling for one idea: ``--seed`` for every random seed,
``--recall-sample`` for every count of recall queries, ``--n-clusters`` for a
number of clusters and ``--clusters FILE`` only for a file of cluster ids.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = [
    "EXECUTORS",
    "HelpFormatter",
    "Parser",
    "add_command",
    "add_filter_options",
    "add_mining_options",
    "add_output_flags",
    "deprecated_alias",
]

#: Values of ``--executor``; the first is the default.
EXECUTORS = ("local", "ray")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps prose; keeps indented lines (examples, tables) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for line in text.splitlines():
            if line.startswith("  ") or not line.strip():
                out.append(indent + line)
            else:
                out.append(super()._fill_text(line, width, indent))
        return "\n".join(out)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_output_flags(p: argparse.ArgumentParser, *, default: Any) -> None:
    """``-q``, ``-v`` and ``--debug``.

    The top-level parser takes them with ``default=False``; each command takes
    them again with ``default=SUPPRESS``, so ``negmine -q mine ...`` and
    ``negmine mine -q ...`` both work and neither undoes the other.
    """
    p.add_argument(
        "-q", "--quiet", action="store_true", default=default,
        help="no progress bars and no summary; warnings and errors only",
    )  # fmt: skip
    p.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging on stderr"
    )
    p.add_argument(
        "--debug", action="store_true", default=default,
        help="on an error, also print the traceback",
    )  # fmt: skip


def add_command(
    sub: Any, common: argparse.ArgumentParser, name: str, *, help: str, example: str,
    description: str | None = None,
) -> argparse.ArgumentParser:  # fmt: skip
    """Add one command's parser, with the shared flags and an example epilog."""
    return sub.add_parser(
        name,
        parents=[common],
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=f"example:\n  {example}",
        formatter_class=HelpFormatter,
    )


class _DeprecatedAlias(argparse.Action):
    """Store the value under the new option's dest and note the old spelling."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kw: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)
        notes = list(getattr(namespace, "deprecations", None) or [])
        notes.append(f"`{option_string}` is deprecated; use `{self.new}`")
        namespace.deprecations = notes


def deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, **kw: Any) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (a warning says so)."""
    p.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, help=argparse.SUPPRESS, **kw)


def proportions(text: str) -> list[float]:
    """``--tier-proportions``: four comma-separated numbers."""
    try:
        vals = [float(x) for x in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected four comma-separated numbers such as 3,4,3,2; got {text!r}"
        ) from None
    return [int(v) if v.is_integer() else v for v in vals]


class _RankWindow(argparse.Action):
    """``--tier3-rank-window LO HI`` or ``LO:HI`` -> (lo, hi)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parts = values[0].split(":") if len(values) == 1 else list(values)
        try:
            if len(parts) != 2:
                raise ValueError
            window = (int(parts[0]), int(parts[1]))
        except ValueError:
            parser.error(
                f"argument {option_string}: expected two integers, LO HI or LO:HI such as "
                f"5:50; got {' '.join(values)!r}"
            )
        setattr(namespace, self.dest, window)


def add_filter_options(p: argparse.ArgumentParser) -> None:
    """The filters of tier 3 and of every tier; all off by default."""
    g = p.add_argument_group("filters (all off by default; see docs/filters.md)")
    g.add_argument(
        "--max-score", type=float, default=None, metavar="COS",
        help="tier 3 skips sources with cosine to the question above COS",
    )  # fmt: skip
    g.add_argument(
        "--relative-margin", type=float, default=None, metavar="M",
        help="tier 3 skips sources with cosine to the question above (1 - M) x the question's "
        "lowest positive cosine (0.05: at most 95%% of the positive's)",
    )  # fmt: skip
    g.add_argument(
        "--absolute-margin", type=float, default=None, metavar="M",
        help="tier 3 skips sources with cosine to the question above the question's lowest "
        "positive cosine minus M",
    )  # fmt: skip
    g.add_argument(
        "--near-duplicate-threshold", type=float, default=None, metavar="COS",
        help="every tier skips sources with cosine above COS to one of the question's positives",
    )  # fmt: skip
    g.add_argument(
        "--tier3-rank-window", nargs="+", action=_RankWindow, default=None, metavar=("LO", "HI"),
        help="tier 3 draws from eligible ranks LO <= rank < HI (also written LO:HI)",
    )  # fmt: skip
    g.add_argument(
        "--tier3-sampling", choices=("top", "random"), default="top",
        help="take the window's best ranks (top, default) or draw uniformly from it (random)",
    )  # fmt: skip


def _add_search_options(g: Any) -> None:
    g.add_argument(
        "--nprobe", type=int, default=None, metavar="N",
        help="approximate tier 3: probe this many nearest clusters besides the pair's own "
        "(default: exact)",
    )  # fmt: skip
    g.add_argument(
        "--ef-search", type=int, default=None, metavar="N",
        help="efSearch of an HNSW index (or quantizer)",
    )  # fmt: skip
    g.add_argument(
        "--rerank", type=int, default=None, metavar="N",
        help="approximate index: fetch N times the tier-3 candidates and keep the best by "
        "exact cosine (default 1; 4 for compressed 'clusters' lists)",
    )  # fmt: skip
    g.add_argument(
        "--recall-sample", type=int, default=0, metavar="N",
        help="with an approximate tier 3, measure its recall against exact search on N "
        "queries (default 0: not measured)",
    )  # fmt: skip


def add_mining_options(p: argparse.ArgumentParser) -> None:
    """Tiers, seed, memory, search, executor, output handling and filters."""
    g = p.add_argument_group("mining")
    g.add_argument("--n-neg", type=int, default=12, metavar="N",
                   help="negatives per pair (default 12)")  # fmt: skip
    g.add_argument(
        "--tier-proportions", type=proportions, default=None, metavar="T1,T2,T3,T4",
        help="counts summing to --n-neg, or weights (default: n_neg // 4 each)",
    )  # fmt: skip
    g.add_argument("--adjacent-k", type=int, default=3, metavar="K",
                   help="adjacent clusters of tier 2 (default 3)")  # fmt: skip
    g.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    g.add_argument(
        "--batch-size", type=int, default=16384, metavar="N",
        help="pairs per step; changes memory only, never the output (default 16384)",
    )  # fmt: skip
    _add_search_options(g)
    g.add_argument(
        "--pool-depth", type=int, default=None, metavar="N",
        help="keep each tier-3 query's N best candidates with the outputs, so that "
        "negmine remine can mine again (new seeds, filters, windows) without searching",
    )  # fmt: skip
    g.add_argument(
        "--executor", choices=EXECUTORS, default=EXECUTORS[0],
        help="run the blocks in this process (local, default) or as tasks on a Ray cluster "
        "(ray; needs negmine[ray]); the output is the same",
    )  # fmt: skip
    g.add_argument(
        "--ray-address", default=None, metavar="ADDR",
        help="with --executor ray: the cluster to join (default: $RAY_ADDRESS, else a local "
        "instance started for the run)",
    )  # fmt: skip
    g.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out"
    )
    g.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted run: reuse its finished blocks (same inputs and settings)",
    )  # fmt: skip
    add_filter_options(p)
