"""``negmine mine``: mine the negatives of a data directory into an output directory."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from .options import EXECUTORS, add_command, add_mining_options

__all__ = ["mine", "print_stats", "register", "tuning_line"]

log = logging.getLogger("negmine")

#: Values of ``--products`` (those of :data:`negmine.config.PRODUCTS`); the first is the default.
PRODUCTS = ("numpy", "torch", "auto")

_EXAMPLE = (
    "negmine mine data/ --out runs/first --n-neg 12 --tier-proportions 3,4,3,2 --seed 7\n"
    "  negmine mine data/ --out runs/first --resume        # continue an interrupted run"
)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``mine`` to the command parsers."""
    p = add_command(
        sub, common, "mine", help="mine negatives for a data directory", example=_EXAMPLE,
        description="Mine tiered negatives for every pair of DATA_DIR and write them to OUT_DIR "
        "(hard_negatives.pt, negative_tiers.pt, scores and manifest.json), atomically.",
    )  # fmt: skip
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR",
                   help="the inputs: a directory of .npy files or a JASPER dataset")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                   help="output directory (replaced whole, only when the run "
                   "is complete)")  # fmt: skip
    p.add_argument("--index", type=Path, default=None, metavar="INDEX_DIR",
                   help="search tier 3 with this prebuilt index (negmine index build)")  # fmt: skip
    add_mining_options(p)
    p.add_argument(
        "--target-recall", type=float, default=None, metavar="R",
        help="tune the search settings of an approximate tier 3 (--nprobe, --ef-search, "
        "--rerank) to the cheapest whose recall@k against exact search reaches R, measured on "
        "a sample (an approximate --index given no settings is tuned to 0.95)",
    )  # fmt: skip
    p.add_argument(
        "--products", choices=PRODUCTS, default="numpy",
        help="library of tier 3's matrix products: numpy (default), torch, or auto (the faster "
        "on this machine, measured once and cached); the libraries round differently",
    )  # fmt: skip
    p.set_defaults(func=run)


def _miner_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The miner's settings from the mining options."""
    if args.ray_address is not None and args.executor != "ray":
        raise ValueError(
            f"`--ray-address` needs `--executor ray`; got --executor {args.executor} with "
            f"--ray-address {args.ray_address}."
        )
    kw: dict[str, Any] = {
        "n_neg": args.n_neg,
        "tier_proportions": args.tier_proportions,
        "adjacent_k": args.adjacent_k,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "show_progress": not args.quiet,
        "index": getattr(args, "index", None),
        "nprobe": args.nprobe,
        "ef_search": args.ef_search,
        "rerank": args.rerank,
        "recall_sample": args.recall_sample,
        "max_score": args.max_score,
        "relative_margin": args.relative_margin,
        "absolute_margin": args.absolute_margin,
        "near_duplicate_threshold": args.near_duplicate_threshold,
        "tier3_rank_window": args.tier3_rank_window,
        "tier3_sampling": args.tier3_sampling,
    }
    if args.pool_depth is not None:
        kw["pool_depth"] = args.pool_depth
    # Passed only when asked for, so the defaults need nothing new.
    if getattr(args, "target_recall", None) is not None:
        kw["target_recall"] = args.target_recall
    if getattr(args, "products", "numpy") != "numpy":
        kw["products"] = args.products
    if args.executor != EXECUTORS[0]:
        kw["executor"] = args.executor
    if args.ray_address is not None:
        kw["ray_address"] = args.ray_address
    return kw


def mine(args: argparse.Namespace, arrays: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Mine ``arrays`` with the settings of ``args``; write to ``out`` when given.

    Returns the run's statistics, with ``seconds`` added.
    """
    from ..miner import NegativeMiner

    miner = NegativeMiner(**arrays, **_miner_keywords(args))
    t0 = time.perf_counter()
    if out is None:
        miner.mine_arrays()
    else:
        miner.mine_to(out, overwrite=args.overwrite, resume=args.resume)
        log.info("wrote %s", out)
    stats = dict(miner.last_stats or {})
    stats["seconds"] = time.perf_counter() - t0
    return stats


def run(args: argparse.Namespace) -> int:
    """``negmine mine``."""
    from ..io.datasets import load_dataset

    ds = load_dataset(args.data_dir)
    for note in ds.notes:
        log.info("%s", note)
    stats = mine(args, ds.arrays, args.out)
    if not args.quiet:
        print_stats(stats, stats["seconds"])
    return 0


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def tuning_line(tun: dict[str, Any]) -> str:
    """One line on the search settings tuning chose: target, settings, recall, sample, time."""
    settings = ", ".join(f"{k}={v}" for k, v in tun["settings"].items()) or "as stored"
    why = " (default)" if tun.get("default") else ""
    return (f"search tuned to recall@{tun['k']} >= {tun['target']:g}{why}: {settings}, "
            f"measured {tun['recall']:.4f} on {tun['sample']} queries "
            f"({tun.get('recall_lower', tun['recall']):.4f} or more over all) in "
            f"{tun['seconds']:.2f} s")  # fmt: skip


def print_stats(stats: dict[str, Any], seconds: float) -> None:
    """Print the per-tier table and the run's summary lines."""
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
    tun = stats.get("tuning")
    if tun:
        print(tuning_line(tun))
    prod = stats.get("products") or {}
    if prod.get("calibration"):
        gf = ", ".join(f"{k} {v:g}" for k, v in prod["calibration"]["gflops"].items())
        print(f"products through {prod['library']} (auto; GFLOP/s {gf})")
    if stats.get("compiled"):
        print(f"compiled kernels: numba {stats['compiled']} (off: NEGMINE_COMPILED=0)")
    rec = stats.get("tier3_recall")
    if rec:
        print(f"tier-3 recall@{rec['k']} against exact search: {rec['recall']:.4f} "
              f"on {rec['sample']} queries ({stats['index'].get('factory')})")  # fmt: skip
    sf = {k: v for k, v in stats["shortfalls"].items() if v}
    print(f"shortfalls moved along the fallback: {sf or 'none'}")
    tm, cpu = stats.get("timings_seconds") or {}, stats.get("cpu_seconds") or {}
    if cpu.get("total") is not None and tm.get("total"):
        print(f"tier 3 search {tm['tier3_search']:.2f} s, tiers 1, 2, 4 and cosines "
              f"{tm['sampling_and_scores']:.2f} s; CPU {cpu['total']:.2f} s, "
              f"{cpu['total'] / tm['total']:.2f} cores busy")  # fmt: skip
    n = stats["n_pairs"]
    print(f"{n} pairs in {seconds:.2f} s ({n / max(seconds, 1e-9):,.0f} pairs/s)")
