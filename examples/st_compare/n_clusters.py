"""How many k-means clusters: tier-1/2 pool sizes, shortfalls and tier-3 cost per cluster size.

For a few corpus sizes S (synthetic clustered corpora from :mod:`negmine.synth`,
d = 384, generated with one true cluster per 50 sources, which k-means does not
know) and several numbers of k-means clusters C = S / spc, it clusters the
sources with :func:`negmine.clustering.cluster_sources` and mines 12 negatives per
pair (default tiers), then reports:

* ``kmeans_s``: k-means time;
* ``t1_pool`` / ``t2_pool``: mean sources a pair's tier 1 / tier 2 draw from (its
  cluster minus itself; its three adjacent clusters);
* ``t12_short``: tier-1 and tier-2 slots that moved to a fallback tier;
* ``t1_cos``: mean cosine of the tier-1 negatives to their question (how hard they are);
* ``exact_s``: exact tier-3 search time;
* ``probe_s`` / ``recall``: tier-3 search over the 8 nearest clusters
  (``nprobe=8``) and its recall against exact on 300 queries.

    python examples/st_compare/n_clusters.py --sizes 4000,16000,64000 --json /tmp/nc.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from negmine.clustering import cluster_sources, pair_clusters
from negmine.miner import NegativeMiner
from negmine.synth import make_corpus


def pools(cen: np.ndarray, scl: np.ndarray, pcl: np.ndarray, k: int = 3) -> tuple[float, float]:
    sizes = np.bincount(scl, minlength=cen.shape[0])
    sim = cen @ cen.T
    np.fill_diagonal(sim, -np.inf)
    adj = np.argsort(-sim, axis=1)[:, : min(k, cen.shape[0] - 1)]
    return float(np.mean(sizes[pcl] - 1)), float(np.mean(sizes[adj].sum(axis=1)[pcl]))


def one(corpus: dict, spc: int, seed: int) -> dict:
    src = corpus["source_embeddings"]
    n_c = max(2, len(src) // spc)
    t0 = time.perf_counter()
    cl = cluster_sources(src, n_c, seed=seed)
    km = time.perf_counter() - t0
    pcl = pair_clusters(corpus["pair_indices"], cl.source_cluster_ids)
    arrays = dict(corpus, centroid_embeddings=cl.centroid_embeddings,
                  source_cluster_ids=cl.source_cluster_ids, pair_cluster_ids=pcl)  # fmt: skip
    row = {"S": len(src), "spc": spc, "C": int(cl.info["n_clusters"]), "kmeans_s": round(km, 2)}
    t1, t2 = pools(cl.centroid_embeddings, cl.source_cluster_ids, pcl)
    row.update(t1_pool=round(t1, 1), t2_pool=round(t2, 1))
    exact = NegativeMiner(**arrays, n_neg=12, validate=False)
    exact.mine_arrays()
    st = exact.last_stats
    row["t12_short"] = int(st["shortfalls"]["tier1"] + st["shortfalls"]["tier2"])
    row["t1_cos"] = round(st["tiers"]["1"]["mean_cosine"], 3)
    row["exact_s"] = round(st["timings_seconds"]["tier3_search"], 3)
    if row["C"] > 9:
        probe = NegativeMiner(**arrays, n_neg=12, nprobe=8, recall_sample=300, validate=False)
        probe.mine_arrays()
        row["probe_s"] = round(probe.last_stats["timings_seconds"]["tier3_search"], 3)
        row["recall"] = round(probe.last_stats["tier3_recall"]["recall"], 4)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4000,16000,64000")
    ap.add_argument("--spc", default="16,32,64,128,256", help="sources per cluster to try")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    cols = ["S", "spc", "C", "kmeans_s", "t1_pool", "t2_pool", "t12_short", "t1_cos", "exact_s",
            "probe_s", "recall"]  # fmt: skip
    print("".join(f"{c:>10}" for c in cols))
    for s in (int(x) for x in args.sizes.split(",")):
        corpus = make_corpus(s, max(2, s // 50), s // 2, 384, seed=args.seed)
        for spc in (int(x) for x in args.spc.split(",")):
            r = one(corpus, spc, args.seed)
            rows.append(r)
            print("".join(f"{r.get(c, '-')!s:>10}" for c in cols), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
