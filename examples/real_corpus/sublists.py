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

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from storages import T3, clustered, main

from negmine import NegativeMiner, SourceIndex
from negmine.bench_floor import scanned_per_query


def compare(src: np.ndarray, qry: np.ndarray, pairs: np.ndarray, n_c: int, seed: int) -> None:
    """Print each storage's tuned settings, recall and sources scanned per query."""
    arrays = clustered(src, qry, pairs, n_c, seed)
    scl, cents = arrays["source_cluster_ids"], arrays["centroid_embeddings"]
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


if __name__ == "__main__":
    raise SystemExit(main(each=compare, doc=__doc__))
