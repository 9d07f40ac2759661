"""8-bit cluster lists (``clusters,SQ8`` and ``clusters,fast``): a candidate pass of
integer products over the codes, then an exact re-rank from the embeddings."""

from __future__ import annotations

import gc
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import build_index as _build
from helpers import kernel_inputs, tier3_recall, torch_openmp
from reference import check_integer_row, check_rows, exact_negative_scores, small_corpus, unit

from negmine import NegativeMiner
from negmine.index import SourceIndex
from negmine.plan import CODES_RERANK
from negmine.search import probe as probe_mod
from negmine.search.codes import quantize_queries
from negmine.search.probe import probe_outside_cluster
from negmine.synth import make_corpus

T3 = {"n_neg": 3, "tier_proportions": [0, 0, 3, 0], "adjacent_k": 1, "seed": 3}


@pytest.fixture(scope="module")
def corpus() -> dict:
    return small_corpus(n_sources=700, n_clusters=9, n_questions=160, d=32, seed=11)


def _codes_by_source(idx: SourceIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each source's stored uint8 code [S, d] and the quantizer's ``low`` and ``step``
    [d], read from FAISS's lists and quantizer directly."""
    ivf = faiss.downcast_index(faiss.extract_index_ivf(idx.index))
    d = ivf.d
    out = np.zeros((ivf.ntotal, d), dtype=np.uint8)
    for c in range(ivf.nlist):
        n = ivf.invlists.list_size(c)
        if n:
            ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(c), n).copy()
            out[ids] = faiss.rev_swig_ptr(ivf.invlists.get_codes(c), n * d).reshape(n, d)
    trained = faiss.vector_to_array(ivf.sq.trained)
    return out, trained[:d], trained[d:] / 255


@pytest.mark.parametrize("mmap", [False, True])
def test_codes_and_step_decode_to_the_quantizer_values(tmp_path, corpus, mmap):
    idx = _build(corpus, "clusters,SQ8")
    if mmap:
        idx.save(tmp_path / "ix")
        idx = SourceIndex.load(tmp_path / "ix", mmap=True)
    ki = kernel_inputs(corpus)
    offsets = ki["layout"].offsets
    lists = idx.cluster_lists(offsets)
    codes, low, step = _codes_by_source(idx)
    np.testing.assert_allclose(lists.step, step, rtol=1e-6)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(idx.index))
    for c in range(len(offsets) - 1):
        src = ki["layout"].order[offsets[c] : offsets[c + 1]]
        got = lists.codes(c)
        assert got.dtype == np.int8
        np.testing.assert_array_equal(got.astype(np.int16) + 128, codes[src])
        decoded = ivf.sq.decode(codes[src])  # FAISS's own decoding of the same codes
        np.testing.assert_allclose(low + (got + 128.5) * step, decoded, atol=1e-6)


@pytest.mark.parametrize("mmap", [False, True])
def test_lists_converted_by_several_threads_at_once_are_converted_once_and_right(
    tmp_path, corpus, mmap
):
    """Four threads ask for every list, each in its own order, at once: each
    gets the stored codes minus 128, and every thread the same memory."""
    idx = _build(corpus, "clusters,SQ8")
    if mmap:
        idx.save(tmp_path / "ix")
        idx = SourceIndex.load(tmp_path / "ix", mmap=True)
    ki = kernel_inputs(corpus)
    offsets, order = ki["layout"].offsets, ki["layout"].order
    codes, _, _ = _codes_by_source(idx)
    for _ in range(5):
        lists = idx.cluster_lists(offsets)
        lists.release()  # each round converts afresh
        start = threading.Barrier(4)

        def ask(seed, lists=lists, start=start):
            start.wait()
            perm = np.random.default_rng(seed).permutation(len(offsets) - 1)
            return {int(c): lists.codes(int(c)) for c in perm}

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(ask, range(4)))
        for c in range(len(offsets) - 1):
            want = codes[order[offsets[c] : offsets[c + 1]]].astype(np.int16) - 128
            for g in got:
                np.testing.assert_array_equal(g[c], want)
                assert g[c].size == 0 or np.shares_memory(g[c], got[0][c])


def test_quantized_queries_are_the_weights_on_a_scale_of_their_own():
    rng = np.random.default_rng(0)
    xq = unit(rng.standard_normal((50, 24)))
    xq[7] = 0.0
    step = rng.uniform(0.001, 0.01, 24).astype(np.float32)
    u = quantize_queries(xq, step)
    assert u.dtype == np.int8 and np.abs(u.astype(int)).max() == 127
    w = xq * step
    top = np.abs(w).max(axis=1)
    live = top > 0
    np.testing.assert_array_equal(np.abs(u[live].astype(int)).max(axis=1), 127)
    assert not u[7].any()
    scale = 127 / top[live]
    err = np.abs(u[live] / scale[:, None] - w[live])
    assert (err <= 0.5001 / scale[:, None]).all()


@pytest.mark.parametrize("piece", [1, 3, 64, 512])
def test_queries_quantized_in_pieces_keep_every_bit(piece, monkeypatch):
    """Pieces of any size, from an array or from rows gathered on demand, into a
    given buffer: the bytes of rounding ``xq * step`` on each row's scale at once."""
    from negmine.search import codes as codes_mod
    from negmine.search.common import RowsOf

    rng = np.random.default_rng(4)
    xq = unit(rng.standard_normal((203, 40)))
    xq[5] = 0.0
    step = rng.uniform(0.001, 0.01, 40).astype(np.float32)
    w = xq * step
    top = np.abs(w).max(axis=1, keepdims=True)
    scale = np.divide(127.0, top, out=np.ones_like(top), where=top > 0)
    want = np.rint(w * scale).astype(np.int8)
    monkeypatch.setattr(codes_mod, "QUANTIZE_ROWS", piece)
    np.testing.assert_array_equal(quantize_queries(xq, step), want)
    rows = rng.permutation(203)[:150]
    out = np.full((150, 40), 99, dtype=np.int8)
    assert quantize_queries(RowsOf(xq, rows), step, out=out) is out
    np.testing.assert_array_equal(out, want[rows])


@pytest.mark.parametrize(
    ("nprobe", "threads", "ahead"), [(2, 1, 2), (2, 2, 1), (8, 2, 2), (8, 3, 1), (8, 2, 50)]
)
def test_integer_candidates_equal_integer_brute_force(corpus, nprobe, threads, ahead, monkeypatch):
    """The candidate pass's scores are the exact integer sums of the quantized
    query with each probed source's code, and its order is theirs (ties by
    lower id), over the probed clusters, own cluster and positives excluded;
    whether one scan or several threads' scans share a block's queries, and
    however many chunks' probe sets are chosen while the next is computed."""
    monkeypatch.setattr(probe_mod, "SCAN_THREADS", threads)
    monkeypatch.setattr(probe_mod, "PROBE_BLOCK", 16)  # many chunks in the one block
    monkeypatch.setattr(probe_mod, "PREPARE_AHEAD", ahead)
    parts = []
    scan_part = probe_mod._scan_part
    monkeypatch.setattr(probe_mod, "_scan_part", lambda *a: parts.append(1) or scan_part(*a))
    idx = _build(corpus, "clusters,SQ8")
    ki = kernel_inputs(corpus)
    lay, pos = ki["layout"], ki["positives"]
    lists = idx.cluster_lists(lay.offsets)
    k = 7
    got_d, got_i = probe_outside_cluster(
        lists, ki["centroids"], ki["queries"], ki["query_rows"], ki["query_cluster"],
        ki["query_question"], lay, pos, k, nprobe,
    )  # fmt: skip
    codes, _, step = _codes_by_source(idx)
    xq = ki["queries"][ki["query_rows"]]
    u = quantize_queries(xq, step).astype(np.int64)
    signed = codes.astype(np.int64) - 128
    scl = corpus["source_cluster_ids"]
    for m in range(len(xq)):
        cs = ki["centroids"] @ xq[m]
        cs[ki["query_cluster"][m]] = -np.inf
        probed = np.argsort(-cs, kind="stable")[:nprobe]
        check_integer_row(got_d[m], got_i[m], np.isin(scl, probed), ki["query_question"][m], pos,
                          signed, u[m], k, str(m))  # fmt: skip
    assert len(parts) == (threads if threads > 1 else 0)  # one block, cut in `threads` parts


def test_scan_threads_multiply_on_one_openmp_thread_each(corpus, monkeypatch):
    """Each scan thread's integer products run on one thread, as the scans
    assume (several OpenMP teams at once would fight for the cores)."""
    omp = torch_openmp()
    if omp is None:
        pytest.skip("torch's OpenMP runtime not found")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(probe_mod, "SCAN_THREADS", 2)
    seen = []
    scan_part = probe_mod._scan_part

    def spy(*args):
        seen.append(omp.omp_get_max_threads())
        return scan_part(*args)

    monkeypatch.setattr(probe_mod, "_scan_part", spy)
    ki = kernel_inputs(corpus)
    lists = _build(corpus, "clusters,SQ8").cluster_lists(ki["layout"].offsets)
    probe_outside_cluster(lists, ki["centroids"], ki["queries"], ki["query_rows"],
                          ki["query_cluster"], ki["query_question"], ki["layout"],
                          ki["positives"], 5, 3)  # fmt: skip
    assert seen == [1, 1]


@pytest.mark.parametrize("spec", ["clusters", "clusters,SQ8"])
def test_lists_outlive_the_index_object_they_were_taken_from(corpus, spec):
    """Lists read the index's memory: they keep it alive when the caller lets
    the index object go (else they would read freed memory)."""
    ki = kernel_inputs(corpus)
    offsets = ki["layout"].offsets
    kept = _build(corpus, spec)
    want = kept.cluster_lists(offsets)
    lists = _build(corpus, spec).cluster_lists(offsets)
    gc.collect()
    _ = [np.ones(1 << 16) for _ in range(64)]  # reuse what a freed index held
    for c in range(len(offsets) - 1):
        np.testing.assert_array_equal(lists.block(c), want.block(c))
        if want.codes is not None:
            np.testing.assert_array_equal(lists.codes(c), want.codes(c))


def test_integer_rows_short_of_k_pad_as_float32_lists_do(corpus):
    """Where the probed clusters hold fewer than ``k`` eligible sources, the
    8-bit pass returns every one of them (the float32 lists' ids, as a set) and
    pads with ``-inf`` and ``-1``, as float32 lists do: the integer heaps' empty
    slots never leak out as scores."""
    idx = _build(corpus, "clusters,SQ8")
    ki = kernel_inputs(corpus)
    lay = ki["layout"]
    args = (ki["centroids"], ki["queries"], ki["query_rows"], ki["query_cluster"],
            ki["query_question"], lay, ki["positives"], 200, 1)  # fmt: skip
    got_d, got_i = probe_outside_cluster(idx.cluster_lists(lay.offsets), *args)
    ref_d, ref_i = probe_outside_cluster(ki["vectors"], *args)
    n_ok = (ref_i >= 0).sum(axis=1)
    assert (n_ok < 200).all() and (n_ok > 0).all()  # every row short, none empty
    np.testing.assert_array_equal((got_i >= 0).sum(axis=1), n_ok)
    np.testing.assert_array_equal(np.sort(got_i, axis=1), np.sort(ref_i, axis=1))
    assert np.isfinite(got_d[got_i >= 0]).all()
    assert (got_d[got_i < 0] == -np.inf).all()
    assert (ref_d[ref_i < 0] == -np.inf).all()  # the float32 lists' padding, the same


def test_integer_blocks_of_any_size_give_the_same_bytes(corpus, monkeypatch):
    """Over 8-bit codes, how many queries share a block (and so each cluster's
    product) changes nothing: the sums are exact and the probe sets are still
    chosen PROBE_BLOCK rows at a time."""
    idx = _build(corpus, "clusters,SQ8")
    ki = kernel_inputs(corpus)
    lists = idx.cluster_lists(ki["layout"].offsets)
    args = (lists, ki["centroids"], ki["queries"], ki["query_rows"], ki["query_cluster"],
            ki["query_question"], ki["layout"], ki["positives"], 6, 3)  # fmt: skip
    monkeypatch.setattr(probe_mod, "PROBE_BLOCK", 16)
    results = {}
    for block in (16, 64, 1 << 20):
        monkeypatch.setattr(probe_mod, "INTEGER_BLOCK", block)
        seen: list[int] = []
        results[block] = probe_outside_cluster(*args, progress=seen.append)
        assert max(seen) == min(block, len(ki["query_rows"]))
    assert len(ki["query_rows"]) > 64  # several blocks of 16 and of 64
    for block in (64, 1 << 20):  # (one block: checked by brute force above)
        for got, want in zip(results[block], results[16], strict=True):
            assert got.tobytes() == want.tobytes()


def test_full_rerank_depth_is_exact_and_scores_are_cosines(corpus):
    """At full depth the re-rank sees every probed source: exact tier 3, the same
    ids as the float32 lists; at any depth the scores are exact cosines."""
    n = len(corpus["source_embeddings"])
    idx = _build(corpus, "clusters,SQ8")
    full = NegativeMiner(**corpus, index=idx, nprobe=3, rerank=n, **T3).mine_all_negatives()
    flat = NegativeMiner(**corpus, index=_build(corpus, "clusters"), nprobe=3, **T3)
    want = flat.mine_all_negatives()["hard_negatives"]
    np.testing.assert_array_equal(full["hard_negatives"], want)
    shallow = NegativeMiner(**corpus, index=idx, nprobe=3, rerank=1, **T3).mine_all_negatives()
    check_rows(shallow, corpus, T3["adjacent_k"])
    exact = exact_negative_scores(shallow, corpus)
    np.testing.assert_allclose(np.asarray(shallow["negative_scores"]), exact, atol=1e-5)


def test_recall_on_a_clustered_corpus_matches_float32_lists():
    """On a corpus with the spectrum of real embeddings, the 8-bit pass re-ranked
    at the default depth recalls what float32 lists recall at the same nprobe."""
    c = make_corpus(6000, 40, 1500, d=64, seed=4, spectrum="minilm")

    def recall(spec: str, rerank: int | None) -> float:
        return tier3_recall(c, spec, rerank, 8, **T3)

    full = recall("clusters", None)
    fast = recall("clusters,fast", None)
    assert fast >= full - 0.01
    assert recall("clusters,fast", 1) <= fast


def test_fast_builds_8bit_lists_and_the_manifest_says_how_they_are_searched(tmp_path, corpus):
    idx = _build(corpus, "clusters,fast")
    idx.save(tmp_path / "ix")
    man = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert man["spec"] == "clusters,fast" and man["clusters"]["codec"] == "SQ8"
    assert "integer" in man["clusters"]["candidate_pass"]
    # Sub-lists of about 192 KiB of codes (6,144 sources at d = 32): each of these
    # clusters (about 78 sources) is one.
    sub = man["clusters"]["sub_lists"]
    d = corpus["source_embeddings"].shape[1]
    assert d == 32 and sub["target_size"] == 512 * 384 // d and sub["per_cluster"] == [1] * 9
    assert man["factory"] == "IVF9,SQ8" and sub["count"] == 9
    loaded = SourceIndex.load(tmp_path / "ix", mmap=True)
    m = NegativeMiner(**corpus, index=loaded, nprobe=4, recall_sample=100, **T3)
    m.mine_arrays()
    st = m.last_stats
    assert st["index"]["search_params"] == {"nprobe": 4, "rerank": CODES_RERANK}
    assert st["index"]["clusters"]["codec"] == "SQ8"


def _rss_file_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("RssFile")) / 1024


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux /proc only")
def test_converted_lists_of_a_mapped_file_leave_the_resident_set(tmp_path):
    """Pages of a read-only file mapping are dropped (and read back intact when
    touched again); memory of the process's own is never touched."""
    from negmine.index.lists import _drop_mapped, _read_only_file_maps

    a = np.arange(16 << 20, dtype=np.int32)  # 64 MiB
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    own = a.copy()
    maps = _read_only_file_maps()
    inside = [any(lo <= x.ctypes.data < hi for lo, hi in maps) for x in (m, own)]
    assert inside == [True, False]
    assert int(m.sum(dtype=np.int64)) == int(a.sum(dtype=np.int64))  # every page resident
    before = _rss_file_mb()
    _drop_mapped(m, maps)
    _drop_mapped(own, maps)
    assert before - _rss_file_mb() > 48
    np.testing.assert_array_equal(m, a)
    np.testing.assert_array_equal(own, a)


def test_the_codes_are_freed_once_tier_3_is_done_and_rebuilt_alike(corpus):
    idx = _build(corpus, "clusters,fast")
    m = NegativeMiner(**corpus, index=idx, nprobe=4, **T3)
    lists = m.plan.backend.lists
    first = m.mine_all_negatives()
    assert idx._codes == {}  # the pair blocks do not search
    lists.codes(0)
    assert len(idx._codes) == 1  # converted again when searched
    again = m.mine_all_negatives()
    for name in ("hard_negatives", "negative_tiers", "negative_scores"):
        np.testing.assert_array_equal(np.asarray(first[name]), np.asarray(again[name]))


def test_tier3_blocks_over_codes_are_larger_and_their_size_changes_no_byte(corpus, monkeypatch):
    """8-bit lists mine in tier-3 blocks of CODES_T3_BLOCK queries; cut into many
    small blocks instead, the run gives the same bytes, under another run key
    (checkpoints are stored by block number)."""
    import negmine.plan as plan_mod

    idx = _build(corpus, "clusters,fast")
    cfg = dict(n_neg=6, tier_proportions=[1, 2, 2, 1], adjacent_k=2, seed=5)
    whole = NegativeMiner(**corpus, index=idx, nprobe=3, **cfg)
    assert whole.plan.t3_block == plan_mod.CODES_T3_BLOCK == probe_mod.INTEGER_BLOCK
    assert whole.plan.n_tier3_blocks == 1
    float32 = NegativeMiner(**corpus, index=_build(corpus, "clusters"), nprobe=3, **cfg)
    assert float32.plan.t3_block == plan_mod.T3_BLOCK
    first = whole.mine_all_negatives()
    key = whole.run_key()
    monkeypatch.setattr(plan_mod, "CODES_T3_BLOCK", 32)
    monkeypatch.setattr(probe_mod, "INTEGER_BLOCK", 32)
    cut = NegativeMiner(**corpus, index=idx, nprobe=3, **cfg)
    assert cut.plan.n_tier3_blocks == -(-cut.plan.n_tier3 // 32) > 3
    again = cut.mine_all_negatives()
    for name in ("hard_negatives", "negative_tiers", "negative_scores"):
        assert np.asarray(first[name]).tobytes() == np.asarray(again[name]).tobytes(), name
    assert cut.run_key() != key
