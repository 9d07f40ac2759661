"""Step 2: several mining experiments that reuse the prebuilt indexes.

    python examples/index_workflow/experiments.py WORK_DIR

Opens the indexes that ``prebuild.py`` saved under WORK_DIR/indexes/ (memory-
mapped: opening costs a fraction of a second, whatever the corpus size), checks
the approximate one's recall against exact search, then mines experiments with
different seeds, tier proportions, n_neg and search settings, printing the time
of each step. Outputs go to WORK_DIR/runs/<name>/. Nothing is rebuilt.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from negmine import NegativeMiner, SourceIndex
from negmine.io.datasets import load_dataset

EXPERIMENTS = {
    "exact-seed1": {"index": "flat", "seed": 1},
    "exact-seed2": {"index": "flat", "seed": 2},
    "exact-8neg-hard": {"index": "flat", "n_neg": 8, "tier_proportions": [1, 2, 4, 1]},
    "clusters-nprobe16": {"index": "clusters", "nprobe": 16},
    "clusters-nprobe32-seed2": {"index": "clusters", "nprobe": 32, "seed": 2},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    args = ap.parse_args()
    data = load_dataset(args.work / "data").arrays

    indexes = {}
    for name in ("flat", "clusters"):
        t0 = time.perf_counter()
        indexes[name] = SourceIndex.load(args.work / "indexes" / name, mmap=True)
        print(f"opened index {name:<9} {time.perf_counter() - t0:7.3f} s (sha256 checked)")

    t0 = time.perf_counter()
    check = NegativeMiner(**data, index=indexes["clusters"], nprobe=16).check_recall(2000)
    print(f"recall@{check['k']} of clusters at nprobe 16: {check['recall']:.4f} "
          f"on {check['sample']} queries ({time.perf_counter() - t0:.2f} s)")  # fmt: skip

    for name, exp in EXPERIMENTS.items():
        settings = dict(exp)
        index = indexes[settings.pop("index")]
        t0 = time.perf_counter()
        miner = NegativeMiner(**data, index=index, **settings)
        miner.mine_to(args.work / "runs" / name, overwrite=True)
        st = miner.last_stats
        mean3 = st["tiers"]["3"]["mean_cosine"]
        print(f"{name:<24} {time.perf_counter() - t0:7.2f} s   tier-3 mean cosine {mean3:.3f}"
              f"   {settings}")  # fmt: skip


if __name__ == "__main__":
    main()
