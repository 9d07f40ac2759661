"""Whether sub-lists scan fewer sources than whole clusters on real embeddings.

    pip install -e ".[embed]"
    python examples/real_corpus/sublists.py --out /tmp/probe-depth

Takes the packages corpus of ``probe_depth.py`` (embeddings cached in
``--out/emb/``), clusters the passages with spherical k-means for about 1000
and 300 passages per cluster, and for each clustering tunes 8-bit lists to
tier-3 recall@3 >= 0.95 on every tier-3 query: whole clusters
(``clusters,SQ8``) and each cluster split in sub-lists of an eighth and of
half its mean size (``clusters,SQ8,sub<n>``; ``clusters,fast`` takes 512 at
any size). For each it prints the settings found, the recall, and the
sources a tier-3 query scans at them (``negmine.bench_floor``): what the
candidate products cost, whatever the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_depth import real_corpus
from run import _kmeans

from negmine import NegativeMiner, SourceIndex
from negmine.bench_floor import scanned_per_query

#: Passages per cluster of the clusterings measured.
PER_CLUSTER = (1000, 300)
T3 = {"n_neg": 3, "tier_proportions": [0, 0, 3, 0], "adjacent_k": 1, "seed": 0}


def compare(src: np.ndarray, qry: np.ndarray, pairs: np.ndarray, n_c: int, seed: int) -> None:
    """Print each storage's tuned settings, recall and sources scanned per query."""
    cents, scl = _kmeans(src, n_c, seed)
    arrays = {
        "source_embeddings": src,
        "question_embeddings": qry,
        "pair_indices": pairs,
        "pair_cluster_ids": scl[pairs[:, 1]],
        "source_cluster_ids": scl,
        "centroid_embeddings": cents,
    }
    mean = len(src) / n_c
    specs = ["clusters,SQ8"] + [f"clusters,SQ8,sub{max(8, round(mean / f))}" for f in (8, 2)]
    print(f"C = {n_c} (mean cluster {mean:.0f} passages):")
    for spec in specs:
        index = SourceIndex.build(src, spec, source_cluster_ids=scl, centroid_embeddings=cents)
        m = NegativeMiner(**arrays, index=index, target_recall=0.95, recall_sample=10**9, **T3)
        tuned = m.tuning
        settings = tuned["settings"]
        lists = index.sub_list_count or n_c
        scanned = scanned_per_query(m.plan, settings["nprobe"], sample=10**9)
        print(f"  {spec:24s} {lists:5d} lists: nprobe {settings['nprobe']:4d}, rerank "
              f"{settings['rerank']}, recall@3 {tuned['recall']:.4f}, "
              f"{scanned:8,.0f} sources scanned per query")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (embeddings cache)")
    ap.add_argument("--seed", type=int, default=0, help="k-means seed")
    args = ap.parse_args(argv)
    src, qry, pairs = real_corpus(args.out)
    for per in PER_CLUSTER:
        compare(src, qry, pairs, max(2, round(len(src) / per)), args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
