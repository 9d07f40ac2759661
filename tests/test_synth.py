"""Tests of the synthetic corpus generator."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import blas_kernel
from hypothesis import given, settings
from hypothesis import strategies as st

from negmine import synth
from negmine.synth import make_corpus, top_hits_share

KEYS = {
    "source_embeddings",
    "question_embeddings",
    "centroid_embeddings",
    "pair_indices",
    "pair_cluster_ids",
    "source_cluster_ids",
}


@pytest.fixture(scope="module")
def corpus() -> dict[str, np.ndarray]:
    return make_corpus(20_000, 50, 5_000, 384, seed=0)


@pytest.fixture(scope="module")
def wide_corpus() -> dict[str, np.ndarray]:
    """More, smaller clusters: the neighbourhood structure shows better."""
    return make_corpus(20_000, 200, 3_000, 384, seed=1)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _first_pairs(c: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Question ids and the row of each one's first pair."""
    return np.unique(c["pair_indices"][:, 0], return_index=True)


def _check_invariants(c: dict[str, np.ndarray], s: int, n_c: int, p: int, d: int) -> None:
    assert set(c) == KEYS
    src, qs, cents = c["source_embeddings"], c["question_embeddings"], c["centroid_embeddings"]
    pairs, pcl, scl = c["pair_indices"], c["pair_cluster_ids"], c["source_cluster_ids"]
    n_q = qs.shape[0]
    assert src.dtype == qs.dtype == cents.dtype == np.float32
    assert pairs.dtype == pcl.dtype == scl.dtype == np.int64
    assert src.shape == (s, d)
    assert qs.shape[1] == d and 1 <= n_q <= p
    assert cents.shape == (n_c, d)
    assert pairs.shape == (p, 2)
    assert pcl.shape == (p,)
    assert scl.shape == (s,)
    for a in (src, qs, cents):
        assert np.isfinite(a).all()
    np.testing.assert_allclose(np.linalg.norm(src, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(qs, axis=1), 1.0, atol=1e-5)
    assert scl.min() >= 0 and scl.max() < n_c
    assert pcl.min() >= 0 and pcl.max() < n_c
    assert pairs[:, 1].min() >= 0 and pairs[:, 1].max() < s
    # every question has a pair; pairs come grouped by question
    assert np.array_equal(np.unique(pairs[:, 0]), np.arange(n_q))
    assert (np.diff(pairs[:, 0]) >= 0).all()
    counts = np.bincount(pairs[:, 0], minlength=n_q)
    if s >= counts.max():
        assert np.unique(pairs, axis=0).shape[0] == p, "duplicate pairs"


# --- determinism -------------------------------------------------------------


def test_same_seed_same_corpus() -> None:
    a = make_corpus(3_000, 30, 800, 64, seed=7, multi_positive=0.3, cluster_mismatch=0.1)
    b = make_corpus(3_000, 30, 800, 64, seed=7, multi_positive=0.3, cluster_mismatch=0.1)
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_output_does_not_depend_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # several chunks, so the threaded path really runs
    from negmine.synth import vectors

    monkeypatch.setattr(vectors, "_CHUNK_ROWS", 256)
    monkeypatch.setattr(vectors, "_MAX_WORKERS", 1)
    serial = make_corpus(3_000, 30, 2_000, 32, seed=5)
    monkeypatch.setattr(vectors, "_MAX_WORKERS", 3)
    monkeypatch.setattr(vectors, "_n_workers", lambda: 3)
    threaded = make_corpus(3_000, 30, 2_000, 32, seed=5)
    for key in KEYS:
        np.testing.assert_array_equal(serial[key], threaded[key], err_msg=key)


BLAS_CHILD = """
import hashlib, sys
import numpy as np
from negmine.synth import make_corpus

c = make_corpus(n_sources=6000, n_clusters=24, n_pairs=9000, d=32, seed=11)
print(hashlib.sha256(b"".join(np.ascontiguousarray(c[k]).tobytes() for k in sorted(c))).hexdigest())
"""


@pytest.mark.xfail(
    # Seen with OpenBLAS's Haswell kernels; its AVX-512 ones gave the same bytes on 1 and
    # 2 threads for this corpus.
    strict=blas_kernel() == "Haswell",
    raises=AssertionError,
    reason="the embeddings come from float32 products whose rounding follows the number "
    "of BLAS threads (pairs and cluster ids do not)",
)
def test_output_does_not_depend_on_blas_threads() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    digests = []
    for n in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n}
        proc = subprocess.run(
            [sys.executable, "-c", BLAS_CHILD],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        digests.append(proc.stdout.strip())
    assert digests[0] == digests[1]


def test_other_seed_other_corpus() -> None:
    a = make_corpus(3_000, 30, 800, 64, seed=7)
    b = make_corpus(3_000, 30, 800, 64, seed=8)
    for key in ("source_embeddings", "question_embeddings", "pair_indices"):
        assert a[key].shape != b[key].shape or not np.array_equal(a[key], b[key]), key


def test_silent(capsys: pytest.CaptureFixture[str]) -> None:
    make_corpus(500, 5, 100, 16)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# --- shapes, dtypes, ranges ----------------------------------------------------


def test_shapes_dtypes_ranges(corpus: dict[str, np.ndarray]) -> None:
    _check_invariants(corpus, 20_000, 50, 5_000, 384)


@pytest.mark.parametrize(
    ("s", "n_c", "p", "d", "kw"),
    [
        (1, 1, 1, 2, {}),
        (1, 1, 4, 2, {}),  # more questions than sources
        (10, 10, 30, 3, {"multi_positive": 1.0}),  # one source per cluster
        (50, 4, 200, 8, {"n_questions": 10}),  # 20 positives per question
        (40, 2, 40, 5, {"multi_positive": 0.0}),
        (200, 7, 60, 32, {"n_questions": 60, "cluster_mismatch": 1.0}),
    ],
)
def test_edge_sizes(s: int, n_c: int, p: int, d: int, kw: dict) -> None:
    c = make_corpus(s, n_c, p, d, **kw)
    _check_invariants(c, s, n_c, p, d)
    if "n_questions" in kw:
        assert c["question_embeddings"].shape[0] == kw["n_questions"]


@settings(max_examples=25, deadline=None)
@given(
    s=st.integers(1, 300),
    n_c=st.integers(1, 40),
    p=st.integers(1, 300),
    d=st.integers(2, 24),
    seed=st.integers(0, 2**32),
    skew=st.floats(0.0, 3.0),
    overlap=st.floats(0.0, 1.0),
    multi=st.floats(0.0, 1.0),
    mismatch=st.floats(0.0, 1.0),
)
def test_invariants_hold_for_any_arguments(
    s: int,
    n_c: int,
    p: int,
    d: int,
    seed: int,
    skew: float,
    overlap: float,
    multi: float,
    mismatch: float,
) -> None:
    n_c = min(n_c, s)
    c = make_corpus(
        s,
        n_c,
        p,
        d,
        seed=seed,
        skew=skew,
        overlap=overlap,
        multi_positive=multi,
        cluster_mismatch=mismatch,
    )
    _check_invariants(c, s, n_c, p, d)


# --- cluster sizes --------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    s=st.integers(1, 5_000),
    n_c=st.integers(1, 500),
    skew=st.floats(0.0, 3.0),
    seed=st.integers(0, 1000),
)
def test_generating_sizes_sum_to_n_sources(s: int, n_c: int, skew: float, seed: int) -> None:
    n_c = min(n_c, s)
    sizes = synth._cluster_sizes(np.random.default_rng(seed), s, n_c, skew)
    assert sizes.shape == (n_c,)
    assert sizes.sum() == s
    assert sizes.min() >= 1


def test_sizes_are_heavy_tailed(corpus: dict[str, np.ndarray]) -> None:
    sizes = np.bincount(corpus["source_cluster_ids"], minlength=50)
    assert sizes.max() / np.median(sizes) >= 10
    assert sizes.min() >= 1


def test_sizes_are_even_without_skew() -> None:
    c = make_corpus(20_000, 50, 1_000, 64, skew=0.0)
    sizes = np.bincount(c["source_cluster_ids"], minlength=50)
    assert sizes.max() / sizes.min() <= 1.25


# --- k-means style labels ---------------------------------------------------------


def test_cluster_ids_are_the_nearest_centroid(corpus: dict[str, np.ndarray]) -> None:
    sims = corpus["source_embeddings"] @ _unit(corpus["centroid_embeddings"]).T
    ids = corpus["source_cluster_ids"]
    own = sims[np.arange(ids.size), ids]
    assert (own >= sims.max(axis=1) - 1e-5).all()
    assert np.mean(ids == sims.argmax(axis=1)) > 0.999


def test_centroids_are_cluster_means(corpus: dict[str, np.ndarray]) -> None:
    # one Lloyd update before the final assignment: close to the final means
    src, ids, cents = (
        corpus["source_embeddings"],
        corpus["source_cluster_ids"],
        corpus["centroid_embeddings"],
    )
    means = np.zeros_like(cents, dtype=np.float64)
    np.add.at(means, ids, src)
    means /= np.bincount(ids, minlength=cents.shape[0])[:, None]
    cos = np.einsum("ij,ij->i", _unit(cents), _unit(means))
    assert cos.min() >= 0.995
    assert np.median(np.linalg.norm(cents - means, axis=1)) < 1e-3
    # a mean of unit vectors is shorter than 1, so the centroids are not normalised
    assert (np.linalg.norm(cents, axis=1) < 0.99).all()


# --- neighbourhood structure ------------------------------------------------------------


def test_top_hits_mostly_in_own_cluster(corpus: dict[str, np.ndarray]) -> None:
    share = top_hits_share(corpus, k=3, sample=1_000)
    assert 0.90 <= share <= 0.98


def test_top_hits_share_band_with_many_clusters(wide_corpus: dict[str, np.ndarray]) -> None:
    share = top_hits_share(wide_corpus, k=3, sample=1_000)
    assert 0.90 <= share <= 0.98


def test_no_overlap_separates_clusters() -> None:
    shares = [
        top_hits_share(make_corpus(8_000, 40, 1_000, 384, seed=2, overlap=ov), k=3, sample=1_000)
        for ov in (0.0, 0.5, 1.0)
    ]
    s0, s_half, s1 = shares
    assert s0 >= 0.99
    assert s0 > s_half + 0.01
    assert 0.90 <= s_half <= 0.98
    assert s1 < s_half - 0.1


def test_foreign_hits_spread_over_several_clusters(wide_corpus: dict[str, np.ndarray]) -> None:
    c = wide_corpus
    src, scl = c["source_embeddings"], c["source_cluster_ids"]
    qids, first = _first_pairs(c)
    q = c["question_embeddings"][qids[:300]]
    own = c["pair_cluster_ids"][first[:300]]
    order = np.argsort(-(q @ src.T), axis=1)[:, :3000]
    distinct = []
    for row, cl in zip(order, own, strict=True):
        foreign = scl[row][scl[row] != cl][:20]
        assert foreign.size == 20
        distinct.append(np.unique(foreign).size)
    distinct = np.array(distinct)
    assert distinct.mean() >= 3.5
    assert np.mean(distinct >= 3) >= 0.7


# --- questions and pairs --------------------------------------------------------------


def test_questions_are_noisy_copies_of_their_positive(wide_corpus: dict[str, np.ndarray]) -> None:
    c = wide_corpus
    qids, first = _first_pairs(c)
    pos = c["pair_indices"][first, 1]
    q = c["question_embeddings"][qids]
    cos = np.einsum("ij,ij->i", q, c["source_embeddings"][pos])
    assert cos.min() >= 0.6 - 1e-4 and cos.max() <= 0.85 + 1e-4
    # the positive is usually, but not always, the best hit
    top1 = (q[:1000] @ c["source_embeddings"].T).argmax(axis=1)
    hit = np.mean(top1 == pos[:1000])
    assert 0.5 <= hit <= 0.95


def test_multi_positive_questions(corpus: dict[str, np.ndarray]) -> None:
    c = corpus
    pairs = c["pair_indices"]
    n_q = c["question_embeddings"].shape[0]
    assert n_q == round(5_000 / 1.15)
    counts = np.bincount(pairs[:, 0], minlength=n_q)
    assert set(np.unique(counts)) == {1, 2, 3}
    assert 0.07 <= np.mean(counts > 1) <= 0.13
    # extra positives come from the first positive's cluster or a neighbour
    _, first = _first_pairs(c)
    is_first = np.zeros(len(pairs), dtype=bool)
    is_first[first] = True
    scl = c["source_cluster_ids"]
    first_cl = scl[pairs[first, 1]]
    extra_cl = scl[pairs[~is_first, 1]]
    same = np.mean(extra_cl == first_cl[pairs[~is_first, 0]])
    assert 0.6 <= same < 1.0
    # each cluster's neighbours (by centroid) host the other extras
    cents = _unit(c["centroid_embeddings"])
    nbrs = np.argsort(-(cents @ cents.T), axis=1)[:, :6]
    near = (nbrs[first_cl[pairs[~is_first, 0]]] == extra_cl[:, None]).any(axis=1)
    assert near.mean() >= 0.95


def test_single_positive_without_multi() -> None:
    c = make_corpus(2_000, 20, 700, 32, multi_positive=0.0)
    assert c["question_embeddings"].shape[0] == 700
    assert np.array_equal(c["pair_indices"][:, 0], np.arange(700))


def test_many_positives_per_question() -> None:
    c = make_corpus(2_000, 20, 100, 32, n_questions=10)
    counts = np.bincount(c["pair_indices"][:, 0], minlength=10)
    assert (counts == 10).all()


def test_pair_clusters_follow_sources() -> None:
    c = make_corpus(3_000, 30, 2_000, 32)
    assert np.array_equal(c["pair_cluster_ids"], c["source_cluster_ids"][c["pair_indices"][:, 1]])


@pytest.mark.parametrize("frac", [0.05, 0.3])
def test_cluster_mismatch_fraction(frac: float) -> None:
    c = make_corpus(3_000, 30, 2_000, 32, cluster_mismatch=frac)
    true = c["source_cluster_ids"][c["pair_indices"][:, 1]]
    wrong = c["pair_cluster_ids"] != true
    assert abs(wrong.mean() - frac) <= 0.01


def test_top_hits_share_reads_pair_clusters() -> None:
    c = make_corpus(3_000, 30, 1_000, 64)
    base = top_hits_share(c, k=3, sample=500)
    mixed = make_corpus(3_000, 30, 1_000, 64, cluster_mismatch=0.5)
    assert top_hits_share(mixed, k=3, sample=500) < base - 0.3
    assert top_hits_share(c, k=1, sample=500) >= top_hits_share(c, k=10, sample=500)


def test_top_hits_share_matches_brute_force() -> None:
    c = make_corpus(2_000, 20, 400, 32, seed=3)
    qids, first = _first_pairs(c)
    sims = _unit(c["question_embeddings"][qids]) @ _unit(c["source_embeddings"]).T
    top = np.argsort(-sims, axis=1)[:, :5]
    own = c["pair_cluster_ids"][first]
    want = np.mean(c["source_cluster_ids"][top] == own[:, None])
    assert top_hits_share(c, k=5, sample=10_000) == pytest.approx(want)


# --- argument errors ------------------------------------------------------------------------


BASE = {"n_sources": 10, "n_clusters": 3, "n_pairs": 5, "d": 4}


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n_sources": 0, "n_clusters": 0}, "`n_sources` must be >= 1; got 0."),
        ({"n_clusters": 0}, "`n_clusters` must be >= 1; got 0."),
        ({"n_clusters": 11}, "`n_clusters` must be <= n_sources (10); got 11."),
        ({"n_pairs": 0}, "`n_pairs` must be >= 1; got 0."),
        ({"d": 1}, "`d` must be >= 2; got 1."),
        ({"seed": -1}, "`seed` must be >= 0; got -1."),
        ({"skew": -0.5}, "`skew` must be finite and >= 0; got -0.5."),
        ({"skew": float("inf")}, "`skew` must be finite and >= 0; got inf."),
        ({"overlap": 1.5}, "`overlap` must be in [0, 1]; got 1.5."),
        ({"overlap": float("nan")}, "`overlap` must be in [0, 1]; got nan."),
        ({"multi_positive": -0.1}, "`multi_positive` must be in [0, 1]; got -0.1."),
        ({"cluster_mismatch": 2}, "`cluster_mismatch` must be in [0, 1]; got 2."),
        ({"n_questions": 0}, "`n_questions` must be >= 1; got 0."),
        ({"n_questions": 6}, "`n_questions` must be <= n_pairs (5); got 6."),
    ],
)
def test_value_errors(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        make_corpus(**{**BASE, **kw})


@pytest.mark.parametrize(
    "kw",
    [
        {"n_sources": 10.0},
        {"n_clusters": True},
        {"d": "384"},
        {"n_questions": 2.5},
        {"overlap": "0.5"},
        {"skew": None},
    ],
)
def test_type_errors(kw: dict) -> None:
    name = next(iter(kw))
    with pytest.raises(TypeError, match=f"^`{name}` must be "):
        make_corpus(**{**BASE, **kw})


def test_numpy_scalars_are_accepted() -> None:
    c = make_corpus(np.int64(100), np.int32(5), np.int64(20), np.int64(8), overlap=np.float32(0.5))
    _check_invariants(c, 100, 5, 20, 8)


def test_top_hits_share_argument_errors() -> None:
    c = make_corpus(10, 2, 5, 4)
    with pytest.raises(ValueError, match=re.escape("`k` must be >= 1; got 0.")):
        top_hits_share(c, k=0)
    with pytest.raises(ValueError, match=re.escape("`k` must be <= the number of sources (10)")):
        top_hits_share(c, k=11)
    with pytest.raises(ValueError, match=re.escape("`sample` must be >= 1; got 0.")):
        top_hits_share(c, sample=0)
