"""The ``negmine`` command line.

Owns logging, progress bars (stderr) and exit codes: 0 success, 1 a failed
validation, 2 bad input or usage. Errors print one line; ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

log = logging.getLogger("negmine")


def _proportions(text: str) -> list[float]:
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


def _add_filter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (all off by default; see README, Filters)")
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


def _add_mining_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mining")
    g.add_argument("--n-neg", type=int, default=12, help="negatives per pair (default 12)")
    g.add_argument(
        "--tier-proportions",
        type=_proportions,
        default=None,
        metavar="T1,T2,T3,T4",
        help="counts summing to n_neg, or weights (default: n_neg // 4 each)",
    )
    g.add_argument("--adjacent-k", type=int, default=3, help="adjacent clusters (default 3)")
    g.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    g.add_argument(
        "--batch-size", type=int, default=16384, help="pairs per step; memory only (default 16384)"
    )
    g.add_argument(
        "--nprobe",
        type=int,
        default=None,
        help="approximate tier 3: probe this many nearest clusters besides the pair's own "
        "(default: exact)",
    )
    g.add_argument(
        "--ef-search", type=int, default=None, help="efSearch of an HNSW index (or quantizer)"
    )
    g.add_argument(
        "--rerank",
        type=int,
        default=None,
        help="approximate index: fetch this many times the tier-3 candidates and keep the best "
        "by exact cosine (default 1; 4 for compressed 'clusters' lists)",
    )
    g.add_argument(
        "--recall-sample",
        type=int,
        default=0,
        help="with an approximate tier 3, measure its recall against exact on this many queries",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="replace the outputs of an earlier run in --out"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: reuse its finished blocks (same inputs and settings)",
    )
    _add_filter_options(p)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


#: Commands that live in modules of this package; each module has
#: ``register(sub, common)``, which adds its parser and sets ``func`` (the
#: command: ``args -> exit code``) as a parser default.
_COMMAND_MODULES = ("prepare", "export", "remine")


def _register_command_modules(sub: Any, common: argparse.ArgumentParser) -> None:
    import importlib
    import importlib.util

    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}").register(sub, common)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="negmine", description="Mine tiered hard negatives for retrieval training."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    common = _Parser(add_help=False)
    common.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars, warnings only"
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "mine", parents=[common], help="mine negatives for a data directory",
        description="Mine negatives for DATA_DIR (.npy inputs or a JASPER dataset directory).",
    )  # fmt: skip
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("--index", type=Path, default=None, help="a prebuilt index directory")
    _add_mining_options(p)

    p = sub.add_parser(
        "validate", parents=[common], help="check a mining output against its inputs"
    )
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--data", type=Path, required=True, metavar="DATA_DIR")
    p.add_argument("--adjacent-k", type=int, default=None, help="default: from the manifest")

    p = sub.add_parser(
        "report", parents=[common], help="per-tier counts and similarity distributions of a run",
        description="Print per-tier counts, fallbacks, similarity summaries and what each filter "
        "removed, and draw the similarity distributions to a PNG (needs negmine[plot]).",
    )  # fmt: skip
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--data", type=Path, default=None, metavar="DATA_DIR",
                   help="recompute the cosines from the inputs OUT_DIR was mined from")  # fmt: skip
    p.add_argument("--png", type=Path, default=None, metavar="PATH",
                   help="figure file (default: OUT_DIR-report.png beside OUT_DIR)")  # fmt: skip
    p.add_argument("--no-png", action="store_true", help="print the tables only")

    p = sub.add_parser(
        "demo", parents=[common], help="generate a clustered corpus, mine, validate, summarise"
    )
    p.add_argument("--sources", type=int, default=30000)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--out", type=Path, default=None, help="keep the outputs here")
    _add_mining_options(p)

    p = sub.add_parser(
        "bench", parents=[common], help="time mining against the bare matrix product"
    )
    p.add_argument(
        "--workloads",
        default="20k,100k",
        help="comma-separated among 20k, 100k, 1m (default 20k,100k)",
    )
    p.add_argument("--tiers-pairs", type=int, default=1_000_000, help="pairs for the tier timing")
    p.add_argument(
        "--nprobe",
        default="",
        metavar="N,N,...",
        help="also time the approximate tier 3 at these nprobe values, with its recall",
    )
    p.add_argument(
        "--store",
        default=None,
        metavar="WORKLOAD",
        help="instead: the index-store workload (e.g. 1m): build a 'clusters' index, open it "
        "memory-mapped, mine every pair at each --nprobe (default 16,32), exact timed on a sample",
    )
    p.add_argument("--exact-sample", type=int, default=8192,
                   help="tier-3 queries timed exactly for --store (default 8192)")  # fmt: skip
    p.add_argument("--work-dir", default=None, help="where --store keeps its files (default /tmp)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")

    p = sub.add_parser("index", help="build or inspect a source index")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    b = isub.add_parser("build", parents=[common], help="build and save an index directory")
    b.add_argument("sources", type=Path, metavar="SOURCES", help=".npy/.pt file or data dir")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument(
        "--spec",
        default="flat",
        help="'flat' (exact, default), 'clusters' (lists = the data's clusters; "
        "'clusters,SQ8' / 'clusters,fp16' compress them), 'auto' (by size and --memory-budget) "
        "or a FAISS factory string such as 'HNSW32' or 'IVF4096,Flat'",
    )
    b.add_argument("--clusters", type=Path, default=None, metavar="FILE",
                   help="cluster of each source (.npy/.pt); default: the data dir's")  # fmt: skip
    b.add_argument("--centroids", type=Path, default=None, metavar="FILE",
                   help="cluster centroids (.npy/.pt); default: from a data dir")  # fmt: skip
    b.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="RAM the index may use, e.g. 8G (for 'auto'; default: half)")  # fmt: skip
    ck = isub.add_parser("check", parents=[common],
                         help="measure an index's tier-3 recall against exact search")  # fmt: skip
    ck.add_argument("path", type=Path, metavar="DIR")
    ck.add_argument("--data", type=Path, required=True, metavar="DATA_DIR")
    ck.add_argument("--sample", type=int, default=2000, help="queries checked (default 2000)")
    ck.add_argument("--k", type=int, default=3, help="recall@k (default 3)")
    ck.add_argument("--nprobe", type=int, default=None)
    ck.add_argument("--ef-search", type=int, default=None)
    ck.add_argument("--rerank", type=int, default=None)
    ck.add_argument("--adjacent-k", type=int, default=3, help=argparse.SUPPRESS)
    i = isub.add_parser("info", parents=[common], help="print an index manifest")
    i.add_argument("path", type=Path)
    ls = isub.add_parser("list", parents=[common], help="list the indexes in a store")
    ls.add_argument("store", type=Path, nargs="?", default=Path("indexes"),
                    help="store directory (default: indexes)")  # fmt: skip
    _register_command_modules(sub, common)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print_stats(stats: dict[str, Any], seconds: float) -> None:
    print(f"{'tier':<18}{'count':>10}{'requested':>11}{'fallback':>10}{'mean cos':>10}"
          f"{'cos to pos':>12}")  # fmt: skip
    for t, row in stats["tiers"].items():
        name = f"{t} {row['name']}"
        cp = row.get("cosine_positive", {}).get("mean")
        print(f"{name:<18}{row['count']:>10}{row['requested']:>11}{row.get('fallback', 0):>10}"
              f"{_fmt(row['mean_cosine']):>10}{_fmt(cp):>12}")  # fmt: skip
    pc = stats.get("positive_cosine")
    if pc and pc.get("mean") is not None:
        print(f"question to its positive: mean {pc['mean']:.3f}, "
              f"5-95% {pc['q05']:.3f}..{pc['q95']:.3f}")  # fmt: skip
    for name, f in (stats.get("filters") or {}).items():
        rm = f["removed"]
        print(f"filter {name}={f['value']}: removed {rm['1']}/{rm['2']}/{rm['3']}/{rm['4']} "
              f"(tiers 1/2/3/4), {f['shortfall']} slots to a fallback tier")  # fmt: skip
    rec = stats.get("tier3_recall")
    if rec:
        print(f"tier-3 recall@{rec['k']} against exact search: {rec['recall']:.4f} "
              f"on {rec['sample']} queries ({stats['index'].get('factory')})")  # fmt: skip
    sf = {k: v for k, v in stats["shortfalls"].items() if v}
    print(f"shortfalls moved along the fallback: {sf or 'none'}")
    n = stats["n_pairs"]
    print(f"{n} pairs in {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f} pairs/s)")


def _mine(args: argparse.Namespace, arrays: dict[str, Any], out: Path | None) -> dict[str, Any]:
    from ..miner import NegativeMiner

    miner = NegativeMiner(
        **arrays,
        n_neg=args.n_neg,
        tier_proportions=args.tier_proportions,
        adjacent_k=args.adjacent_k,
        random_seed=args.seed,
        batch_size=args.batch_size,
        show_progress=not args.quiet,
        index=getattr(args, "index", None),
        nprobe=args.nprobe,
        ef_search=args.ef_search,
        rerank=args.rerank,
        recall_sample=args.recall_sample,
        max_score=args.max_score,
        relative_margin=args.relative_margin,
        absolute_margin=args.absolute_margin,
        near_duplicate_threshold=args.near_duplicate_threshold,
        tier3_rank_window=args.tier3_rank_window,
        tier3_sampling=args.tier3_sampling,
    )
    t0 = time.perf_counter()
    if out is None:
        miner.mine_arrays()
    else:
        miner.mine_to(out, overwrite=args.overwrite, resume=args.resume)
        log.info("wrote %s", out)
    stats = dict(miner.last_stats or {})
    stats["seconds"] = time.perf_counter() - t0
    return stats


def _cmd_mine(args: argparse.Namespace) -> int:
    from ..datasets import load_dataset

    ds = load_dataset(args.data_dir)
    for note in ds.notes:
        log.info("%s", note)
    stats = _mine(args, ds.arrays, args.out)
    if not args.quiet:
        _print_stats(stats, stats["seconds"])
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ..datasets import load_dataset
    from ..io import load_outputs
    from ..validate import validate_negatives

    outputs = load_outputs(args.out_dir)
    manifest = outputs["manifest"]
    config = manifest.get("config", {})
    adjacent_k = args.adjacent_k if args.adjacent_k is not None else config.get("adjacent_k", 3)
    ds = load_dataset(args.data)
    a = ds.arrays
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
    print(report.summary())
    if report.ok:
        print("ok: every rule holds")
        return 0
    for err in report.errors:
        print(f"error: {err}")
    return 1


def _cmd_report(args: argparse.Namespace) -> int:
    import os

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


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..synth import make_corpus

    t0 = time.perf_counter()
    corpus = make_corpus(args.sources, args.clusters, args.pairs, args.dim, seed=args.seed)
    log.info(
        "generated %d sources, %d questions, %d clusters, %d pairs (d=%d) in %.1f s",
        args.sources,
        len(corpus["question_embeddings"]),
        args.clusters,
        args.pairs,
        args.dim,
        time.perf_counter() - t0,
    )
    with tempfile.TemporaryDirectory(prefix="negmine-demo-") as tmp:
        out = args.out if args.out is not None else Path(tmp) / "out"
        stats = _mine(args, corpus, out)
        print(f"validation: {'ok' if stats['validation_ok'] else 'FAILED'}")
        _print_stats(stats, stats["seconds"])
        files = ", ".join(sorted(p.name for p in out.iterdir()))
        where = out if args.out is not None else "a temporary directory (use --out to keep it)"
        print(f"outputs ({files}) written to {where}")
    return 0 if stats["validation_ok"] else 1


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run, run_store

    nprobes = [int(x) for x in args.nprobe.split(",") if x.strip()]
    if args.store:
        results = run_store(args.store, nprobes or [16, 32], args.exact_sample, args.work_dir)
    else:
        names = [w.strip() for w in args.workloads.split(",") if w.strip()]
        results = run(names, tiers_pairs=args.tiers_pairs, nprobes=nprobes)
    if args.json is not None:
        from ..io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


def _load_matrix(path: Path) -> Any:
    import numpy as np

    if path.is_dir():
        from ..datasets import load_dataset

        return load_dataset(path).arrays["source_embeddings"]
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if path.suffix == ".pt":
        from ..io import load_pt_tensor

        return load_pt_tensor(path)
    raise ValueError(f"`SOURCES` must be a .npy or .pt file or a data directory; got '{path}'.")


def _index_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Sources, cluster ids and centroids for ``index build``."""
    scl = _load_matrix(args.clusters) if args.clusters else None
    cen = _load_matrix(args.centroids) if args.centroids else None
    if args.sources.is_dir():
        from ..datasets import load_dataset

        arrays = load_dataset(args.sources).arrays
        src = arrays["source_embeddings"]
        scl = arrays["source_cluster_ids"] if scl is None else scl
        cen = arrays["centroid_embeddings"] if cen is None else cen
    else:
        src = _load_matrix(args.sources)
    if args.spec.strip().lower().startswith("clusters") and (scl is None or cen is None):
        raise ValueError(
            "`--spec clusters` needs the clusters: pass a data directory as SOURCES, or "
            "--clusters FILE and --centroids FILE."
        )
    return src, scl, cen


def _index_check(args: argparse.Namespace) -> int:
    from ..datasets import load_dataset
    from ..miner import NegativeMiner

    ds = load_dataset(args.data)
    miner = NegativeMiner(**ds.arrays, n_neg=max(args.k, 1), tier_proportions=[0, 0, 1, 0],
                          adjacent_k=args.adjacent_k, index=args.path, nprobe=args.nprobe,
                          ef_search=args.ef_search, rerank=args.rerank, validate=False)  # fmt: skip
    rep = miner.check_recall(sample=args.sample, k=args.k)
    desc = rep["index"]
    params = ", ".join(f"{k}={v}" for k, v in desc.get("search_params", {}).items()) or "none"
    kind = "exact" if desc.get("exact") else "approximate"
    print(f"index      {args.path} ({desc.get('spec', desc.get('factory'))}: "
          f"{desc.get('factory')}, {kind})")  # fmt: skip
    print(f"search     {params}")
    print(f"recall@{rep['k']:<3} {rep['recall']:.4f} on {rep['sample']} tier-3 queries "
          f"(pair's cluster and the question's positives excluded)")  # fmt: skip
    print(f"time       {rep['seconds_search']:.3f} s searching, {rep['seconds_exact']:.3f} s exact")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from ..index import SourceIndex, read_manifest

    if args.index_command == "build":
        t0 = time.perf_counter()
        src, scl, cen = _index_inputs(args)
        idx = SourceIndex.build(src, args.spec, source_cluster_ids=scl, centroid_embeddings=cen,
                                memory_budget=args.memory_budget)  # fmt: skip
        if "auto" in idx.manifest:
            log.info("auto: %s (%s)", idx.manifest["auto"]["chose"], idx.manifest["auto"]["reason"])
        idx.save(args.out)
        log.info("built %s over %d sources in %.1f s", idx.manifest["factory"], idx.ntotal,
                 time.perf_counter() - t0)  # fmt: skip
        print(args.out)
        return 0
    if args.index_command == "check":
        return _index_check(args)
    if args.index_command == "info":
        print(json.dumps(read_manifest(args.path), indent=2, sort_keys=True))
        return 0
    if args.index_command == "list":
        if not args.store.is_dir():
            raise ValueError(f"`store` must be a directory; got '{args.store}'.")
        print(f"{'name':<24}{'spec':<16}{'factory':<16}{'ntotal':>10}{'d':>6}{'MB':>9}  created")
        for d in sorted(p for p in args.store.iterdir() if (p / "manifest.json").is_file()):
            if (d / "hard_negatives.pt").exists():
                continue  # a mining output, not an index
            try:
                m = read_manifest(d)
            except ValueError as e:
                print(f"{d.name:<24}unreadable: {e}")
                continue
            mb = m.get("index_bytes", 0) / 2**20
            spec = str(m.get("spec", m["factory"]))
            print(f"{d.name:<24}{spec:<16}{m['factory']:<16}{m['ntotal']:>10}{m['d']:>6}"
                  f"{mb:>9.1f}  {m.get('created', '?')}")  # fmt: skip
        return 0
    print("negmine index: choose an action: build, check, info or list", file=sys.stderr)
    return 2


_COMMANDS = {
    "mine": _cmd_mine,
    "validate": _cmd_validate,
    "report": _cmd_report,
    "demo": _cmd_demo,
    "bench": _cmd_bench,
    "index": _cmd_index,
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .._version import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    for flag in ("quiet", "verbose", "debug"):
        if not hasattr(args, flag):
            setattr(args, flag, False)
    _setup_logging(args)
    try:
        func = getattr(args, "func", None) or _COMMANDS[args.command]
        return func(args)
    except (ValueError, TypeError, ArithmeticError, OSError) as e:
        if args.debug:
            raise
        print(f"negmine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("negmine: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
