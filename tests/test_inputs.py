"""Bad input gets a clear error naming the argument; never a wrong result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reference import check_rows, small_corpus

from negmine import NegativeMiner, mine_negatives
from negmine.config import resolve_tier_counts


@pytest.fixture(scope="module")
def corpus():
    return small_corpus(n_sources=120, n_clusters=4, n_questions=30, d=8, seed=7)


def _with(corpus, **changes):
    c = dict(corpus)
    c.update(changes)
    return c


def _bad_row(a, row, value):
    a = np.array(a, copy=True)
    a[row] = value
    return a


@pytest.mark.parametrize(
    ("name", "make", "exc", "pattern"),
    [
        (
            "source_embeddings",
            lambda c: _bad_row(c["source_embeddings"], 5, np.nan),
            ValueError,
            r"`source_embeddings` must hold only finite values; got NaN or inf in row 5",
        ),
        (
            "question_embeddings",
            lambda c: _bad_row(c["question_embeddings"], 3, np.inf),
            ValueError,
            r"`question_embeddings`.*row 3",
        ),
        (
            "centroid_embeddings",
            lambda c: _bad_row(c["centroid_embeddings"], 1, 0.0),
            ValueError,
            r"`centroid_embeddings`.*all-zero row 1",
        ),
        (
            "source_embeddings",
            lambda c: _bad_row(c["source_embeddings"], 9, 0.0),
            ValueError,
            r"`source_embeddings`.*all-zero row 9",
        ),
        (
            "question_embeddings",
            lambda c: c["question_embeddings"][:, :7],
            ValueError,
            r"`question_embeddings` must have width d=8 like `source_embeddings`; "
            r"got shape \[30, 7\]",
        ),
        (
            "source_embeddings",
            lambda c: c["source_embeddings"][0],
            ValueError,
            r"`source_embeddings` must be a 2-D",
        ),
        (
            "source_embeddings",
            lambda c: c["source_embeddings"].astype(np.int32),
            TypeError,
            r"`source_embeddings` must have a floating dtype",
        ),
        ("source_embeddings", lambda c: "not an array", TypeError, r"`source_embeddings` must be"),
        (
            "pair_indices",
            lambda c: c["pair_indices"].astype(np.float32),
            TypeError,
            r"`pair_indices.*integer dtype",
        ),
        (
            "pair_indices",
            lambda c: c["pair_indices"][:, :1],
            ValueError,
            r"`pair_indices` must have shape \[P, 2\]",
        ),
        (
            "pair_indices",
            lambda c: _bad_row(c["pair_indices"], (4, 0), 30),
            ValueError,
            r"`pair_indices\[:, 0\]` must hold ids in \[0, 30\).*got 30 at \[4\]",
        ),
        (
            "pair_indices",
            lambda c: _bad_row(c["pair_indices"], (2, 1), -1),
            ValueError,
            r"`pair_indices\[:, 1\]` must hold ids in \[0, 120\).*got -1 at \[2\]",
        ),
        (
            "pair_cluster_ids",
            lambda c: _bad_row(c["pair_cluster_ids"], 0, 4),
            ValueError,
            r"`pair_cluster_ids` must hold ids in \[0, 4\).*got 4 at \[0\]",
        ),
        (
            "pair_cluster_ids",
            lambda c: c["pair_cluster_ids"][:-1],
            ValueError,
            r"`pair_cluster_ids` must have one entry per pair",
        ),
        (
            "pair_cluster_ids",
            lambda c: c["pair_cluster_ids"].astype(np.float64),
            TypeError,
            r"`pair_cluster_ids` must have an integer dtype",
        ),
        (
            "source_cluster_ids",
            lambda c: _bad_row(c["source_cluster_ids"], 7, -2),
            ValueError,
            r"`source_cluster_ids` must hold ids in \[0, 4\).*got -2 at \[7\]",
        ),
        (
            "source_cluster_ids",
            lambda c: c["source_cluster_ids"][:, None],
            ValueError,
            r"`source_cluster_ids` must have shape \[n\]",
        ),
        (
            "source_cluster_ids",
            lambda c: c["source_cluster_ids"][:-3],
            ValueError,
            r"`source_cluster_ids` must have one entry per source \(S = 120\); got length 117",
        ),
    ],
)
def test_bad_arrays(corpus, name, make, exc, pattern):
    with pytest.raises(exc, match=pattern):
        NegativeMiner(**_with(corpus, **{name: make(corpus)}))


@pytest.mark.parametrize(
    ("kw", "exc", "pattern"),
    [
        ({"n_neg": 0}, ValueError, r"`n_neg` must be at least 1; got 0"),
        ({"n_neg": 2.5}, TypeError, r"`n_neg` must be an integer"),
        ({"adjacent_k": -1}, ValueError, r"`adjacent_k` must be >= 0"),
        ({"tier_proportions": [1, 2, 3]}, ValueError, r"`tier_proportions` must hold four"),
        ({"tier_proportions": [1, -2, 3, 4]}, ValueError, r"non-negative"),
        ({"tier_proportions": [0, 0, 0, 0]}, ValueError, r"positive sum"),
        ({"tier_proportions": [1, float("nan"), 1, 1]}, ValueError, r"`tier_proportions`"),
        ({"tier_proportions": "3432"}, TypeError, r"`tier_proportions`"),
        ({"batch_size": 0}, ValueError, r"`batch_size` must be a positive integer"),
    ],
)
def test_bad_settings(corpus, kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        NegativeMiner(**corpus, **kw)


def test_proportions_rules():
    assert resolve_tier_counts(12, None) == (3, 3, 3, 3)
    assert resolve_tier_counts(10, None) == (3, 3, 2, 2)
    assert resolve_tier_counts(12, [3, 4, 3, 2]) == (3, 4, 3, 2)
    # Ints that do not sum to n_neg are weights: largest remainder.
    assert resolve_tier_counts(12, [1, 1, 1, 1]) == (3, 3, 3, 3)
    assert resolve_tier_counts(10, [0.5, 0.2, 0.2, 0.1]) == (5, 2, 2, 1)
    assert resolve_tier_counts(7, [1, 1, 1, 0]) == (3, 2, 2, 0)
    for n in range(1, 30):
        assert sum(resolve_tier_counts(n, [0.3, 0.3, 0.3, 0.1])) == n


def test_inputs_of_every_container_type_agree(corpus):
    base = mine_negatives(**corpus, n_neg=6)
    as_torch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in corpus.items()}
    as_f64 = _with(corpus, source_embeddings=corpus["source_embeddings"].astype(np.float64))
    as_f16 = _with(corpus, question_embeddings=corpus["question_embeddings"].astype(np.float16))
    as_int32 = _with(corpus, pair_indices=corpus["pair_indices"].astype(np.int32))
    strided = _with(corpus, source_embeddings=np.asfortranarray(corpus["source_embeddings"]))
    ro = np.array(corpus["source_embeddings"])
    ro.setflags(write=False)
    for variant in (as_torch, as_f64, as_int32, strided, _with(corpus, source_embeddings=ro)):
        res = mine_negatives(**variant, n_neg=6)
        assert torch.equal(res["hard_negatives"], base["hard_negatives"])
    res16 = mine_negatives(**as_f16, n_neg=6)
    check_rows(res16, corpus, 3)


def test_memmap_inputs(tmp_path, corpus):
    mm = {}
    for k, v in corpus.items():
        np.save(tmp_path / f"{k}.npy", v)
        mm[k] = np.load(tmp_path / f"{k}.npy", mmap_mode="r")
    a = mine_negatives(**mm, n_neg=6)
    b = mine_negatives(**corpus, n_neg=6)
    assert torch.equal(a["hard_negatives"], b["hard_negatives"])


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_memory_mapped_inputs_release_their_pages(tmp_path):
    from negmine._checks import check_embeddings, release_pages

    a = np.random.default_rng(0).standard_normal((1 << 15, 512)).astype(np.float32)  # 64 MiB
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    before = _rss_file_kb()
    assert float(m.sum(dtype=np.float64)) == pytest.approx(float(a.sum(dtype=np.float64)))
    assert _rss_file_kb() - before > 48 * 1024  # reading mapped the pages in
    release_pages(m[10:20])  # a view reaches its memmap
    assert _rss_file_kb() - before < 8 * 1024
    # A full check reads every row and leaves nothing mapped behind.
    check_embeddings(m, "source_embeddings")
    assert _rss_file_kb() - before < 8 * 1024
    np.testing.assert_array_equal(m[-3:], a[-3:])  # still readable


def test_copy_on_write_maps_keep_their_changes(tmp_path):
    from negmine._checks import release_pages

    np.save(tmp_path / "a.npy", np.zeros((1024, 8), dtype=np.float32))
    m = np.load(tmp_path / "a.npy", mmap_mode="c")
    m[5] = 7.0
    release_pages(m)
    assert (m[5] == 7.0).all()


def test_take_rows_gathers_exactly_and_leaves_nothing_mapped(tmp_path):
    from negmine._checks import TAKE_STEP, take_rows

    a = np.random.default_rng(1).standard_normal((1 << 14, 256)).astype(np.float32)  # 16 MiB
    np.save(tmp_path / "a.npy", a)
    m = np.load(tmp_path / "a.npy", mmap_mode="r")
    rows = np.random.default_rng(2).choice(a.shape[0], 3 * TAKE_STEP + 7, replace=False)
    before = _rss_file_kb()
    got = take_rows(m, rows)
    assert _rss_file_kb() - before < 4 * 1024
    np.testing.assert_array_equal(got, a[rows])
    np.testing.assert_array_equal(take_rows(a, rows[:5]), a[rows[:5]])  # plain arrays too
