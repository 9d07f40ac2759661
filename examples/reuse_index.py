"""Build a source index once, then run several mining experiments against it.

    python examples/reuse_index.py [WORK_DIR]

Generates a clustered corpus, saves it as a data directory, prebuilds the exact
index under WORK_DIR/indexes/, then mines three experiments (different seeds,
proportions and n_neg) that all reuse that index, printing the time of each step.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from negmine import NegativeMiner, SourceIndex
from negmine.datasets import load_dataset, save_dataset
from negmine.synth import make_corpus


def main(work: Path) -> None:
    t0 = time.perf_counter()
    save_dataset(work / "data", make_corpus(20_000, 60, 15_000, 384, seed=0))
    data = load_dataset(work / "data").arrays
    print(f"corpus written and memory-mapped: {time.perf_counter() - t0:6.2f} s")

    t0 = time.perf_counter()
    index_dir = work / "indexes" / "demo-flat"
    SourceIndex.build(data["source_embeddings"]).save(index_dir)
    print(f"index built and saved:           {time.perf_counter() - t0:6.2f} s  ({index_dir})")

    experiments = [
        {"random_seed": 1, "n_neg": 12, "tier_proportions": [3, 4, 3, 2]},
        {"random_seed": 2, "n_neg": 12, "tier_proportions": [3, 4, 3, 2]},
        {"random_seed": 1, "n_neg": 8, "tier_proportions": [1, 2, 4, 1]},
    ]
    for i, exp in enumerate(experiments, 1):
        t0 = time.perf_counter()
        miner = NegativeMiner(**data, **exp, adjacent_k=3, index=index_dir)
        res = miner.mine_all_negatives()
        miner.save(work / f"run{i}", res)
        tiers = {k: v["count"] for k, v in miner.last_stats["tiers"].items()}
        print(f"experiment {i} {exp}: {time.perf_counter() - t0:6.2f} s, tier counts {tiers}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
