"""The exact reference filtered through 8-bit codes equals exact search."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import kernel_inputs
from reference import outside_cluster_brute, small_corpus

import negmine.search.refine as refine_mod
from negmine.search import exact_outside_cluster
from negmine.search.refine import refined_outside_cluster
from negmine.synth import make_corpus
from negmine.vectors import SourceVectors


def _run(corpus: dict, k: int, depth: int, mapped_dir=None):
    inp = kernel_inputs(corpus)
    raw = corpus["source_embeddings"]
    if mapped_dir is not None:
        np.save(mapped_dir / "src.npy", raw)
        raw = np.load(mapped_dir / "src.npy", mmap_mode="r")
    vectors = SourceVectors(raw, inp["positives"])
    args = {key: v for key, v in inp.items() if key not in ("centroids", "vectors")}
    got = refined_outside_cluster(vectors.row_range(), vectors, **args, k=k, depth=depth)
    ids = inp["layout"].order  # the exact kernel over sources in id order
    rows = np.empty_like(inp["vectors"])
    rows[ids] = inp["vectors"]
    want = exact_outside_cluster(rows, **args, k=k)
    return inp, got, want


def _brute(corpus: dict, inp: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    return outside_cluster_brute(corpus, inp["query_question"], inp["query_cluster"], k)


@pytest.mark.parametrize("depth", [4, 16, 64])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_brute_force_and_exact_kernel(seed, depth):
    corpus = small_corpus(n_sources=3000, n_clusters=12, n_questions=400, d=32, seed=seed)
    k = 4
    inp, (gd, gi), (wd, wi) = _run(corpus, k, depth)
    bi, bd = _brute(corpus, inp, k)
    np.testing.assert_array_equal(gi, bi)
    np.testing.assert_allclose(gd, bd, atol=2e-6)
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_allclose(gd, wd, atol=2e-6)


def test_redoes_what_it_cannot_prove(monkeypatch):
    """A depth of k leaves the bound above the k-th score for many queries: those
    are searched again exactly, and the result is still exact."""
    corpus = small_corpus(n_sources=2000, n_clusters=10, n_questions=300, d=24, seed=3)
    redone = []
    real = refine_mod._Refine.run

    def counting(self, xq, cl, qq):
        out = real(self, xq, cl, qq)
        redone.append(int((~self.proven).sum()))
        return out

    monkeypatch.setattr(refine_mod._Refine, "run", counting)
    inp, (gd, gi), _ = _run(corpus, 3, 3)
    assert redone[-1] > 0
    bi, bd = _brute(corpus, inp, 3)
    np.testing.assert_array_equal(gi, bi)
    np.testing.assert_allclose(gd, bd, atol=2e-6)


def test_sources_outside_the_sampled_range_are_scored_exactly(monkeypatch, tmp_path):
    """Code ranges from a sample that misses the extreme rows clip them: they
    must still be found, from a memory-mapped file as well."""
    corpus = small_corpus(n_sources=3000, n_clusters=12, n_questions=300, d=32, seed=5)
    src = corpus["source_embeddings"]
    rng = np.random.default_rng(0)
    spikes = rng.choice(src.shape[0], 40, replace=False)
    src[spikes, rng.integers(0, src.shape[1], 40)] += 40.0  # far outside any range
    # Make a few spiky sources the best match of some questions.
    qe = corpus["question_embeddings"]
    qe[:40] = src[spikes] + 0.01 * rng.standard_normal((40, src.shape[1])).astype(np.float32)
    monkeypatch.setattr(refine_mod, "SAMPLE_ROWS", 64)
    inp, (gd, gi), _ = _run(corpus, 3, 16, mapped_dir=tmp_path)
    bi, bd = _brute(corpus, inp, 3)
    np.testing.assert_array_equal(gi, bi)
    np.testing.assert_allclose(gd, bd, atol=2e-6)
    assert np.isin(spikes, gi).sum() >= 20


def test_short_rows_and_no_queries():
    corpus = small_corpus(n_sources=60, n_clusters=3, n_questions=40, d=8, seed=2)
    inp, (gd, gi), (wd, wi) = _run(corpus, 50, 8)
    np.testing.assert_array_equal(gi, wi)
    np.testing.assert_allclose(gd, wd, atol=1e-6)  # the exact kernel's empty value too
    assert (gi == -1).any()
    inp = kernel_inputs(corpus)
    vectors = SourceVectors(corpus["source_embeddings"], inp["positives"])
    args = {key: v[:0] if key.startswith("query_") else v
            for key, v in inp.items() if key not in ("centroids", "vectors")}  # fmt: skip
    d, i = refined_outside_cluster(vectors.row_range(), vectors, **args, k=3)
    assert d.shape == (0, 3) and i.shape == (0, 3)


def test_realistic_corpus_needs_few_redos(monkeypatch):
    """On the bench's synthetic corpus (a real-embedding spectrum) the default
    depth proves nearly every query: the filter does the work."""
    corpus = make_corpus(20000, 40, 600, d=64, seed=1, spectrum="minilm")
    inp = kernel_inputs(corpus)
    vectors = SourceVectors(corpus["source_embeddings"], inp["positives"])
    args = {key: v for key, v in inp.items() if key not in ("centroids", "vectors")}
    seen = {}
    real = refine_mod._Refine.run

    def keep(self, *a):
        out = real(self, *a)
        seen["redone"] = int((~self.proven).sum())
        return out

    monkeypatch.setattr(refine_mod._Refine, "run", keep)
    _, got = refined_outside_cluster(vectors.row_range(), vectors, **args, k=3)
    want, _ = _brute(corpus, inp, 3)
    np.testing.assert_array_equal(got, want)
    assert seen["redone"] < 0.05 * args["query_rows"].size


@pytest.mark.parametrize(("block", "chunk"), [(64, 1000), (7, 333), (4096, 40000)])
def test_blocks_and_chunks_do_not_change_the_result(monkeypatch, block, chunk):
    """Several query blocks, chunks with a tail past the last group, unproven
    queries in several blocks: the same ids as brute force."""
    corpus = small_corpus(n_sources=3000, n_clusters=12, n_questions=300, d=32, seed=7)
    monkeypatch.setattr(refine_mod, "CODE_BLOCK", block)
    monkeypatch.setattr(refine_mod, "CODE_CHUNK", chunk)
    inp, (gd, gi), _ = _run(corpus, 3, 5)
    bi, bd = _brute(corpus, inp, 3)
    np.testing.assert_array_equal(gi, bi)
    np.testing.assert_allclose(gd, bd, atol=2e-6)


def test_codes_decode_as_the_bound_assumes():
    """The bound's algebra: code u of dimension j decodes to low_j + (u + 0.5) * width_j / 255."""
    rng = np.random.default_rng(0)
    low = rng.uniform(-0.3, 0, 48).astype(np.float32)
    width = rng.uniform(0.05, 0.6, 48).astype(np.float32)
    sq = refine_mod._quantizer(low, width)
    codes = rng.integers(0, 256, (500, 48)).astype(np.uint8)
    want = low + (codes.astype(np.float64) + 0.5) * (width / np.float32(255)).astype(np.float64)
    np.testing.assert_allclose(sq.decode(codes), want, atol=1e-6)
