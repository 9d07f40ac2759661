"""Which cluster-list storage keeps tier-3 recall on real embeddings.

    pip install -e ".[embed]"
    python examples/real_corpus/storages.py --out /tmp/probe-depth

Takes the packages corpus of ``probe_depth.py`` (the embeddings are cached in
``--out/emb/``, so a second run does not embed again), clusters the passages
with spherical k-means for about 1000 and 300 passages per cluster, and for
each clustering:

1. tunes float32 cluster lists (``clusters``) to tier-3 recall@3 >= 0.95 on
   every tier-3 query, which fixes ``nprobe``;
2. mines at that ``nprobe`` with 8-bit lists (``clusters,fast``: integer
   products, exact re-rank) at re-rank depths 1, 2 and 4, and with reduced
   lists (``clusters,PCA``: the fewest dims keeping 80 % of the energy) at 8,
   16 and 32, and prints each one's recall@3 against exact search.

The corpus is small (30,000 passages), so times are not the point: whether a
cheaper candidate pass loses recall on real embeddings is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_depth import real_corpus
from run import _kmeans

from negmine import NegativeMiner, SourceIndex

#: Passages per cluster of the clusterings measured.
PER_CLUSTER = (1000, 300)
#: Storages compared at the float32 lists' nprobe, with their re-rank depths.
STORAGES = {"clusters,fast": (1, 2, 4), "clusters,PCA": (8, 16, 32)}
T3 = {"n_neg": 3, "tier_proportions": [0, 0, 3, 0], "adjacent_k": 1, "seed": 0}


def _recall(arrays: dict, index: SourceIndex, **settings) -> float:
    """Tier-3 recall@3 of one run on every tier-3 query."""
    m = NegativeMiner(**arrays, index=index, recall_sample=10**9, **settings, **T3)
    m.mine_arrays()
    return float(m.last_stats["tier3_recall"]["recall"])


def clustered(
    src: np.ndarray, qry: np.ndarray, pairs: np.ndarray, n_c: int, seed: int
) -> dict[str, np.ndarray]:
    """The miner's six arrays, the passages clustered by spherical k-means into ``n_c``."""
    cents, scl = _kmeans(src, n_c, seed)
    return {
        "source_embeddings": src,
        "question_embeddings": qry,
        "pair_indices": pairs,
        "pair_cluster_ids": scl[pairs[:, 1]],
        "source_cluster_ids": scl,
        "centroid_embeddings": cents,
    }


def compare(src: np.ndarray, qry: np.ndarray, pairs: np.ndarray, n_c: int, seed: int) -> None:
    """Print the recall of each storage at the nprobe float32 lists need for 0.95."""
    arrays = clustered(src, qry, pairs, n_c, seed)
    scl, cents = arrays["source_cluster_ids"], arrays["centroid_embeddings"]

    def build(spec: str) -> SourceIndex:
        return SourceIndex.build(src, spec, source_cluster_ids=scl, centroid_embeddings=cents)

    tuned = NegativeMiner(**arrays, index=build("clusters"), target_recall=0.95,
                          recall_sample=10**9, **T3).tuning  # fmt: skip
    nprobe = tuned["settings"]["nprobe"]
    print(f"C = {n_c}: float32 lists reach recall@3 {tuned['recall']:.4f} at nprobe {nprobe}")
    for spec, depths in STORAGES.items():
        index = build(spec)
        red = index.reduction
        what = f" ({red['dims']} dims, {red['energy']:.0%} of the energy)" if red else ""
        got = ", ".join(f"rerank {r}: {_recall(arrays, index, nprobe=nprobe, rerank=r):.4f}"
                        for r in depths)  # fmt: skip
        print(f"  {spec}{what} at nprobe {nprobe}: {got}")


def main(argv: list[str] | None = None, each: Callable[..., None] = compare,
         doc: str = __doc__) -> int:  # fmt: skip
    """Cluster the real corpus at each size of :data:`PER_CLUSTER` and call ``each``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (embeddings cache)")
    ap.add_argument("--seed", type=int, default=0, help="k-means seed")
    args = ap.parse_args(argv)
    src, qry, pairs = real_corpus(args.out)
    for per in PER_CLUSTER:
        each(src, qry, pairs, max(2, round(len(src) / per)), args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
