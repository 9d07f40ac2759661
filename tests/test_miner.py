"""The miner against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import check_rows, positives_of, small_corpus, tier3_reference, unit

from negmine import NegativeMiner, mine_negatives, validate_negatives
from negmine.layout import ClusterLayout, PositiveSets, adjacent_clusters
from negmine.search import exact_outside_cluster, overfetch_outside_cluster


def _mine(corpus, **kw):
    kw.setdefault("n_neg", 12)
    kw.setdefault("tier_proportions", [3, 4, 3, 2])
    kw.setdefault("adjacent_k", 3)
    return mine_negatives(**corpus, **kw)


def test_output_format_and_rules():
    corpus = small_corpus()
    res = _mine(corpus)
    ids, tiers = res["hard_negatives"], res["negative_tiers"]
    assert ids.dtype == torch.int64 and tiers.dtype == torch.int64
    assert res["negative_scores"].dtype == torch.float32
    assert ids.shape == (len(corpus["pair_indices"]), 12)
    check_rows(res, corpus, adjacent_k=3)
    # Plenty of room in every cluster: the requested counts hold in every row.
    assert (tiers.numpy() == np.repeat([1, 2, 3, 4], [3, 4, 3, 2])).all()


def test_tier3_equals_brute_force():
    corpus = small_corpus(n_sources=600, n_clusters=10, n_questions=150, seed=3)
    res = _mine(corpus, tier_proportions=[2, 2, 5, 3])
    ref = tier3_reference(corpus, 5)
    ids = res["hard_negatives"].numpy()
    tiers = res["negative_tiers"].numpy()
    scores = res["negative_scores"].numpy()
    for r, (ref_ids, ref_scores) in enumerate(ref):
        got = ids[r][tiers[r] == 3]
        got_scores = scores[r][tiers[r] == 3]
        np.testing.assert_allclose(got_scores, ref_scores, atol=1e-5)
        assert list(got) == list(ref_ids), f"row {r}"


def test_scores_are_cosines():
    corpus = small_corpus(seed=5)
    res = _mine(corpus)
    ids = res["hard_negatives"].numpy()
    q = corpus["pair_indices"][:, 0]
    src = unit(corpus["source_embeddings"])
    qry = unit(corpus["question_embeddings"])
    expect = np.einsum("pd,pkd->pk", qry[q], src[ids])
    np.testing.assert_allclose(res["negative_scores"].numpy(), expect, atol=1e-5)


def test_exact_and_overfetch_kernels_agree_with_reference():
    corpus = small_corpus(n_sources=500, n_clusters=6, n_questions=90, seed=11)
    import faiss

    src = unit(corpus["source_embeddings"]).astype(np.float32)
    qry = unit(corpus["question_embeddings"]).astype(np.float32)
    pairs = corpus["pair_indices"]
    layout = ClusterLayout.build(
        corpus["source_cluster_ids"], 6, adjacent_clusters(corpus["centroid_embeddings"], 2)
    )
    pos = PositiveSets.from_pairs(pairs, len(qry))
    qq, cc = pairs[:, 0], corpus["pair_cluster_ids"]
    k = 7
    d_exact, i_exact = exact_outside_cluster(src, qry, qq, cc, qq, layout, pos, k)
    index = faiss.IndexFlatIP(src.shape[1])
    index.add(src)
    d_over, i_over = overfetch_outside_cluster(
        index.search, len(src), qry, qq, cc, qq, layout, pos, k, first_k=k
    )
    ref = tier3_reference(corpus, k)
    for r, (ref_ids, ref_scores) in enumerate(ref):
        np.testing.assert_allclose(d_exact[r], ref_scores, atol=1e-5)
        np.testing.assert_allclose(d_over[r], ref_scores, atol=1e-5)
        assert list(i_exact[r]) == list(ref_ids)
        assert list(i_over[r]) == list(ref_ids)


@pytest.mark.parametrize("chunk", [50, 200])
def test_exact_kernel_across_chunks(monkeypatch, chunk):
    """Blocks and chunks smaller than the data: the merge across them is exact,
    with (chunk 200) and without (chunk 50) the group-max prefilter."""
    import negmine.search.exact as search

    monkeypatch.setattr(search, "QUERY_BLOCK", 16)
    monkeypatch.setattr(search, "SOURCE_CHUNK", chunk)
    corpus = small_corpus(n_sources=430, n_clusters=7, n_questions=70, seed=2)
    res = _mine(corpus, tier_proportions=[1, 1, 6, 4])
    ref = tier3_reference(corpus, 6)
    ids, tiers = res["hard_negatives"].numpy(), res["negative_tiers"].numpy()
    for r, (ref_ids, _) in enumerate(ref):
        assert list(ids[r][tiers[r] == 3]) == list(ref_ids)


# Enough pairs and distinct (pair cluster, question) queries to cross the miner's
# fixed blocks (1024-pair random streams, 4096-query tier-3 blocks) and sampling
# steps of 1024 (batch sizes 1, 7 and 1024 round up to it), 3072 and 5120 pairs.
BATCH_CORPUS = dict(n_questions=5000, n_sources=900, seed=4)


@pytest.fixture(scope="module")
def batch_corpus():
    return small_corpus(**BATCH_CORPUS)


@pytest.fixture(scope="module")
def one_batch(batch_corpus):
    return _mine(batch_corpus, batch_size=100_000)


def test_batch_corpus_crosses_the_blocks(batch_corpus):
    pairs = batch_corpus["pair_indices"]
    queries = np.unique(batch_corpus["pair_cluster_ids"] * len(pairs) + pairs[:, 0])
    assert len(pairs) > 5120 + 1024 and queries.size > 4096


@pytest.mark.parametrize("batch_size", [1, 7, 1024, 3000, 5000])
def test_batch_size_does_not_change_output(batch_corpus, one_batch, batch_size):
    other = _mine(batch_corpus, batch_size=batch_size)
    for key in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
        assert torch.equal(one_batch[key], other[key]), key


def test_seed_determinism_and_change():
    corpus = small_corpus(seed=8)
    a = _mine(corpus, seed=1)
    b = _mine(corpus, seed=1)
    c = _mine(corpus, seed=2)
    assert torch.equal(a["hard_negatives"], b["hard_negatives"])
    t = a["negative_tiers"].numpy()
    random_cols = np.isin(t, [1, 2, 4])
    diff = a["hard_negatives"].numpy() != c["hard_negatives"].numpy()
    assert diff[random_cols].mean() > 0.5
    # Tier 3 is no lottery: the same under any seed.
    assert (~diff[t == 3]).all()


def test_in_cluster_sampling_is_uniform():
    """Tier-1 draws over many pairs of one question cover the cluster evenly."""
    rng = np.random.default_rng(0)
    d, n_src = 8, 60
    cent = np.eye(d, dtype=np.float32)[:3]
    scl = np.repeat([0, 1, 2], 20)
    src = cent[scl] + 0.1 * rng.standard_normal((n_src, d)).astype(np.float32)
    n_pairs = 4000
    pairs = np.stack([np.zeros(n_pairs, np.int64), np.zeros(n_pairs, np.int64)], axis=1)
    res = mine_negatives(
        src, src[:1], cent, pairs, np.zeros(n_pairs, np.int64), scl,
        n_neg=3, tier_proportions=[3, 0, 0, 0], adjacent_k=1,
    )  # fmt: skip
    ids = res["hard_negatives"].numpy()
    assert set(np.unique(ids)) == set(range(1, 20))  # source 0 is the positive
    counts = np.bincount(ids.reshape(-1), minlength=20)[1:]
    expected = n_pairs * 3 / 19
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 45, chi2  # 18 dof: p ~ 0.0005


def _tiny(sizes, d=6, seed=0, adjacent_k=1):
    rng = np.random.default_rng(seed)
    n_c = len(sizes)
    cent = rng.standard_normal((n_c, d)).astype(np.float32)
    scl = np.repeat(np.arange(n_c), sizes)
    src = (cent[scl] + 0.2 * rng.standard_normal((len(scl), d))).astype(np.float32)
    return cent, scl, src


def test_fallback_labels_single_cluster():
    cent, scl, src = _tiny([30])
    pairs = np.array([[0, 0], [1, 5]])
    res = mine_negatives(
        src, src[[0, 5]], cent, pairs, np.array([0, 0]), scl,
        n_neg=8, tier_proportions=[2, 2, 2, 2], adjacent_k=2,
    )  # fmt: skip
    # No other cluster: every tier falls back to the pair's own cluster (label 1).
    assert (res["negative_tiers"].numpy() == 1).all()
    check_rows(res, {"source_cluster_ids": scl, "centroid_embeddings": cent,
                     "pair_indices": pairs, "pair_cluster_ids": np.array([0, 0])}, 2)  # fmt: skip


def test_fallback_tiny_own_cluster_goes_adjacent_then_random():
    # Cluster 0 has 2 sources (one is the positive), so tier 1 yields 1 and passes 2 on.
    cent, scl, src = _tiny([2, 40, 40], seed=1)
    pairs = np.array([[0, 0]])
    miner = NegativeMiner(
        src, src[:1], cent, pairs, np.array([0]), scl,
        n_neg=6, tier_proportions=[3, 1, 1, 1], adjacent_k=1,
    )  # fmt: skip
    res = miner.mine_all_negatives()
    tiers = res["negative_tiers"].numpy()[0]
    assert list(tiers) == [1, 2, 2, 2, 3, 4]
    assert miner.last_stats["shortfalls"]["tier1"] == 2


def test_random_tier_widens_when_no_distant_cluster():
    cent, scl, src = _tiny([20, 20], seed=2)
    pairs = np.array([[0, 0]])
    res = mine_negatives(
        src, src[:1], cent, pairs, np.array([0]), scl,
        n_neg=4, tier_proportions=[0, 0, 0, 4], adjacent_k=1,
    )  # fmt: skip
    ids = res["hard_negatives"].numpy()[0]
    # The only other cluster is adjacent; tier 4 takes it and says so with label 4.
    assert (scl[ids] == 1).all()
    assert (res["negative_tiers"].numpy() == 4).all()


def test_row_cannot_be_filled_raises_with_numbers():
    cent, scl, src = _tiny([3, 3])
    pairs = np.array([[0, 0], [0, 1]])
    with pytest.raises(ValueError, match=r"`n_neg`.*question 0 has 2 positives.*S = 6.*got 5"):
        NegativeMiner(src, src[:1], cent, pairs, np.array([0, 0]), scl, n_neg=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_clusters=st.integers(1, 6),
    per_cluster=st.integers(1, 9),
    n_questions=st.integers(1, 12),
    extra=st.floats(0, 1),
    mismatch=st.floats(0, 1),
    props=st.lists(st.integers(0, 4), min_size=4, max_size=4).filter(lambda p: sum(p) > 0),
    adjacent_k=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_hard_rules_hold_on_random_corpora(
    n_clusters, per_cluster, n_questions, extra, mismatch, props, adjacent_k, seed
):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, per_cluster + 1, n_clusters)
    cent = rng.standard_normal((n_clusters, 5)).astype(np.float32)
    scl = np.repeat(np.arange(n_clusters), sizes)
    n_src = len(scl)
    src = (cent[scl] + 0.5 * rng.standard_normal((n_src, 5))).astype(np.float32)
    pairs = [(q, int(rng.integers(0, n_src))) for q in range(n_questions)]
    pairs += [(q, int(rng.integers(0, n_src))) for q in range(n_questions) if rng.random() < extra]
    pairs = np.array(pairs, dtype=np.int64)
    pcl = scl[pairs[:, 1]].copy()
    flip = rng.random(len(pcl)) < mismatch
    pcl[flip] = rng.integers(0, n_clusters, int(flip.sum()))
    qe = (src[pairs[:n_questions, 1]] + 0.3).astype(np.float32)
    n_neg = int(sum(props))
    worst = max(len(v) for v in positives_of(pairs).values())
    corpus = dict(
        source_embeddings=src, question_embeddings=qe, centroid_embeddings=cent,
        pair_indices=pairs, pair_cluster_ids=pcl, source_cluster_ids=scl,
    )  # fmt: skip
    if n_src - worst < n_neg:
        with pytest.raises(ValueError, match="n_neg"):
            mine_negatives(**corpus, n_neg=n_neg, tier_proportions=props, adjacent_k=adjacent_k)
        return
    res = mine_negatives(
        **corpus, n_neg=n_neg, tier_proportions=props, adjacent_k=adjacent_k, seed=seed
    )
    check_rows(res, corpus, adjacent_k)
    report = validate_negatives(
        res["hard_negatives"], res["negative_tiers"], pair_indices=pairs,
        pair_cluster_ids=pcl, source_cluster_ids=scl, centroid_embeddings=cent,
        adjacent_k=adjacent_k,
    )  # fmt: skip
    assert report.ok, report.errors


def test_a_miner_is_freed_as_soon_as_it_is_dropped():
    # No reference cycle: its arrays must not wait for the garbage collector,
    # or several experiments in one process pile up memory.
    import gc
    import weakref

    c = small_corpus(n_sources=200, n_clusters=5, n_questions=40, seed=3)
    gc.disable()
    try:
        m = NegativeMiner(**c, n_neg=6, nprobe=2, recall_sample=10, near_duplicate_threshold=0.99)
        m.mine_all_negatives()
        ref = weakref.ref(m)
        del m
        assert ref() is None
    finally:
        gc.enable()


def test_stage_clocks_cover_the_run_and_add_up():
    """Wall and CPU seconds per stage: consecutive laps that add up to the total,
    the recall check in a stage of its own (it took at least what it reports),
    and no more than the call took, measured from outside."""
    import time

    from helpers import build_index

    corpus = small_corpus(n_sources=3000, n_clusters=12, n_questions=1500, seed=5)
    idx = build_index(corpus, "IVF12,Flat")
    m = NegativeMiner(**corpus, n_neg=8, recall_sample=500, index=idx, nprobe=4)
    w0, c0 = time.perf_counter(), time.process_time()
    m.mine_arrays()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    st = m.last_stats
    stages = ["tier3_search", "tier3_recall", "sampling_and_scores", "validate"]
    for clock, outside in ((st["timings_seconds"], wall), (st["cpu_seconds"], cpu)):
        assert list(clock) == [*stages, "total"]
        assert all(clock[s] >= 0 for s in stages)
        assert sum(clock[s] for s in stages) == pytest.approx(clock["total"], abs=2e-3)
        assert clock["total"] <= outside + 1e-3
    assert st["tier3_recall"]["sample"] > 0
    assert st["timings_seconds"]["tier3_recall"] >= st["tier3_recall"]["seconds"] - 1e-3
    # the recall check is not counted in the pairs' stage any more
    assert st["timings_seconds"]["tier3_recall"] > 0
