"""Candidate filters, the tier-3 rank window and the run statistics, against
brute-force references and hand-built corpora."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference import (
    CANDIDATE_FILTERS,
    check_rows,
    filtered_tier3_reference,
    positives_of,
    small_corpus,
    unit,
)

from negmine import MiningConfig, NegativeMiner, SourceIndex, mine_negatives
from negmine.filters import MIN_SLACK
from negmine.io import load_outputs
from negmine.stats import HIST_EDGES, SUMMARY_KEYS

ALL_FILTERS = (*CANDIDATE_FILTERS, "tier3_rank_window")
# Tier-3 kernels: exact over cluster-sorted sources, exact over a flat index (source
# order), the cluster probe over every other cluster (exact), and the generic
# over-fetch path through a non-flat index that still scans everything, reduced
# (PCA) cluster lists, 8-bit cluster lists (integer products) and 8-bit sub-lists
# probed everywhere and re-ranked at full depth.
KERNELS = ["exact", "flat_index", "probe_all", "ivf1", "reduced_all", "sq8_all", "sub_all"]


def _kernel_args(kind: str, corpus: dict) -> dict:
    if kind == "exact":
        return {}
    if kind == "flat_index":
        return {"index": SourceIndex.build(corpus["source_embeddings"])}
    if kind == "probe_all":
        return {"nprobe": len(corpus["centroid_embeddings"]) - 1}
    if kind in ("reduced_all", "sq8_all", "sub_all"):
        n, d = corpus["source_embeddings"].shape
        spec = {"reduced_all": f"clusters,PCA{max(1, d // 2)}", "sq8_all": "clusters,SQ8",
                "sub_all": "clusters,SQ8,sub20"}[kind]  # fmt: skip
        index = SourceIndex.build(
            corpus["source_embeddings"],
            spec,
            source_cluster_ids=corpus["source_cluster_ids"],
            centroid_embeddings=corpus["centroid_embeddings"],
        )
        every = index.sub_list_count or len(corpus["centroid_embeddings"]) - 1
        return {"index": index, "nprobe": every, "rerank": n}
    return {"index": SourceIndex.build(corpus["source_embeddings"], "IVF1,Flat")}


def _tier3_rows(res: dict) -> list[list[int]]:
    ids = res["hard_negatives"].numpy()
    tiers = res["negative_tiers"].numpy()
    return [list(ids[r][tiers[r] == 3]) for r in range(len(ids))]


def _sum(ref: list[dict], key: str, name: str) -> int:
    return sum(r[key][name] for r in ref)


# ------------------------------------------------------------------ tier 3 vs brute force


SCORE_CASES = [
    {"max_score": 0.55},
    {"relative_margin": 0.1},
    {"absolute_margin": 0.05},
    {"max_score": 0.7, "relative_margin": 0.3, "absolute_margin": 0.2},
    {"max_score": -0.3},  # leaves some questions short: the fallback path
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", SCORE_CASES, ids=lambda c: ",".join(c))
def test_score_filters_match_brute_force(kernel, case):
    corpus = small_corpus(n_sources=400, n_clusters=8, n_questions=100, seed=31)
    ref = filtered_tier3_reference(corpus, 4, **case)
    assert min(r["margin"] for r in ref) > 2e-6  # no score sits on a threshold
    miner = NegativeMiner(
        **corpus, n_neg=10, tier_proportions=[2, 2, 4, 2], **case, **_kernel_args(kernel, corpus)
    )
    res = miner.mine_all_negatives()
    got = _tier3_rows(res)
    for r, want in enumerate(ref):
        assert got[r] == want["chosen"], f"row {r}"
    stats = miner.last_stats
    assert set(stats["filters"]) == set(case)
    for name in case:
        f = stats["filters"][name]
        assert f["value"] == case[name]
        assert f["removed"] == {"1": 0, "2": 0, "3": _sum(ref, "removed", name), "4": 0}
        assert f["shortfall"] == _sum(ref, "short", name)
    short3 = sum(4 - len(r["chosen"]) for r in ref)
    assert stats["tiers"]["3"]["fallback"] == short3
    assert stats["tiers"]["3"]["count"] == 4 * len(ref) - short3
    if case == {"max_score": -0.3}:
        assert short3 > 0  # the case does exercise the fallback
    check_rows(res, corpus, adjacent_k=3)


@pytest.mark.parametrize("kernel", KERNELS)
def test_near_duplicate_tier3_matches_brute_force(kernel):
    corpus = _with_near_copies(small_corpus(n_sources=400, n_clusters=8, n_questions=100, seed=32))
    ref = filtered_tier3_reference(corpus, 4, near_duplicate_threshold=0.9)
    assert min(r["margin"] for r in ref) > 2e-6
    assert _sum(ref, "removed", "near_duplicate_threshold") > 20
    miner = NegativeMiner(
        **corpus,
        n_neg=10,
        tier_proportions=[2, 2, 4, 2],
        near_duplicate_threshold=0.9,
        **_kernel_args(kernel, corpus),
    )
    res = miner.mine_all_negatives()
    for r, (got, want) in enumerate(zip(_tier3_rows(res), ref, strict=True)):
        assert got == want["chosen"], f"row {r}"
    f = miner.last_stats["filters"]["near_duplicate_threshold"]
    assert f["removed"]["3"] == _sum(ref, "removed", "near_duplicate_threshold")


def _with_near_copies(corpus: dict, share: float = 0.5, seed: int = 0) -> dict:
    """Turn some sources into near copies of a positive (any cluster)."""
    rng = np.random.default_rng(seed)
    src = corpus["source_embeddings"].copy()
    pos = sorted({int(s) for s in corpus["pair_indices"][:, 1]})
    others = np.setdiff1d(np.arange(len(src)), pos)
    n_copies = min(int(share * len(pos)), len(others) // 3)
    take = rng.choice(others, size=n_copies, replace=False)
    for i, t in enumerate(take):
        p = pos[i % len(pos)]
        src[t] = src[p] + 0.05 * np.linalg.norm(src[p]) * rng.standard_normal(src.shape[1]) / 4
    return dict(corpus, source_embeddings=src.astype(np.float32))


# ------------------------------------------------------------------ near-duplicates, every tier


def _explicit(cos_q, clusters, dups=None, d=128, n_questions=1):
    """Sources with given cosines to question 0 (direction e0), each on its own
    orthogonal direction, so two of them have cosine ``a_i * a_j``; ``dups``
    maps a source to the one it nearly copies. Three clusters: 1 is adjacent
    to 0, 2 is far from both."""
    n = len(cos_q)
    assert n + 4 <= d
    src = np.zeros((n, d))
    for i, a in enumerate(cos_q):
        src[i, 0] = a
        src[i, i + 1] = np.sqrt(1 - a * a)
    for i, j in (dups or {}).items():
        src[i] = src[j] + (0.02 + 0.0005 * i) * np.eye(d)[i + 1]
    cent = np.zeros((3, d))
    cent[0, d - 3] = 1
    cent[1, d - 3], cent[1, d - 2] = 0.9, np.sqrt(1 - 0.81)
    cent[2, d - 1] = 1
    qe = np.zeros((n_questions, d))
    qe[:, 0] = 1
    return (
        src.astype(np.float32),
        cent.astype(np.float32),
        qe.astype(np.float32),
        np.array(clusters),
    )


def test_near_duplicates_removed_exactly_in_every_tier():
    """Rows that must hold every acceptable source hold exactly the sources that
    are neither positives nor above the threshold, whatever their tier."""
    rng = np.random.default_rng(5)
    clusters = [0] * 10 + [1] * 10 + [2] * 10
    cos_q = rng.uniform(-0.6, 0.6, 30)
    cos_q[0] = 0.9  # the positive
    dups = {2: 0, 5: 0, 13: 0, 17: 0, 24: 0, 29: 0}  # near copies of it in every cluster
    src, cent, qe, scl = _explicit(cos_q, clusters, dups)
    pairs = np.array([[0, 0]])
    near = (unit(src) @ unit(src)[0]) > 0.95
    assert sorted(np.flatnonzero(near)) == [0, 2, 5, 13, 17, 24, 29]
    ok = sorted(int(x) for x in np.flatnonzero(~near))
    n_neg = len(ok)  # 23: every acceptable source
    for props in ([7, 8, 0, 8], [3, 3, 3, 14], [9, 0, 5, 9]):
        miner = NegativeMiner(
            src,
            qe,
            cent,
            pairs,
            np.array([0]),
            scl,
            n_neg=n_neg,
            tier_proportions=props,
            adjacent_k=1,
            near_duplicate_threshold=0.95,
        )
        res = miner.mine_all_negatives()
        ids = res["hard_negatives"].numpy()[0]
        assert sorted(ids.tolist()) == ok, props
        f = miner.last_stats["filters"]["near_duplicate_threshold"]
        assert sum(f["removed"].values()) >= 1
    # One more negative than acceptable sources: refused, naming the filter.
    with pytest.raises(
        ValueError,
        match=r"`near_duplicate_threshold` must leave n_neg = 24.*"
        r"question 0 only 23",
    ):
        NegativeMiner(
            src,
            qe,
            cent,
            pairs,
            np.array([0]),
            scl,
            n_neg=n_neg + 1,
            tier_proportions=[8, 8, 0, 8],
            adjacent_k=1,
            near_duplicate_threshold=0.95,
        ).mine_all_negatives()


def test_near_duplicates_never_in_output_on_random_corpus():
    corpus = _with_near_copies(
        small_corpus(n_sources=300, n_clusters=6, n_questions=200, seed=9), share=1.0, seed=3
    )
    thr = 0.9
    res = mine_negatives(
        **corpus,
        n_neg=12,
        tier_proportions=[3, 3, 3, 3],
        adjacent_k=2,
        near_duplicate_threshold=thr,
    )
    src = unit(corpus["source_embeddings"])
    pos = positives_of(corpus["pair_indices"])
    ids = res["hard_negatives"].numpy()
    worst = max(
        float((src[ids[r]] @ src[sorted(pos[int(q)])].T).max())
        for r, q in enumerate(corpus["pair_indices"][:, 0])
    )
    assert worst <= thr + 1e-6
    check_rows(res, corpus, adjacent_k=2)


def test_shortfall_accounting_of_sampled_tiers():
    """Own cluster: the positive, 3 near copies of it and 2 other sources; tier 1
    asks for 4, finds 2, passes 2 on because of the near copies."""
    cos_q = [0.8, 0, 0, 0, 0.3, 0.2, *np.linspace(0.5, -0.5, 12)]
    clusters = [0] * 6 + [1] * 6 + [2] * 6
    src, cent, qe, scl = _explicit(cos_q, clusters, {1: 0, 2: 0, 3: 0})
    args = (src, qe, cent, np.array([[0, 0]]), np.array([0]), scl)
    kw = {"n_neg": 8, "tier_proportions": [4, 2, 0, 2], "adjacent_k": 1}
    miner = NegativeMiner(*args, **kw, near_duplicate_threshold=0.95)
    res = miner.mine_all_negatives()
    ids = res["hard_negatives"].numpy()[0]
    tiers = res["negative_tiers"].numpy()[0]
    assert sorted(ids[tiers == 1]) == [4, 5]
    assert set(ids[tiers == 2]) <= set(range(6, 12)) and (tiers == 2).sum() == 4
    st = miner.last_stats
    assert {t: st["tiers"][t]["count"] for t in "1234"} == {"1": 2, "2": 4, "3": 0, "4": 2}
    assert {t: st["tiers"][t]["fallback"] for t in "1234"} == {"1": 2, "2": 0, "3": 0, "4": 0}
    f = st["filters"]["near_duplicate_threshold"]
    assert f == {"value": 0.95, "removed": {"1": 3, "2": 0, "3": 0, "4": 0}, "shortfall": 2}
    # Without the filter the near copies fill tier 1 and nothing falls back.
    plain = NegativeMiner(*args, **kw)
    plain.mine_all_negatives()
    assert plain.last_stats["tiers"]["1"]["fallback"] == 0
    assert plain.last_stats["filters"] == {}


TIER3_CASES = [
    # max_score leaves one eligible source; the window (2, 4) skips past it.
    (
        {"max_score": 0.375},
        {"max_score": 4, "tier3_rank_window": 1},
        {"max_score": 1, "tier3_rank_window": 1},
    ),
    # relative_margin's threshold (0.4) is above max_score's: it removes nothing
    # max_score did not; absolute_margin (0.3) takes the last one.
    (
        {"max_score": 0.375, "relative_margin": 0.5, "absolute_margin": 0.5},
        {"max_score": 4, "relative_margin": 0, "absolute_margin": 0, "tier3_rank_window": 0},
        {"max_score": 1, "relative_margin": 0, "absolute_margin": 1, "tier3_rank_window": 0},
    ),
]


@pytest.mark.parametrize(("case", "removed", "short"), TIER3_CASES)
def test_shortfall_accounting_of_tier3(case, removed, short):
    cos_q = [0.8, 0.1, 0.0, -0.1, *np.linspace(0.9, 0.35, 12)]
    clusters = [0] * 4 + [1] * 6 + [2] * 6
    src, cent, qe, scl = _explicit(cos_q, clusters)
    corpus = dict(
        source_embeddings=src,
        question_embeddings=qe,
        centroid_embeddings=cent,
        pair_indices=np.array([[0, 0]]),
        pair_cluster_ids=np.array([0]),
        source_cluster_ids=scl,
    )
    miner = NegativeMiner(
        **corpus,
        n_neg=8,
        tier_proportions=[2, 2, 2, 2],
        adjacent_k=1,
        tier3_rank_window=(2, 4),
        **case,
    )
    res = miner.mine_all_negatives()
    st = miner.last_stats
    assert (res["negative_tiers"].numpy() == 3).sum() == 0
    assert st["tiers"]["3"]["fallback"] == 2 and st["tiers"]["4"]["count"] == 4
    assert {n: f["removed"]["3"] for n, f in st["filters"].items()} == removed
    assert {n: f["shortfall"] for n, f in st["filters"].items()} == short
    ref = filtered_tier3_reference(corpus, 2, window=(2, 4), **case)[0]
    assert {n: ref["removed"][n] for n in removed} == removed
    assert {n: ref["short"][n] for n in short} == short


@pytest.mark.parametrize("kernel", KERNELS)
def test_search_goes_deeper_before_falling_back(kernel):
    """The first k candidates are all near copies of the positive: the rows are
    searched again with a larger k, and tier 3 is still full."""
    n_dup = 40
    cos_q = [0.9, 0.0, *[0.0] * n_dup, *np.linspace(0.7, -0.5, 30)]
    clusters = [0, 0] + [1] * 20 + [2] * 20 + [1] * 15 + [2] * 15
    dups = {2 + i: 0 for i in range(n_dup)}
    src, cent, qe, scl = _explicit(cos_q, clusters, dups)
    corpus = dict(
        source_embeddings=src,
        question_embeddings=qe,
        centroid_embeddings=cent,
        pair_indices=np.array([[0, 0]]),
        pair_cluster_ids=np.array([0]),
        source_cluster_ids=scl,
    )
    n3 = 3
    assert n_dup > n3 + max(MIN_SLACK, n3)  # more near copies than the first search returns
    miner = NegativeMiner(
        **corpus,
        n_neg=6,
        tier_proportions=[1, 1, n3, 1],
        adjacent_k=1,
        near_duplicate_threshold=0.95,
        **_kernel_args(kernel, corpus),
    )
    res = miner.mine_all_negatives()
    assert _tier3_rows(res)[0] == [42, 43, 44]  # the three best ordinary sources
    st = miner.last_stats
    assert st["tiers"]["3"]["fallback"] == 0
    assert st["filters"]["near_duplicate_threshold"]["removed"]["3"] == n3
    assert st["filters"]["near_duplicate_threshold"]["shortfall"] == 0


# ------------------------------------------------------------------ rank window


@pytest.mark.parametrize("kernel", ["exact", "probe_all", "ivf1", "reduced_all", "sq8_all"])
@pytest.mark.parametrize(
    "case",
    [{}, {"max_score": 0.6}, {"near_duplicate_threshold": 0.9, "relative_margin": 0.05}],
    ids=["window", "window+max_score", "window+near_dup+margin"],
)
def test_rank_window_top_is_brute_force_ranks(kernel, case):
    corpus = _with_near_copies(small_corpus(n_sources=400, n_clusters=8, n_questions=100, seed=33))
    window = (3, 9)
    ref = filtered_tier3_reference(corpus, 3, window=window, **case)
    assert min(r["margin"] for r in ref) > 2e-6
    miner = NegativeMiner(
        **corpus,
        n_neg=9,
        tier_proportions=[2, 2, 3, 2],
        tier3_rank_window=window,
        **case,
        **_kernel_args(kernel, corpus),
    )
    res = miner.mine_all_negatives()
    for r, (got, want) in enumerate(zip(_tier3_rows(res), ref, strict=True)):
        assert got == want["eligible"][3:6], f"row {r}"
    f = miner.last_stats["filters"]["tier3_rank_window"]
    assert f["value"] == [3, 9]
    assert f["removed"]["3"] == _sum(ref, "removed", "tier3_rank_window") == 3 * len(ref)


def test_rank_window_random_draws_from_window():
    corpus = small_corpus(n_sources=500, n_clusters=8, n_questions=600, seed=34)
    window, n3 = (2, 12), 4
    kw = dict(
        n_neg=10,
        tier_proportions=[2, 2, n3, 2],
        tier3_rank_window=window,
        tier3_sampling="random",
        near_duplicate_threshold=0.97,
    )
    ref = filtered_tier3_reference(corpus, n3, window=window, near_duplicate_threshold=0.97)
    a = mine_negatives(**corpus, **kw, seed=1)
    rel_ranks = []
    for r, (got, want) in enumerate(zip(_tier3_rows(a), ref, strict=True)):
        win = want["eligible"][window[0] : window[1]]
        assert len(got) == n3 and set(got) <= set(win), f"row {r}"
        ranks = [win.index(x) for x in got]
        assert ranks == sorted(ranks)  # best first
        rel_ranks += ranks
    # Uniform over the window's ranks (chi-square, 9 dof, p ~ 0.001).
    counts = np.bincount(rel_ranks, minlength=10)
    expected = len(rel_ranks) / 10
    assert ((counts - expected) ** 2 / expected).sum() < 28, counts
    # Deterministic by seed, independent of batch_size, different under another seed.
    b = mine_negatives(**corpus, **kw, seed=1, batch_size=7)
    assert torch.equal(a["hard_negatives"], b["hard_negatives"])
    c = mine_negatives(**corpus, **kw, seed=2)
    t3a, t3c = _tier3_rows(a), _tier3_rows(c)
    assert sum(x != y for x, y in zip(t3a, t3c, strict=True)) > len(t3a) // 2


def _probed_clusters(corpus: dict, q: int, c: int, nprobe: int) -> set[int]:
    """The ``nprobe`` clusters other than ``c`` whose centroids are nearest question ``q``."""
    sims = unit(corpus["centroid_embeddings"]) @ unit(corpus["question_embeddings"])[q]
    ranked = [int(j) for j in np.argsort(-sims, kind="stable") if j != c]
    return set(ranked[:nprobe])


@pytest.mark.parametrize("nprobe", [1, 7])
def test_recall_of_filtered_search_is_measured_on_filtered_results(nprobe):
    """The reported recall equals the one counted by hand from brute force: per
    distinct (pair cluster, question), the filtered eligible sources in the probed
    clusters against all of them, over the tier-3 slots or the whole window."""
    corpus = small_corpus(n_sources=400, n_clusters=8, n_questions=100, seed=35)
    scl = corpus["source_cluster_ids"]
    for window, extra in (
        ((0, 2), {}),
        ((1, 7), {"tier3_rank_window": (1, 7), "tier3_sampling": "random"}),
    ):
        miner = NegativeMiner(
            **corpus,
            n_neg=8,
            tier_proportions=[2, 2, 2, 2],
            nprobe=nprobe,
            recall_sample=10_000,
            max_score=0.6,
            **extra,
        )
        miner.mine_all_negatives()
        rec = miner.last_stats["tier3_recall"]
        ref = filtered_tier3_reference(corpus, 2, max_score=0.6, window=window)
        shares = {}
        for (q, _), c, r in zip(
            corpus["pair_indices"], corpus["pair_cluster_ids"], ref, strict=True
        ):
            probed = _probed_clusters(corpus, int(q), int(c), nprobe)
            exact = r["eligible"][window[0] : window[1]]
            approx = [x for x in r["eligible"] if scl[x] in probed][window[0] : window[1]]
            if exact:
                shares[(int(c), int(q))] = len(set(exact) & set(approx)) / len(exact)
        want = float(np.mean(list(shares.values())))
        assert rec["k"] == window[1] - window[0]
        assert rec["recall"] == round(want, 4), (rec, want)
        assert (want == 1.0) == (nprobe == 7)


# ------------------------------------------------------------------ determinism, filters off


CASES = {
    "a": (dict(seed=7), dict(n_neg=12, tier_proportions=[3, 4, 3, 2], adjacent_k=3)),
    "b": (
        dict(n_questions=1500, n_sources=900, seed=4),
        dict(n_neg=8, seed=3, batch_size=1000),
    ),
    "c": (
        dict(n_sources=500, n_clusters=10, n_questions=200, seed=12),
        dict(n_neg=10, tier_proportions=[1, 2, 5, 2], nprobe=3),
    ),
    "d": (
        dict(n_sources=60, n_clusters=6, n_questions=50, seed=13),
        dict(n_neg=30, tier_proportions=[10, 10, 5, 5], adjacent_k=1),
    ),
}


# sha256 over name, dtype, shape and bytes of hard_negatives, negative_tiers,
# negative_scores and positive_scores of each case mined without filters.
FILTERS_OFF_DIGESTS = {
    "a": "ac6223f53b58ffece4e8b9fa379a5a08310c2982045c86ed743f749fb359c970",
    "b": "b3e673287d8c01fadcd2e1eef2a14af8f8e7b07f307ce328fc49383ed0782600",
    "c": "176150164b46f141db6184bf4a53f7d32b74cbe69673073ab552c9e417689926",
    "d": "9855dc9b1be0823c9060f49ad4fd8dcb82d79810cd80f4ced1b7b633aedfec18",
}


def _digest(res: dict) -> str:
    h = hashlib.sha256()
    for name in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
        a = res[name].numpy()
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(CASES))
def test_filters_off_output_is_unchanged(name):
    """Mining without filters gives recorded bytes (so any change to the unfiltered
    path shows), and idle filters (that remove nothing) give the same bytes.

    Assumption: the digests were recorded on x86-64 with the OpenBLAS of numpy's
    wheel and the faiss-cpu wheel (the same with one and two threads); another CPU
    family or BLAS may flip a float32 near-tie and change a digest, which is
    why the digest check is skipped elsewhere (the idle-filter check still runs).
    """
    corpus_kw, mine_kw = CASES[name]
    corpus = small_corpus(**corpus_kw)
    res = mine_negatives(**corpus, **mine_kw)
    # Filters that remove nothing take the filtered path and change nothing either.
    n3 = MiningConfig(
        n_neg=mine_kw["n_neg"], tier_proportions=mine_kw.get("tier_proportions")
    ).tier_counts[2]
    idle = mine_negatives(
        **corpus, **mine_kw, max_score=1.0, near_duplicate_threshold=1.0, tier3_rank_window=(0, n3)
    )
    for key in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
        assert torch.equal(res[key], idle[key]), key
    if platform.machine() in ("x86_64", "AMD64"):
        assert _digest(res) == FILTERS_OFF_DIGESTS[name], f"{name}: the output bytes changed"


@pytest.mark.parametrize("batch_size", [1, 300])
def test_filtered_output_is_deterministic_and_independent_of_batch_size(batch_size):
    corpus = _with_near_copies(
        small_corpus(n_sources=300, n_clusters=6, n_questions=1500, seed=36), share=1.0
    )
    kw = dict(
        n_neg=9,
        tier_proportions=[3, 2, 2, 2],
        near_duplicate_threshold=0.9,
        relative_margin=0.05,
        tier3_rank_window=(1, 6),
        tier3_sampling="random",
    )
    base = NegativeMiner(**corpus, **kw, batch_size=100_000)
    a = base.mine_all_negatives()
    assert base.last_stats["filters"]["near_duplicate_threshold"]["removed"]["1"] > 0
    b = mine_negatives(**corpus, **kw, batch_size=batch_size)
    for key in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
        assert torch.equal(a[key], b[key]), key


def test_resumed_blocks_keep_filter_counts(tmp_path):
    from negmine.io.runs import Checkpoints

    corpus = _with_near_copies(small_corpus(n_sources=300, n_clusters=6, n_questions=200, seed=37))
    kw = dict(n_neg=8, tier_proportions=[2, 2, 2, 2], near_duplicate_threshold=0.9, max_score=0.6)
    first = NegativeMiner(**corpus, **kw)
    ids, tiers, _, stats = first.mine_arrays(Checkpoints(tmp_path, "k", resume=False))
    again = NegativeMiner(**corpus, **kw)
    ckpt = Checkpoints(tmp_path, "k", resume=True)
    ids2, tiers2, _, stats2 = again.mine_arrays(ckpt)
    assert ckpt.reused == 2 and ckpt.computed == 0
    assert np.array_equal(ids, ids2) and np.array_equal(tiers, tiers2)
    assert stats2["filters"] == stats["filters"] and stats2["tiers"] == stats["tiers"]
    assert stats2["positive_cosine"] == stats["positive_cosine"]


# ------------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    ("kw", "exc", "pattern"),
    [
        ({"max_score": 1.7}, ValueError, r"`max_score` must be in \[-1, 1\].*got 1\.7\. .*None"),
        ({"max_score": float("nan")}, ValueError, r"`max_score` must be in \[-1, 1\]"),
        ({"max_score": "0.5"}, TypeError, r"`max_score` must be a number"),
        ({"relative_margin": -0.1}, ValueError, r"`relative_margin` must be in \[0, 1\]"),
        ({"absolute_margin": 3}, ValueError, r"`absolute_margin` must be in \[0, 2\]"),
        ({"near_duplicate_threshold": True}, TypeError, r"`near_duplicate_threshold` must be"),
        (
            {"tier3_rank_window": (5, 6)},
            ValueError,
            r"`tier3_rank_window` must be \(lo, hi\).*hi - lo >= n3 = 3.*got \(5, 6\)\. "
            r"For example \(5, 8\)",
        ),
        ({"tier3_rank_window": (-1, 5)}, ValueError, r"`tier3_rank_window` must be"),
        ({"tier3_rank_window": 5}, TypeError, r"`tier3_rank_window` must be a pair"),
        ({"tier3_rank_window": (1.0, 5)}, TypeError, r"`tier3_rank_window` must be a pair"),
        ({"tier3_sampling": "best"}, ValueError, r"`tier3_sampling` must be 'top' or 'random'"),
        ({"tier3_sampling": "random"}, ValueError, r"tier3_rank_window=\(lo, hi\)"),
    ],
)
def test_bad_values_are_refused_clearly(kw, exc, pattern):
    corpus = small_corpus(n_sources=100, n_questions=20)
    with pytest.raises(exc, match=pattern):
        NegativeMiner(**corpus, n_neg=12, **kw)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "negmine", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from negmine.io.datasets import save_dataset

    d = tmp_path_factory.mktemp("filters") / "data"
    save_dataset(d, small_corpus(n_sources=300, n_clusters=6, n_questions=80, d=12, seed=21))
    return d


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--max-score", "1.7"], "`max_score` must be in [-1, 1]"),
        (["--max-score", "high"], "--max-score: invalid float value"),
        (["--relative-margin", "2"], "`relative_margin` must be in [0, 1]"),
        (["--tier3-rank-window", "5"], "--tier3-rank-window: expected two integers"),
        (["--tier3-rank-window", "1:2:3"], "--tier3-rank-window: expected two integers"),
        (["--tier3-rank-window", "9:2"], "`tier3_rank_window` must be (lo, hi)"),
        (["--tier3-sampling", "random"], "`tier3_sampling` must be 'top' unless"),
        (["--tier3-sampling", "best"], "--tier3-sampling: invalid choice"),
    ],
)
def test_cli_bad_values_one_line_exit_2(tmp_path, data_dir, args, pattern):
    proc = _cli("mine", str(data_dir), "--out", str(tmp_path / "o"), *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and pattern in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_filters_reach_the_manifest(tmp_path, data_dir):
    outs = []
    for window in (["2", "8"], ["2:8"]):
        out = tmp_path / f"o{len(outs)}"
        proc = _cli(
            "mine",
            str(data_dir),
            "--out",
            str(out),
            "--n-neg",
            "8",
            "--max-score",
            "0.8",
            "--near-duplicate-threshold",
            "0.95",
            "--relative-margin",
            "0.05",
            "--tier3-rank-window",
            *window,
            "--tier3-sampling",
            "random",
        )
        assert proc.returncode == 0, proc.stderr
        assert "filter max_score=0.8: removed" in proc.stdout
        outs.append(out)
    a, b = (load_outputs(o) for o in outs)
    assert np.array_equal(a["hard_negatives"], b["hard_negatives"])
    m = a["manifest"]
    assert m["config"]["tier3_rank_window"] == [2, 8]
    assert m["config"]["tier3_sampling"] == "random" and m["config"]["max_score"] == 0.8
    assert set(m["stats"]["filters"]) == {
        "max_score",
        "relative_margin",
        "near_duplicate_threshold",
        "tier3_rank_window",
    }
    assert _cli("validate", str(outs[0]), "--data", str(data_dir)).returncode == 0


# ------------------------------------------------------------------ statistics


def test_stats_match_numpy_recomputation(tmp_path):
    corpus = _with_near_copies(small_corpus(n_sources=400, n_clusters=8, n_questions=150, seed=38))
    miner = NegativeMiner(
        **corpus,
        n_neg=10,
        tier_proportions=[3, 2, 3, 2],
        near_duplicate_threshold=0.9,
        max_score=0.65,
    )
    res = miner.mine_all_negatives()
    miner.save(tmp_path / "o", res)
    stats = miner.last_stats
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["stats"] == json.loads(json.dumps(stats))

    pairs = corpus["pair_indices"]
    src, qry = unit(corpus["source_embeddings"]), unit(corpus["question_embeddings"])
    ids = res["hard_negatives"].numpy()
    tiers = res["negative_tiers"].numpy()
    scores = res["negative_scores"].numpy()
    to_pos = np.einsum("pd,pkd->pk", src[pairs[:, 1]], src[ids])
    pos = np.einsum("pd,pd->p", qry[pairs[:, 0]], src[pairs[:, 1]])

    loaded = load_outputs(tmp_path / "o")
    assert torch.equal(res["positive_scores"], torch.from_numpy(loaded["positive_scores"]))
    assert res["positive_scores"].dtype == torch.float32
    np.testing.assert_allclose(res["positive_scores"].numpy(), pos, atol=1e-5)

    def check_summary(summary, values, exact):
        assert list(summary) == list(SUMMARY_KEYS)
        v = np.asarray(values, dtype=np.float64)
        want = [v.mean(), v.min(), *np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95]), v.max()]
        np.testing.assert_allclose(list(summary.values()), want, atol=1e-12 if exact else 1e-5)

    def check_hist(hist, values, exact):
        assert hist["edges"] == HIST_EDGES.tolist() and len(hist["edges"]) == 41
        assert hist["edges"][0] == -1.0 and hist["edges"][-1] == 1.0
        want, _ = np.histogram(np.clip(values, -1, 1), bins=HIST_EDGES)
        assert len(hist["counts"]) == 40 and sum(hist["counts"]) == len(values)
        diff = np.abs(np.array(hist["counts"]) - want).sum()
        assert diff == 0 if exact else diff <= 2

    for t in range(1, 5):
        row = stats["tiers"][str(t)]
        assert set(row) == {
            "name",
            "requested",
            "count",
            "mean_cosine",
            "fallback",
            "cosine_question",
            "cosine_positive",
            "hist_question",
            "hist_positive",
        }
        sel = tiers == t
        assert row["count"] == sel.sum()
        check_summary(row["cosine_question"], scores[sel], exact=True)
        check_hist(row["hist_question"], scores[sel], exact=True)
        check_summary(row["cosine_positive"], to_pos[sel], exact=False)
        check_hist(row["hist_positive"], to_pos[sel], exact=False)
        assert row["mean_cosine"] == row["cosine_question"]["mean"]
    pc = stats["positive_cosine"]
    check_summary({k: pc[k] for k in SUMMARY_KEYS}, res["positive_scores"].numpy(), exact=True)
    check_hist(pc["hist"], res["positive_scores"].numpy(), exact=True)
    # Filters: removed and shortfall per tier; tier 3 against brute force.
    ref = filtered_tier3_reference(corpus, 3, max_score=0.65, near_duplicate_threshold=0.9)
    for name in ("max_score", "near_duplicate_threshold"):
        f = stats["filters"][name]
        assert set(f) == {"value", "removed", "shortfall"}
        assert set(f["removed"]) == {"1", "2", "3", "4"}
        assert f["removed"]["3"] == _sum(ref, "removed", name)
    assert stats["filters"]["max_score"]["removed"]["1"] == 0
    assert stats["filters"]["near_duplicate_threshold"]["removed"]["1"] > 0


def test_stats_of_empty_tiers_and_no_filters():
    corpus = small_corpus(n_sources=200, n_questions=30)
    miner = NegativeMiner(**corpus, n_neg=4, tier_proportions=[4, 0, 0, 0])
    miner.mine_all_negatives()
    st = miner.last_stats
    assert st["filters"] == {}
    assert st["tiers"]["3"]["cosine_question"] == dict.fromkeys(SUMMARY_KEYS)
    assert st["tiers"]["3"]["hist_positive"]["counts"] == [0] * 40
    assert st["tiers"]["3"]["mean_cosine"] is None and st["tiers"]["3"]["fallback"] == 0


def test_old_output_dirs_without_positive_scores_still_load(tmp_path, data_dir):
    out = tmp_path / "o"
    assert _cli("mine", str(data_dir), "--out", str(out), "--quiet").returncode == 0
    assert (out / "positive_scores.pt").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["tensor_files"]["positive_scores"]
    (out / "positive_scores.pt").unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    got = load_outputs(out)
    assert "positive_scores" not in got and got["hard_negatives"].shape[1] == 12
    assert _cli("validate", str(out), "--data", str(data_dir)).returncode == 0
    # A run of the same settings replaces it (its files are recognised as negmine's).
    proc = _cli("mine", str(data_dir), "--out", str(out), "--quiet", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (out / "positive_scores.pt").is_file()


def test_validator_knows_the_near_duplicate_rule():
    """Tier 4 widens into the adjacent cluster once the distant sources that are
    no near-duplicates run out: valid under the filter, a violation without it.
    A near-duplicate planted in a row is reported."""
    from negmine import validate_negatives

    rng = np.random.default_rng(5)
    cos_q = rng.uniform(-0.6, 0.6, 30)
    cos_q[0] = 0.9
    src, cent, qe, scl = _explicit(
        cos_q, [0] * 10 + [1] * 10 + [2] * 10, {2: 0, 5: 0, 13: 0, 17: 0, 24: 0, 29: 0}
    )
    pairs, pcl = np.array([[0, 0]]), np.array([0])
    res = mine_negatives(
        src,
        qe,
        cent,
        pairs,
        pcl,
        scl,
        n_neg=23,
        tier_proportions=[3, 3, 3, 14],
        adjacent_k=1,
        near_duplicate_threshold=0.95,
    )
    ids, tiers = res["hard_negatives"].numpy(), res["negative_tiers"].numpy()
    kw = dict(
        pair_indices=pairs,
        pair_cluster_ids=pcl,
        source_cluster_ids=scl,
        centroid_embeddings=cent,
        adjacent_k=1,
    )
    assert ((tiers == 4) & (scl[ids] == 1)).any()  # tier 4 did widen
    ok = validate_negatives(ids, tiers, **kw, source_embeddings=src, near_duplicate_threshold=0.95)
    assert ok.ok, ok.errors
    assert "tier4_adjacent" in validate_negatives(ids, tiers, **kw).violations
    planted = ids.copy()
    planted[0, np.flatnonzero(tiers[0] == 4)[0]] = 24  # a near copy of the positive
    rep = validate_negatives(
        planted, tiers, **kw, source_embeddings=src, near_duplicate_threshold=0.95
    )
    assert rep.violations.get("near_duplicate") == 1
    assert "near_duplicate_threshold = 0.95" in rep.errors[0]
    with pytest.raises(ValueError, match="`source_embeddings` must be given"):
        validate_negatives(ids, tiers, **kw, near_duplicate_threshold=0.95)
