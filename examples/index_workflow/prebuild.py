"""Step 1: write a corpus as a data directory and prebuild its source indexes.

    python examples/index_workflow/prebuild.py WORK_DIR [--sources 200000]

Writes WORK_DIR/data (a generated clustered corpus, .npy files) and builds two
indexes into the store WORK_DIR/indexes/: ``flat`` (exact) and ``clusters``
(inverted lists that are the corpus's own clusters, for approximate tier 3),
printing the time each took. Run ``experiments.py WORK_DIR`` afterwards, as
often as you like: it never rebuilds them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from negmine import SourceIndex
from negmine.io.datasets import load_dataset, save_dataset
from negmine.synth import make_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--sources", type=int, default=200_000)
    ap.add_argument("--clusters", type=int, default=400)
    ap.add_argument("--pairs", type=int, default=100_000)
    args = ap.parse_args()

    t0 = time.perf_counter()
    corpus = make_corpus(args.sources, args.clusters, args.pairs, 384, seed=0)
    save_dataset(args.work / "data", corpus)
    print(f"corpus generated and saved      {time.perf_counter() - t0:7.2f} s")

    data = load_dataset(args.work / "data").arrays  # memory-mapped
    for name, spec in (("flat", "flat"), ("clusters", "clusters")):
        t0 = time.perf_counter()
        index = SourceIndex.build(
            data["source_embeddings"],
            spec,
            source_cluster_ids=data["source_cluster_ids"],
            centroid_embeddings=data["centroid_embeddings"],
        )
        where = index.save(args.work / "indexes" / name, overwrite=True)
        mib = index.manifest["index_bytes"] / 2**20
        print(f"index {name:<9} built and saved {time.perf_counter() - t0:7.2f} s"
              f"  ({where}, {index.manifest['factory']}, {mib:.0f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
