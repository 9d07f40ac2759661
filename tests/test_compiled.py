"""The compiled kernels (the ``numba`` extra) against what they replace.

They must change speed only: the push, the same heaps, ids and order as
FAISS's ``addn`` on scores full of ties, and the same mining bytes with it
turned on and off (``NEGMINE_COMPILED``); the cosines, numpy's bits.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import build_index
from reference import small_corpus

from negmine import _compiled as compiled
from negmine import mine_negatives
from negmine._checks import normalized_float32
from negmine.search.scan import _INT_EMPTY, _admit_int

pytest.importorskip("numba")


def test_compiled_push_keeps_faiss_heaps_ids_and_order_through_ties(monkeypatch):
    """Scores drawn from seven values (ties everywhere), heaps of 1 to 8, rows of
    1 to 40 scores, six pushes into the same heaps: after each push the compiled
    heaps equal those FAISS's ``addn`` keeps, slot for slot, ids included."""
    monkeypatch.delenv("NEGMINE_COMPILED", raising=False)
    push = compiled.int_push()
    assert push is not None
    rng = np.random.default_rng(5)
    n_heaps = 30
    for _ in range(300):
        k = int(rng.integers(1, 9))
        w = int(rng.integers(1, 41))
        ref_d = np.full((n_heaps, k), _INT_EMPTY, dtype=np.int32)
        ref_i = np.full((n_heaps, k), -1, dtype=np.int64)
        got_d, got_i = ref_d.copy(), ref_i.copy()
        for _ in range(6):
            rows = rng.choice(n_heaps, size=int(rng.integers(1, 20)), replace=False)
            scores = rng.integers(-3, 4, size=(rows.size, w)).astype(np.int32)
            scores[rng.random(scores.shape) < 0.05] = _INT_EMPTY  # left-out positives
            lo = int(rng.integers(0, 1000))
            d, i = ref_d[rows], ref_i[rows]
            _admit_int(scores, d, i, lo)  # FAISS's int_minheap_array_t.addn
            ref_d[rows], ref_i[rows] = d, i
            push(scores, rows.astype(np.int64), got_d, got_i, lo)
            np.testing.assert_array_equal(got_d, ref_d)
            np.testing.assert_array_equal(got_i, ref_i)
    assert (ref_i >= 0).any() and (ref_d > _INT_EMPTY).any()


def _faiss_top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's ``int_minheap_array_t.addn`` of each row into an empty heap of ``k``."""
    d = np.full((scores.shape[0], k), _INT_EMPTY, dtype=np.int32)
    i = np.full((scores.shape[0], k), -1, dtype=np.int64)
    _admit_int(scores, d, i, 0)
    return d, i


@pytest.mark.parametrize("k", [1, 3, 47, 63, 64, 65, 100])
def test_compiled_choice_keeps_faiss_entries_through_ties(k, monkeypatch):
    """Rows of 1 to 2,300 scores around ``k``, 64 and its multiples, from 3 to
    2,000,001 values (ties everywhere to almost none), some entries or whole
    rows empty: each row keeps the entries (ids and scores) FAISS's heap keeps;
    a row whose largest kept score is held once has it where FAISS's has it
    first, and exactly the rows where FAISS's best is held twice or more are
    handed back."""
    monkeypatch.delenv("NEGMINE_COMPILED", raising=False)
    choose = compiled.int_top()
    assert choose is not None
    rng = np.random.default_rng(k)
    handed = 0
    for w in sorted({1, k - 1, k, k + 1, 63, 64, 65, 128, 130, 700, 2300} - {0}):
        for spread, empty in [(1, 0.0), (20, 0.05), (10**6, 0.0), (10**6, 0.3), (3, 0.9)]:
            scores = rng.integers(-spread, spread + 1, size=(40, w)).astype(np.int32)
            scores[rng.random(scores.shape) < empty] = _INT_EMPTY
            scores[7] = _INT_EMPTY  # nothing to keep
            ref_d, ref_i = _faiss_top(scores, k)
            got_d = np.full_like(ref_d, _INT_EMPTY)
            got_i = np.full_like(ref_i, -1)
            redo = choose(scores, got_d, got_i)
            for r in range(scores.shape[0]):
                want = sorted(zip(ref_i[r].tolist(), ref_d[r].tolist(), strict=True))
                have = sorted(zip(got_i[r].tolist(), got_d[r].tolist(), strict=True))
                assert have == want, (w, spread, empty, r)
            top = ref_d.max(axis=1)
            tied = ((ref_d == top[:, None]).sum(axis=1) > 1) & (top > _INT_EMPTY)
            np.testing.assert_array_equal(redo, tied)
            rows = np.arange(scores.shape[0])
            best = ~tied
            np.testing.assert_array_equal(got_i[rows, got_d.argmax(axis=1)][best],
                                          ref_i[rows, ref_d.argmax(axis=1)][best])  # fmt: skip
            handed += int(redo.sum())
    assert handed > 0 or k == 1  # a heap of one holds no tie


def test_sub_list_choice_is_the_same_compiled_or_not(monkeypatch):
    """Sub-list centroid codes drawn from few rows (ties at the best and at the
    cut), queries skipping their own cluster, chunks of a few rows: the probe
    sets and each query's best sub-list are the same with the compiled choice
    on and off."""
    from negmine.index.sublists import SubLists
    from negmine.search import probe as probe_mod

    rng = np.random.default_rng(2)
    per = rng.integers(1, 6, size=60)
    first = np.concatenate([[0], np.cumsum(per)])
    g, d = int(first[-1]), 16
    codes = rng.integers(-4, 5, size=(12, d)).astype(np.int8)[rng.integers(0, 12, size=g)]
    sub = SubLists(np.arange(g + 1, dtype=np.int64), np.arange(g, dtype=np.int64), first, codes)
    xw = rng.integers(-127, 128, size=(500, d)).astype(np.int8)
    cluster = rng.integers(0, 60, size=500)
    monkeypatch.setattr(probe_mod, "SUB_SCORE_BUFFER", 7 * g)
    out = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("NEGMINE_COMPILED", flag)
        for nprobe in (1, 5, 80):
            probes, best = probe_mod.sub_list_probes(sub, xw, cluster, nprobe)
            out[flag, nprobe] = (np.sort(probes, axis=1), best)
    for nprobe in (1, 5, 80):
        np.testing.assert_array_equal(out["1", nprobe][0], out["0", nprobe][0])
        np.testing.assert_array_equal(out["1", nprobe][1], out["0", nprobe][1])
    scores = probe_mod.sub_list_scores(sub, xw, cluster)
    top = np.sort(scores, axis=1)
    assert (top[:, -1] == top[:, -2]).any()  # some best is tied


def _digest(res) -> str:
    h = hashlib.sha256()
    for name in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
        h.update(np.ascontiguousarray(res[name].numpy()).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("spec", ["clusters,SQ8", "clusters,fast"])
def test_mining_bytes_are_the_same_with_the_compiled_push_on_and_off(spec, monkeypatch):
    """Whole mining runs over 8-bit lists, on a corpus whose duplicated sources
    tie in every score: ids, tiers and every float bit agree on and off."""
    corpus = small_corpus(n_sources=900, n_clusters=6, n_questions=300, d=24, seed=4)
    src = corpus["source_embeddings"]
    src[450:] = src[:450]  # every source twice: exact ties in the integer scores
    idx = build_index(corpus, spec)
    kw = {"n_neg": 6, "tier_proportions": [1, 1, 3, 1], "adjacent_k": 2, "seed": 9}
    digests, versions = {}, {}
    for flag in ("0", "1"):
        monkeypatch.setenv("NEGMINE_COMPILED", flag)
        versions[flag] = compiled.compiled_version()
        digests[flag] = _digest(mine_negatives(**corpus, **kw, index=idx, nprobe=3, rerank=1))
    assert versions["0"] is None and versions["1"] is not None
    assert digests["0"] == digests["1"]


@pytest.mark.parametrize("spec", ["clusters,fast", "IVF8,Flat"])
def test_mining_memory_mapped_embeddings_gives_the_same_bytes_on_and_off(
    spec, tmp_path, monkeypatch
):
    """Embeddings memory-mapped from files (the pair stage's cosines, the exact
    re-rank and the row reads all compiled), the near-duplicate filter on:
    the bytes of the same run with the compiled kernels off, and of a run on
    the arrays in memory; the run statistics name numba only when they ran."""
    from negmine import NegativeMiner

    corpus = small_corpus(n_sources=1500, n_clusters=6, n_questions=500, d=40, seed=8)
    mapped = dict(corpus)
    for name in ("source_embeddings", "question_embeddings"):
        np.save(tmp_path / f"{name}.npy", corpus[name])
        mapped[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    idx = build_index(corpus, spec)
    kw = {"n_neg": 6, "tier_proportions": [1, 1, 3, 1], "adjacent_k": 2, "seed": 3,
          "near_duplicate_threshold": 0.9, "index": idx, "nprobe": 3}  # fmt: skip
    if spec == "clusters,fast":
        kw["rerank"] = 2
    runs = {}
    for flag, inputs in (("0", mapped), ("1", mapped), ("1-memory", corpus)):
        monkeypatch.setenv("NEGMINE_COMPILED", flag[0])
        miner = NegativeMiner(**inputs, **kw)
        runs[flag] = (_digest(miner.mine_all_negatives()), miner.last_stats["compiled"])
    assert runs["0"][0] == runs["1"][0] == runs["1-memory"][0]
    assert runs["0"][1] is None and runs["1"][1] == compiled.compiled_version() is not None
    if spec != "clusters,fast":  # float32 lists in memory: nothing compiled served the run
        assert runs["1-memory"][1] is None


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("NEGMINE_COMPILED", "0")
    assert compiled.int_push() is None and compiled.compiled_version() is None
    monkeypatch.setenv("NEGMINE_COMPILED", "1")
    assert compiled.int_push() is not None


def test_import_negmine_does_not_import_numba():
    code = "import sys, negmine; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_numba_the_push_is_faiss_s():
    """Where numba cannot be imported, the kernels are off (FAISS's push runs)."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from negmine import _compiled as compiled\n"
        "print(compiled.int_push() is None, compiled.compiled_version() is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_numba_with_its_jit_disabled_leaves_the_push_to_faiss():
    """``NUMBA_DISABLE_JIT=1`` would run the kernels as Python: they stay off."""
    code = "from negmine import _compiled as compiled; print(compiled.int_push() is None)"
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "True"


def _mapped_sources(tmp_path, n: int, d: int, seed: int) -> np.ndarray:
    """A memory-mapped float32 source file with rows of every scale, a few of
    them with squared norms outside float32's safe range (the float64 path)."""
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((n, d)) * rng.uniform(0.05, 20.0, (n, 1))
    src[::97] *= 1e-20
    src[5::89] *= 1e20
    np.save(tmp_path / f"src{d}.npy", src.astype(np.float32))
    return np.load(tmp_path / f"src{d}.npy", mmap_mode="r")


@pytest.mark.parametrize("d", [1, 13, 48, 384])
def test_compiled_cosines_keep_every_bit_of_numpy_s(d, tmp_path, monkeypatch):
    """Pair cosines and an exact re-rank read from a memory-mapped file, on two
    scan threads: the same float32 bits with the compiled cosines on and off,
    and within float32 rounding of float64 cosines computed here."""
    from negmine import vectors

    monkeypatch.setattr(vectors, "SCAN_MIN_PART", 64)  # two threads on a small file
    src = _mapped_sources(tmp_path, 3000, d, seed=d)
    rng = np.random.default_rng(d + 1)
    questions = rng.standard_normal((400, d)).astype(np.float32)
    ids = rng.integers(0, 3000, (900, 7))
    qs, anchors = rng.integers(0, 400, 900), rng.integers(0, 3000, 900)
    qvecs = normalized_float32(rng.standard_normal((50, d)))
    rows = rng.integers(0, 50, 900)
    ids_rr = ids.copy()
    ids_rr[::5, 3] = -1
    got = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("NEGMINE_COMPILED", flag)
        sv = vectors.SourceVectors(src, None)
        assert sv._scans()
        got[flag] = (
            *sv.pair_cosines(questions, ids, qs, anchors),
            sv.to_queries(qvecs, rows, ids_rr),
        )
    assert compiled.row_cosines() is not None  # the compiled run did run compiled
    for off, on in zip(got["0"], got["1"], strict=True):
        assert off.tobytes() == on.tobytes()
    s64 = np.asarray(src, dtype=np.float64)
    s64 /= np.linalg.norm(s64, axis=1, keepdims=True)
    q64 = questions / np.linalg.norm(questions.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(got["1"][0], np.einsum("pd,pkd->pk", q64[qs], s64[ids]), atol=2e-6)
    np.testing.assert_allclose(
        got["1"][1], np.einsum("pd,pkd->pk", s64[anchors], s64[ids]), atol=2e-6
    )
    want = np.where(ids_rr >= 0, np.einsum("pd,pkd->pk", qvecs[rows], s64[ids_rr]), -np.inf)
    np.testing.assert_allclose(got["1"][3], want, atol=2e-6)


def test_compiled_cosines_that_differ_from_numpy_s_are_refused():
    """The first-use check holds the kernel to numpy's bits: the kernel passes it,
    and the same cosines summed in float64 (a different rounding) fail it."""
    from negmine import _numba

    assert compiled._matches_numpy(_numba.row_cosines)

    def float64_sums(block, local, qa, ia, qb, ib, out_a, out_b, at):
        sq = np.einsum("ij,ij->i", block[local].astype(np.float64), block[local])
        bad = np.flatnonzero(~((sq > 1e-30) & (sq < 1e30)))
        unit = block[local] / np.sqrt(sq)[:, None]
        out_a[at] = np.einsum("ij,ij->i", qa[ia], unit)
        out_b[at] = np.einsum("ij,ij->i", qb[ib], unit)
        return bad

    assert not compiled._matches_numpy(float64_sums)


@pytest.mark.parametrize("both", [True, False])
def test_compiled_cosines_on_windows_shorter_and_longer_than_the_look_ahead(both):
    """The kernel asks the caches for rows a few steps ahead: windows of 0 rows
    up to past that distance, scattered operand rows, give numpy's bits and
    leave every other output entry alone."""
    from negmine import _numba

    cos = compiled.row_cosines()
    assert cos is not None
    rng = np.random.default_rng(7)
    d = 384
    block = rng.standard_normal((40, d)).astype(np.float32)
    qa = rng.standard_normal((300, d)).astype(np.float32)
    qb = rng.standard_normal((300, d)).astype(np.float32)
    for m in range(0, 2 * _numba.AHEAD + 3):
        local = rng.permutation(40)[:m]
        ia, ib = rng.integers(0, 300, m), rng.integers(0, 300, m)
        at = rng.permutation(60)[:m]
        out_a = np.full(60, 9.0, dtype=np.float32)
        out_b = np.full(60, 9.0, dtype=np.float32)
        bad = cos(block, local, qa, ia, qb, ib if both else ib[:0], out_a, out_b, at)
        assert bad.size == 0
        unit = normalized_float32(block[local])
        want_a = np.full(60, 9.0, dtype=np.float32)
        want_a[at] = np.einsum("ij,ij->i", qa[ia], unit)
        assert out_a.tobytes() == want_a.tobytes()
        want_b = np.full(60, 9.0, dtype=np.float32)
        if both:
            want_b[at] = np.einsum("ij,ij->i", qb[ib], unit)
        assert out_b.tobytes() == want_b.tobytes()
