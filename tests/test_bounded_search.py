"""Widening searches stop where a wider search cannot help, and stay within a memory cap."""

from __future__ import annotations

import faiss
import numpy as np
from reference import small_corpus, unit

import negmine.search.common as common
from negmine import mine_negatives
from negmine.layout import ClusterLayout, PositiveSets, adjacent_clusters
from negmine.search.overfetch import overfetch_outside_cluster


def _setup(corpus):
    n_c = len(corpus["centroid_embeddings"])
    adj = adjacent_clusters(corpus["centroid_embeddings"], 2)
    layout = ClusterLayout.build(corpus["source_cluster_ids"], n_c, adj)
    pos = PositiveSets.from_pairs(corpus["pair_indices"], len(corpus["question_embeddings"]))
    return layout, pos


def _ivf(src: np.ndarray, nlist: int, nprobe: int):
    q = faiss.IndexFlatIP(src.shape[1])
    index = faiss.IndexIVFFlat(q, src.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(src)
    index.add(src)
    index.nprobe = nprobe
    return index


def test_overfetch_stops_when_the_index_has_nothing_more_to_give():
    """At nprobe 1 a query reaches one list: once a search returns fewer hits
    than asked, asking for more is pointless (it used to widen up to k = S)."""
    corpus = small_corpus(n_sources=2000, n_clusters=8, n_questions=200, seed=1)
    layout, pos = _setup(corpus)
    src = unit(corpus["source_embeddings"]).astype(np.float32)
    qv = unit(corpus["question_embeddings"]).astype(np.float32)
    index = _ivf(src, 16, 1)
    asked = []

    def search(x, k):
        asked.append(k)
        return index.search(x, k)

    m = len(qv)
    rows, cl = np.arange(m), corpus["pair_cluster_ids"][:m]
    _, ids = overfetch_outside_cluster(search, len(src), qv, rows, cl, np.arange(m), layout,
                                       pos, 40)  # fmt: skip
    # One round of one block: no row was searched again.
    assert len(asked) == 1
    # What was found is what the reached list holds outside the cluster, best first.
    _, hi = index.search(qv, asked[0])
    for r in range(m):
        ok = (hi[r] >= 0) & (layout.source_cluster[np.maximum(hi[r], 0)] != cl[r])
        ok &= ~np.isin(hi[r], pos.sources[pos.offsets[r] : pos.offsets[r + 1]])
        want = hi[r][ok][:40]
        assert list(ids[r][ids[r] >= 0]) == list(want)


def test_depth_is_capped_and_the_fallback_fills_the_rest(monkeypatch):
    """With a tiny result budget no search asks for more than the cap; rows
    the filters leave short are filled by the fallback tiers and counted."""
    monkeypatch.setattr(common, "RESULT_BYTES", 12 * common.QUERY_BLOCK * 24)  # cap: k <= 24
    assert common.max_depth(10**6) == 24
    corpus = small_corpus(n_sources=1500, n_clusters=6, n_questions=150, seed=2)
    kw = {"n_neg": 8, "tier_proportions": [2, 2, 2, 2], "adjacent_k": 2,
          "tier3_rank_window": (30, 40)}  # fmt: skip
    from negmine import NegativeMiner

    miner = NegativeMiner(**corpus, **kw)
    backend = miner.plan.backend
    asked = []
    real = backend.search

    def search(*args, **kwargs):
        asked.append(args[4])
        return real(*args, **kwargs)

    backend.search = search
    _, tiers, _, stats = miner.mine_arrays()
    assert asked and max(asked) <= 24
    # Ranks 30..39 need k >= 40 > cap: no tier-3 negative at all, all by fallback.
    assert not (tiers == 3).any()
    n_pairs = len(corpus["pair_indices"])
    assert stats["tiers"]["3"]["fallback"] == 2 * n_pairs
    assert stats["filters"]["tier3_rank_window"]["shortfall"] == 2 * n_pairs
    # The uncapped run fills tier 3 from those ranks.
    monkeypatch.undo()
    full = mine_negatives(**corpus, **kw)
    assert (full["negative_tiers"].numpy() == 3).sum() == 2 * n_pairs
