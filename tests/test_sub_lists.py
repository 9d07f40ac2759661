"""8-bit cluster lists split in sub-lists (``clusters,fast``, ``clusters,SQ8,sub<n>``): the
partition, the index that holds it, the candidate pass against an integer brute force
over the probed sub-lists, and tuning's bound over them."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from helpers import build_index as _build
from helpers import kernel_inputs
from reference import check_integer_row, check_rows, exact_negative_scores, small_corpus, unit

from negmine import NegativeMiner
from negmine.index import SourceIndex
from negmine.index.sublists import split_clusters
from negmine.search import probe as probe_mod
from negmine.search.codes import quantize_queries
from negmine.search.probe import probe_outside_cluster, sub_list_probes
from negmine.synth import make_corpus
from negmine.tuning import probe_bound

SPEC = "clusters,SQ8,sub30"
T3 = {"n_neg": 3, "tier_proportions": [0, 0, 3, 0], "adjacent_k": 1, "seed": 3}


@pytest.fixture(scope="module")
def corpus() -> dict:
    return small_corpus(n_sources=1200, n_clusters=8, n_questions=200, d=32, seed=21)


@pytest.fixture(scope="module")
def index(corpus) -> SourceIndex:
    return _build(corpus, SPEC)


def _lists_of(idx: SourceIndex) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Ids of each FAISS list, each list's stored uint8 codes, and the quantizer's step."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(idx.index))
    ids, codes = [], []
    for g in range(ivf.nlist):
        n = ivf.invlists.list_size(g)
        ids.append(faiss.rev_swig_ptr(ivf.invlists.get_ids(g), n).copy())
        codes.append(faiss.rev_swig_ptr(ivf.invlists.get_codes(g), n * ivf.d).reshape(n, ivf.d))
    step = faiss.vector_to_array(ivf.sq.trained)[ivf.d :] / 255
    return ids, np.concatenate(codes), step


def test_the_partition_splits_each_cluster_by_its_own_k_means(corpus):
    src = corpus["source_embeddings"]
    scl = corpus["source_cluster_ids"].astype(np.int64)
    of, per, cen = split_clusters(src, scl, 8, 30, seed=7)
    sizes = np.bincount(scl, minlength=8)
    assert per.sum() == cen.shape[0] == of.max() + 1
    # Lists are numbered cluster by cluster, never mixing two, none empty.
    first = np.concatenate([[0], np.cumsum(per)])
    for c in range(8):
        mine = np.unique(of[scl == c])
        np.testing.assert_array_equal(mine, np.arange(first[c], first[c + 1]))
        assert 1 <= per[c] <= max(1, round(sizes[c] / 30))
    assert (per > 1).all()  # this corpus splits every cluster
    # Each centroid is the normalised mean of its list's unit sources.
    u = unit(src.astype(np.float64))
    for g in range(cen.shape[0]):
        want = unit(u[of == g].mean(axis=0, keepdims=True))[0]
        np.testing.assert_allclose(cen[g], want, atol=1e-5)
    # Same seed, same partition.
    again = split_clusters(src, scl, 8, 30, seed=7)
    np.testing.assert_array_equal(again[0], of)


def test_the_index_holds_the_partition_and_the_manifest_records_it(tmp_path, corpus, index):
    man = index.manifest
    sub = man["clusters"]["sub_lists"]
    assert man["factory"] == f"IVF{sub['count']},SQ8" and index.sub_list_count == sub["count"]
    assert sub["target_size"] == 30 and len(sub["per_cluster"]) == 8
    ids, _, _ = _lists_of(index)
    scl = corpus["source_cluster_ids"]
    owner = np.repeat(np.arange(8), sub["per_cluster"])
    assert sorted(np.concatenate(ids).tolist()) == list(range(len(scl)))
    for g, got in enumerate(ids):
        assert got.size and (scl[got] == owner[g]).all() and (np.diff(got) > 0).all()
    index.save(tmp_path / "ix")
    loaded = SourceIndex.load(tmp_path / "ix", mmap=True)
    assert json.loads((tmp_path / "ix" / "manifest.json").read_text())["clusters"]["sub_lists"]
    a = NegativeMiner(**corpus, index=index, nprobe=6, **T3).mine_all_negatives()
    b = NegativeMiner(**corpus, index=loaded, nprobe=6, **T3).mine_all_negatives()
    for name in ("hard_negatives", "negative_scores"):
        assert np.asarray(a[name]).tobytes() == np.asarray(b[name]).tobytes()


def test_sub_lists_of_other_clusters_are_refused(corpus, index):
    ki = kernel_inputs(corpus)
    lay = ki["layout"]
    index.check_clusters(lay.source_cluster, ki["centroids"], lay.offsets, lay.order)
    bad = dict(index.manifest)
    per = list(bad["clusters"]["sub_lists"]["per_cluster"])
    per[0], per[1] = per[0] + 1, per[1] - 1  # same count, other boundaries
    bad["clusters"] = dict(bad["clusters"], sub_lists=dict(bad["clusters"]["sub_lists"],
                                                           per_cluster=per))  # fmt: skip
    with pytest.raises(ValueError, match="sub-lists"):
        SourceIndex(index.index, bad).check_clusters(lay.source_cluster, ki["centroids"],
                                                     lay.offsets, lay.order)  # fmt: skip


@pytest.mark.parametrize(("nprobe", "threads", "block"), [(1, 1, 16), (5, 2, 16), (12, 2, 1 << 20),
                                                          (40, 3, 64), (10**6, 2, 16)])  # fmt: skip
def test_candidates_equal_an_integer_brute_force_over_the_probed_sub_lists(
    corpus, index, nprobe, threads, block, monkeypatch
):
    """Each query probes the sub-lists whose centroid codes score highest against
    its quantized weights, its own cluster's left out; its candidates are the
    exact integer top-k over their sources, positives out, ties by lower id.
    Probe sets are checked by scores (ties at the cut may go either way)."""
    monkeypatch.setattr(probe_mod, "SCAN_THREADS", threads)
    monkeypatch.setattr(probe_mod, "PROBE_BLOCK", block)
    ki = kernel_inputs(corpus)
    lay, pos = ki["layout"], ki["positives"]
    lists = index.cluster_lists(lay.offsets)
    sub = lists.sub
    k = 7
    got_d, got_i = probe_outside_cluster(
        lists, ki["centroids"], ki["queries"], ki["query_rows"], ki["query_cluster"],
        ki["query_question"], lay, pos, k, nprobe,
    )  # fmt: skip
    ids, codes, step = _lists_of(index)
    of = np.empty(len(corpus["source_cluster_ids"]), dtype=np.int64)
    for g, members in enumerate(ids):
        of[members] = g
    signed = np.empty_like(codes, dtype=np.int64)
    signed[np.concatenate(ids)] = codes.astype(np.int64) - 128
    owner = sub.list_cluster
    xq = ki["queries"][ki["query_rows"]]
    u = quantize_queries(xq, step).astype(np.int64)
    probes, _ = sub_list_probes(sub, u.astype(np.int8), ki["query_cluster"],
                                min(nprobe, sub.n_lists))  # fmt: skip
    for m in range(len(xq)):
        lsc = sub.codes.astype(np.int64) @ u[m]
        out = owner == ki["query_cluster"][m]
        p = probes[m][probes[m] >= 0]
        assert p.size == min(nprobe, int((~out).sum())) and not out[p].any()
        rest = np.setdiff1d(np.flatnonzero(~out), p)
        if rest.size:
            assert lsc[p].min() >= lsc[rest].max()
        check_integer_row(got_d[m], got_i[m], np.isin(of, p), ki["query_question"][m], pos,
                          signed, u[m], k, str(m))  # fmt: skip


def test_every_sub_list_probed_and_full_rerank_is_exact(corpus, index):
    """With every sub-list probed and the re-rank at full depth, tier 3 is exact:
    the same ids as float32 lists probing every cluster; scores are cosines."""
    n = len(corpus["source_embeddings"])
    full = NegativeMiner(**corpus, index=index, nprobe=index.sub_list_count, rerank=n, **T3)
    want = NegativeMiner(**corpus, index=_build(corpus, "clusters"), nprobe=7, **T3)
    got = full.mine_all_negatives()["hard_negatives"]
    np.testing.assert_array_equal(got, want.mine_all_negatives()["hard_negatives"])
    shallow = NegativeMiner(**corpus, index=index, nprobe=4, rerank=1, **T3).mine_all_negatives()
    check_rows(shallow, corpus, T3["adjacent_k"])
    exact = exact_negative_scores(shallow, corpus)
    np.testing.assert_allclose(np.asarray(shallow["negative_scores"]), exact, atol=1e-5)


def test_probe_bound_over_sub_lists_is_a_per_query_count(corpus, index):
    """Tuning's bound at each nprobe: the share of exact hits whose sub-list has
    fewer than nprobe others of the query's scoring strictly above it, and no
    search at that nprobe beats it."""
    plan = NegativeMiner(**corpus, index=index, nprobe=3, rerank=2, **T3).plan
    lists = plan.backend.lists
    sub = lists.sub
    cl, qq = plan.t3_cluster, plan.t3_question
    qvec = unit(np.asarray(plan.inputs.questions, dtype=np.float32))
    rows = qq
    _, exact = plan.exact_reference(qvec, rows, cl, qq, 3)
    nprobes = [1, 2, 4, 8, 16, sub.n_lists]
    got = probe_bound(plan, qvec, rows, cl, exact, nprobes)
    of = np.empty(len(corpus["source_cluster_ids"]), dtype=np.int64)
    of[sub.order] = np.repeat(np.arange(sub.n_lists), np.diff(sub.offsets))
    u = quantize_queries(qvec[rows], lists.step).astype(np.int64)
    want = np.zeros(len(nprobes))
    n_rows = 0
    for m in range(len(rows)):
        hits = exact[m][exact[m] >= 0]
        if not hits.size:
            continue
        lsc = sub.codes.astype(np.int64) @ u[m]
        lsc[sub.list_cluster == cl[m]] = np.iinfo(np.int64).min
        ranks = np.array([(lsc > lsc[of[h]]).sum() for h in hits])
        want += [(ranks < p).mean() for p in nprobes]
        n_rows += 1
    np.testing.assert_allclose(got, want / n_rows, rtol=1e-12)
    assert got[-1] == 1.0
    for p, b in zip(nprobes[:3], got[:3], strict=True):
        m = plan.with_search(nprobe=p, rerank=len(corpus["source_embeddings"]))
        _, found = m.backend.search(qvec, rows, cl, qq, 3)
        from negmine.search.probe import recall_at_k

        assert recall_at_k(found, exact) <= b + 1e-12


def test_sub_lists_recall_more_per_source_scanned_than_whole_clusters():
    """On a corpus with the spectrum of real embeddings, the fewest sub-lists that
    recall what 4 whole clusters do scan fewer sources than those clusters."""
    from negmine.bench_floor import scanned_per_query

    c = make_corpus(8000, 20, 1500, d=64, seed=4, spectrum="minilm")
    idx = {spec: _build(c, spec) for spec in ("clusters,SQ8", "clusters,SQ8,sub50")}

    def run(spec: str, p: int) -> tuple[float, float]:
        m = NegativeMiner(**c, index=idx[spec], nprobe=p, rerank=2, recall_sample=1500, **T3)
        m.mine_arrays()
        return m.last_stats["tier3_recall"]["recall"], scanned_per_query(m.plan, p)

    whole, whole_scan = run("clusters,SQ8", 4)
    for p in range(4, 33, 2):
        split, split_scan = run("clusters,SQ8,sub50", p)
        if split >= whole:
            break
    assert split >= whole and split_scan < 0.8 * whole_scan, (p, split, split_scan, whole_scan)


def test_tuning_over_sub_lists_reaches_the_target(corpus, index):
    m = NegativeMiner(**corpus, index=index, target_recall=0.97, recall_sample=400, **T3)
    m.mine_arrays()
    st = m.last_stats
    tuning = st["tuning"]
    assert tuning["recall"] >= 0.97 and tuning["settings"]["nprobe"] <= index.sub_list_count
    assert st["tier3_recall"]["recall"] >= 0.97


@pytest.mark.parametrize("spec", ["clusters,SQ8,sub0", "clusters,SQ8,subx", "clusters,fp16,sub8",
                                  "clusters,SQ8,sub8,x"])  # fmt: skip
def test_bad_sub_list_specs_are_refused(corpus, spec):
    with pytest.raises(ValueError, match="sub<n>"):
        _build(corpus, spec)


def test_fast_sub_lists_hold_about_the_same_bytes_at_every_width():
    from negmine.index.sublists import SUBLIST_BYTES, sublist_size

    assert [sublist_size(d) for d in (128, 384, 768, 3072)] == [1536, 512, 256, 64]
    assert all(abs(sublist_size(d) * d - SUBLIST_BYTES) <= d / 2 for d in range(1, 5000, 7))
    # At d = 3072 "clusters,fast" cuts clusters of ~150 sources in lists of about 64.
    wide = small_corpus(n_sources=1200, n_clusters=8, n_questions=50, d=3072, seed=4)
    sub = _build(wide, "clusters,fast").manifest["clusters"]["sub_lists"]
    sizes = np.bincount(wide["source_cluster_ids"], minlength=8)
    assert sub["target_size"] == 64
    want = np.maximum(1, np.round(sizes / 64)).astype(int)
    assert (np.array(sub["per_cluster"]) <= want).all() and sum(sub["per_cluster"]) > 8
