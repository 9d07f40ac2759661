"""``negmine demo`` and ``negmine bench``: synthetic corpora, mined and timed."""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from .mine import mine, print_stats
from .options import add_command, add_mining_options

__all__ = ["register"]

log = logging.getLogger("negmine")


class _CountNotFile(argparse.Action):
    """``--clusters`` names a file everywhere; in ``demo`` a count is ``--n-clusters``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(
            f"argument {option_string}: names a file of cluster ids (as in index build); "
            f"the number of clusters is `--n-clusters {values}`"
        )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``demo`` and ``bench`` to the command parsers."""
    p = add_command(
        sub, common, "demo", help="generate a clustered corpus, mine, validate, summarise",
        example="negmine demo --sources 3000 --n-clusters 20 --pairs 1500 --dim 32 --out demo/",
    )  # fmt: skip
    g = p.add_argument_group("corpus")
    g.add_argument("--sources", type=int, default=30000, metavar="N",
                   help="source passages (default 30000)")  # fmt: skip
    g.add_argument("--n-clusters", type=int, default=100, metavar="N",
                   help="clusters (default 100)")  # fmt: skip
    g.add_argument("--clusters", action=_CountNotFile, help=argparse.SUPPRESS)
    g.add_argument("--pairs", type=int, default=20000, metavar="N",
                   help="(question, positive) pairs (default 20000)")  # fmt: skip
    g.add_argument("--dim", type=int, default=384, metavar="D",
                   help="embedding dimension (default 384)")  # fmt: skip
    g.add_argument("--out", type=Path, default=None, metavar="OUT_DIR",
                   help="keep the outputs here (default: a temporary directory)")  # fmt: skip
    add_mining_options(p)
    p.set_defaults(func=_demo)
    _register_bench(sub, common)


def _register_bench(sub: Any, common: argparse.ArgumentParser) -> None:
    p = add_command(
        sub, common, "bench", help="time mining against the bare matrix product",
        example="negmine bench --workloads 20k --nprobe 8,16\n"
        "  negmine bench --executors --workloads 100k --nprobe 16\n"
        "  negmine bench --store 1m --spec clusters --spec clusters,fast --work-dir /data/bench",
    )  # fmt: skip
    p.add_argument("--workloads", default="20k,100k", metavar="W,W,...",
                   help="comma-separated among 20k, 100k, 1m (default 20k,100k)")  # fmt: skip
    p.add_argument("--tiers-pairs", type=int, default=1_000_000, metavar="N",
                   help="pairs for the timing of tiers 1, 2 and 4 "
                   "(default 1000000; 0: skip)")  # fmt: skip
    p.add_argument(
        "--nprobe", default="", metavar="N,N,...",
        help="also time the approximate tier 3 at these nprobe values, with its recall",
    )  # fmt: skip
    p.add_argument(
        "--store", default=None, metavar="WORKLOAD",
        help="instead: the index-store workload (20k, 100k, 1m or 10m): build each --spec, open it "
        "memory-mapped, mine every pair tuned to --target-recall, exact timed on a sample; "
        "--nprobe adds each storage's recall/time curve at those values",
    )  # fmt: skip
    p.add_argument(
        "--spec",
        action="append",
        default=None,
        metavar="SPEC",
        help="a storage for --store, repeatable (default: clusters, clusters,fast)",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        metavar="R",
        help="tier-3 recall@3 --store tunes each storage to (default 0.95)",
    )
    p.add_argument("--pairs-sample", type=int, default=0, metavar="N",
                   help="--store: mine every pair of an even sample of clusters holding about "
                   "N pairs and scale the time to all (for the 10m workload; default: every "
                   "pair)")  # fmt: skip
    p.add_argument("--corpus", choices=["minilm", "latent"], default="minilm",
                   help="--store's synthetic corpus: spectrum of all-MiniLM-L6-v2 embeddings "
                   "(default) or the plain latent-manifold one")  # fmt: skip
    p.add_argument(
        "--executors", action="store_true",
        help="instead: mine each of --workloads in-process and on a local Ray instance, exact "
        "(not at 1m) and at the first --nprobe (default 16); overhead, block times, same bytes",
    )  # fmt: skip
    p.add_argument(
        "--pool", type=int, default=None, metavar="DEPTH",
        help="instead: on each of --workloads, the cost of keeping a pool of DEPTH tier-3 "
        "candidates and of re-mining from it (new seed, relative margin, window)",
    )  # fmt: skip
    p.add_argument(
        "--exact-sample",
        type=int,
        default=8192,
        metavar="N",
        help="tier-3 queries timed exactly for --store (default 8192; 0: skip)",
    )
    p.add_argument("--work-dir", default=None, metavar="DIR",
                   help="where --store keeps its files, created if missing (default: the "
                   "system's temporary directory)")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the figures here")  # fmt: skip
    p.set_defaults(func=_bench)


def _demo(args: argparse.Namespace) -> int:
    from ..synth import make_corpus

    t0 = time.perf_counter()
    corpus = make_corpus(args.sources, args.n_clusters, args.pairs, args.dim, seed=args.seed)
    log.info(
        "generated %d sources, %d questions, %d clusters, %d pairs (d=%d) in %.1f s",
        args.sources,
        len(corpus["question_embeddings"]),
        args.n_clusters,
        args.pairs,
        args.dim,
        time.perf_counter() - t0,
    )
    with tempfile.TemporaryDirectory(prefix="negmine-demo-") as tmp:
        out = args.out if args.out is not None else Path(tmp) / "out"
        stats = mine(args, corpus, out)
        print(f"validation: {'ok' if stats['validation_ok'] else 'FAILED'}")
        print_stats(stats, stats["seconds"])
        files = ", ".join(sorted(p.name for p in out.iterdir()))
        where = out if args.out is not None else "a temporary directory (use --out to keep it)"
        print(f"outputs ({files}) written to {where}")
    return 0 if stats["validation_ok"] else 1


def _bench(args: argparse.Namespace) -> int:
    from ..bench import run

    try:
        nprobes = [int(x) for x in args.nprobe.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"`--nprobe` must be comma-separated integers such as 16,32; got '{args.nprobe}'."
        ) from None
    if args.pool is not None:
        from ..bench_pool import run_pool

        names = [w.strip() for w in args.workloads.split(",") if w.strip()]
        results = run_pool(names, args.pool)
    elif args.executors:
        from ..bench_ray import run_executors

        names = [w.strip() for w in args.workloads.split(",") if w.strip()]
        results = run_executors(names, (nprobes or [16])[0])
    elif args.store:
        from ..bench_store import run_store

        results = run_store(
            args.store, args.spec or ["clusters", "clusters,fast"], args.target_recall,
            corpus=args.corpus, curve=nprobes, exact_sample=args.exact_sample,
            work_dir=args.work_dir, pairs_sample=args.pairs_sample,
        )  # fmt: skip
    else:
        names = [w.strip() for w in args.workloads.split(",") if w.strip()]
        results = run(names, tiers_pairs=args.tiers_pairs, nprobes=nprobes)
    if args.json is not None:
        from ..io import atomic_write_json

        atomic_write_json(args.json, results)
    return 0
