"""The probed (inverted-file) tier-3 kernel against brute force and the exact kernel."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import kernel_inputs as _inputs
from reference import positives_of, small_corpus, unit

import negmine.search.probe as probe_mod
import negmine.search.scan as scan_mod
from negmine.search import exact_outside_cluster
from negmine.search.probe import probe_outside_cluster, recall_at_k
from negmine.synth import make_corpus


def _probe(inp: dict, k: int, nprobe: int):
    return probe_outside_cluster(**inp, k=k, nprobe=nprobe)


def _exact(inp: dict, k: int):
    args = {key: v for key, v in inp.items() if key != "centroids"}
    return exact_outside_cluster(**args, k=k, cluster_sorted=True)


def _reference(corpus: dict, inp: dict, k: int, nprobe: int):
    """Brute force, one query at a time: probe set, then top-k over it."""
    src = unit(corpus["source_embeddings"])
    qry = unit(corpus["question_embeddings"])
    cent = unit(corpus["centroid_embeddings"])
    scl = corpus["source_cluster_ids"]
    pos = positives_of(corpus["pair_indices"])
    ids_out, scores_out = [], []
    for q, c in zip(inp["query_question"], inp["query_cluster"], strict=True):
        cs = cent @ qry[q]
        ranked = [int(j) for j in np.argsort(-cs, kind="stable") if j != c]
        probed = ranked[:nprobe]
        ok = np.isin(scl, probed)
        ok[list(pos[int(q)])] = False
        cand = np.flatnonzero(ok)
        sims = src[cand] @ qry[q]
        top = np.argsort(-sims, kind="stable")[:k]
        ids = np.full(k, -1, dtype=np.int64)
        scores = np.full(k, -np.inf)
        ids[: top.size] = cand[top]
        scores[: top.size] = sims[top]
        ids_out.append(ids)
        scores_out.append(scores)
    return np.array(ids_out), np.array(scores_out)


def _exact_reference(corpus: dict, questions: np.ndarray, clusters: np.ndarray, k: int):
    """Brute force in float64: per (question, skipped cluster), the ids of the k
    most similar sources outside the cluster that are not positives of the question."""
    src = unit(corpus["source_embeddings"])
    qry = unit(corpus["question_embeddings"])
    scl = corpus["source_cluster_ids"]
    pos = positives_of(corpus["pair_indices"])
    out = np.empty((len(questions), k), dtype=np.int64)
    for a in range(0, len(questions), 256):
        q, c = questions[a : a + 256], clusters[a : a + 256]
        sims = qry[q] @ src.T
        sims[scl[None, :] == c[:, None]] = -np.inf
        for r, qq in enumerate(q.tolist()):
            sims[r, list(pos[qq])] = -np.inf
        out[a : a + 256] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return out


def _recall_by_hand(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact ids (all valid here) found in the approximate row."""
    rows = zip(approx.tolist(), exact.tolist(), strict=True)
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in rows]))


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("nprobe", [1, 2, 3, 7])
def test_matches_brute_force(seed, k, nprobe):
    corpus = small_corpus(n_sources=300, n_clusters=8, n_questions=80, seed=seed)
    inp = _inputs(corpus)
    d, i = _probe(inp, k, nprobe)
    ref_i, ref_d = _reference(corpus, inp, k, nprobe)
    assert d.dtype == np.float32 and i.dtype == np.int64
    assert d.shape == i.shape == (len(inp["query_rows"]), k)
    np.testing.assert_array_equal(i, ref_i)
    np.testing.assert_allclose(d, ref_d, atol=1e-5)


def test_small_clusters_pad_and_skip_positives():
    """Probed clusters smaller than k and positives inside them: rows pad with
    -1 / -inf and never hold a positive or an own-cluster source."""
    corpus = small_corpus(n_sources=40, n_clusters=10, n_questions=30, seed=3, extra_positive=1)
    inp = _inputs(corpus)
    k = 12
    for nprobe in (1, 2, 9):
        d, i = _probe(inp, k, nprobe)
        ref_i, ref_d = _reference(corpus, inp, k, nprobe)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(d, ref_d, atol=1e-5)
        if nprobe == 1:
            assert (i == -1).any()
        assert np.all(np.isneginf(d) == (i == -1))
        pos = positives_of(corpus["pair_indices"])
        scl = corpus["source_cluster_ids"]
        for r, (q, c) in enumerate(zip(inp["query_question"], inp["query_cluster"], strict=True)):
            row = i[r][i[r] >= 0]
            assert not set(row.tolist()) & pos[int(q)]
            assert not (scl[row] == c).any()


def test_empty_cluster_may_be_probed():
    corpus = small_corpus(n_sources=200, n_clusters=6, n_questions=40, seed=9)
    # Move cluster 2's sources to cluster 3, leaving cluster 2 empty (its centroid stays).
    corpus["source_cluster_ids"] = np.where(
        corpus["source_cluster_ids"] == 2, 3, corpus["source_cluster_ids"]
    )
    inp = _inputs(corpus)
    assert inp["layout"].sizes[2] == 0
    for nprobe in (1, 2, 5):
        d, i = _probe(inp, 4, nprobe)
        ref_i, ref_d = _reference(corpus, inp, 4, nprobe)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(d, ref_d, atol=1e-5)


@pytest.mark.parametrize("k", [1, 6])
def test_all_clusters_equals_exact_kernel(k):
    corpus = small_corpus(n_sources=500, n_clusters=6, n_questions=90, seed=11)
    inp = _inputs(corpus)
    d_e, i_e = _exact(inp, k)
    for nprobe in (5, 50):
        d, i = _probe(inp, k, nprobe)
        np.testing.assert_array_equal(i, i_e)
        np.testing.assert_allclose(d, d_e, atol=1e-5)


def test_block_size_does_not_change_output(monkeypatch):
    corpus = small_corpus(n_sources=600, n_clusters=9, n_questions=150, seed=4)
    inp = _inputs(corpus)
    base = _probe(inp, 5, 3)
    monkeypatch.setattr(probe_mod, "PROBE_BLOCK", 16)
    monkeypatch.setattr(scan_mod, "SCORE_BUFFER", 64)  # also split each cluster's product
    seen = []
    small = probe_outside_cluster(**inp, k=5, nprobe=3, progress=seen.append)
    assert sum(seen) == len(inp["query_rows"]) and max(seen) == 16
    np.testing.assert_array_equal(small[1], base[1])
    np.testing.assert_allclose(small[0], base[0], atol=1e-6)


def test_degenerate_arguments():
    corpus = small_corpus(n_sources=100, n_clusters=4, n_questions=20, seed=1)
    inp = _inputs(corpus)
    m = len(inp["query_rows"])
    d, i = _probe(inp, 0, 2)
    assert d.shape == i.shape == (m, 0)
    with pytest.raises(ValueError, match="nprobe"):
        _probe(inp, 3, 0)
    empty = dict(inp, query_rows=inp["query_rows"][:0], query_cluster=inp["query_cluster"][:0],
                 query_question=inp["query_question"][:0])  # fmt: skip
    d, i = _probe(empty, 3, 2)
    assert d.shape == (0, 3)


def test_recall_rises_with_nprobe():
    corpus = make_corpus(20000, 50, 3000, 64, seed=0)
    inp = _inputs(corpus)
    k = 10
    exact = _exact_reference(corpus, inp["query_question"], inp["query_cluster"], k)
    recalls = []
    for p in (1, 2, 4, 8, 16):
        got = _probe(inp, k, p)[1]
        recalls.append(recall_at_k(got, exact))
        assert recalls[-1] == pytest.approx(_recall_by_hand(got, exact), abs=1e-12), p
    print("recall@10 at nprobe 1, 2, 4, 8, 16:", [round(r, 4) for r in recalls])
    assert all(b >= a for a, b in itertools.pairwise(recalls))
    assert recalls[0] < 0.9  # one probe is not enough: the test can tell
    assert recalls[-1] >= 0.97
    # Probing every other cluster finds the brute-force top k of every query.
    full = _probe(inp, k, 49)[1]
    assert [set(r) for r in full.tolist()] == [set(r) for r in exact.tolist()]


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3], [4, 5, -1], [-1, -1, -1], [7, 8, 9]])
    approx = np.array([[3, 1, 10], [5, -1, -1], [1, 2, 3], [-1, -1, -1]])
    # rows: 2/3, 1/2, skipped, 0/3
    assert recall_at_k(approx, exact) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert recall_at_k(exact, exact) == 1.0
    # -1 in both never counts as a match
    assert recall_at_k(np.array([[-1, 4]]), np.array([[4, -1]])) == 1.0
    assert np.isnan(recall_at_k(approx[2:3], exact[2:3]))
    # a wider approximate result is allowed
    assert recall_at_k(np.array([[9, 8, 7, 1]]), np.array([[1, 2]])) == 0.5


def test_centroid_ties_go_to_lower_cluster():
    corpus = small_corpus(n_sources=300, n_clusters=8, n_questions=80, seed=6)
    cent = corpus["centroid_embeddings"]
    cent[5] = cent[2]
    cent[6] = cent[2]  # three identical centroids: exact ties in every row
    inp = _inputs(corpus)
    for nprobe in (1, 2, 3, 4):
        d, i = _probe(inp, 5, nprobe)
        ref_i, ref_d = _reference(corpus, inp, 5, nprobe)
        np.testing.assert_array_equal(i, ref_i)
        np.testing.assert_allclose(d, ref_d, atol=1e-5)


def test_miner_with_nprobe_passes_the_rules_and_reports_recall():
    from reference import check_rows, tier3_reference

    from negmine import NegativeMiner

    corpus = small_corpus(n_sources=500, n_clusters=8, n_questions=120, seed=9)
    kw = dict(n_neg=8, tier_proportions=[2, 2, 2, 2])
    # Probing all C - 1 other clusters: tier 3 is the brute-force top 2 of each pair.
    full = NegativeMiner(**corpus, **kw, nprobe=7, recall_sample=50)
    res = full.mine_all_negatives()
    ids, tiers = res["hard_negatives"].numpy(), res["negative_tiers"].numpy()
    for r, (want, _) in enumerate(tier3_reference(corpus, 2)):
        assert list(ids[r][tiers[r] == 3]) == list(want), f"row {r}"
    assert full.last_stats["tier3_recall"]["recall"] == 1.0
    assert full.last_stats["index"]["factory"] == "clusters"
    # One probe: the recall the miner reports is the one brute force gives, over
    # every distinct (pair cluster, question), the queries tier 3 searches.
    narrow = NegativeMiner(**corpus, **kw, nprobe=1, recall_sample=1000)
    res = narrow.mine_all_negatives()
    check_rows(res, corpus, adjacent_k=3)
    n_q = len(corpus["question_embeddings"])
    key = np.unique(corpus["pair_cluster_ids"] * n_q + corpus["pair_indices"][:, 0])
    queries = {"query_cluster": key // n_q, "query_question": key % n_q}
    probed, _ = _reference(corpus, queries, 2, 1)
    exact = _exact_reference(corpus, queries["query_question"], queries["query_cluster"], 2)
    want = _recall_by_hand(probed, exact)
    rec = narrow.last_stats["tier3_recall"]
    assert rec["sample"] == key.size and rec["k"] == 2
    assert rec["recall"] == round(want, 4), (rec, want)
    assert want < 0.95  # one probe misses some: the comparison can tell
    with pytest.raises(ValueError, match="`nprobe` must be an integer >= 1"):
        NegativeMiner(**corpus, nprobe=0)


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_admit_keeps_the_heaps_faiss_addn_keeps(dtype):
    """_admit (warm rows compacted) and _admit_int (integer heaps, for integer
    scores) leave every heap, ids and order, as FAISS's addn over the float32
    scores does, from empty, half-full and warm heaps, with ties at and around
    the heaps' floors and left-out scores (-inf, or the integer empty slot)."""
    import faiss

    from negmine.search.common import heap_over

    rng = np.random.default_rng(4)
    n, w, k, lo = 90, 64, 5, 1000
    integer = dtype == np.int32
    empty = scan_mod._INT_EMPTY if integer else -np.inf
    dist = np.full((n, k), empty, dtype=dtype)
    ids = np.full((n, k), -1, dtype=np.int64)
    ref_d = np.full((n, k), -np.inf, dtype=np.float32)
    ref_i = ids.copy()
    for step in range(6):
        scores = rng.integers(-40, 40 + 20 * step, (n, w)).astype(dtype)
        scores[: n // 3, : w // 2] = -50  # rows the warm path takes
        # Rows whose heaps stay below zero: padding must not enter them.
        scores[n // 3 : n // 2] = rng.integers(-200, -100, (n // 2 - n // 3, w))
        scores[n // 2 :, 7] = empty  # left out (a positive)
        admit = scan_mod._admit_int if integer else scan_mod._admit
        admit(scores, dist, ids, lo + step * w)
        flt = np.where(scores == empty, np.float32(-np.inf), scores.astype(np.float32))
        heap_over(ref_d, ref_i).addn(w, faiss.swig_ptr(flt), lo + step * w, 0, n)
        got = np.where(dist == empty, np.float32(-np.inf), dist.astype(np.float32))
        assert got.tobytes() == ref_d.tobytes()
        assert ids.tobytes() == ref_i.tobytes()
    assert (ids >= 0).all()  # the heaps filled
