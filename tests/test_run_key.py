"""The run key changes with everything that shapes the output, and only with that."""

from __future__ import annotations

import numpy as np
import pytest
from reference import small_corpus

from negmine import NegativeMiner

BASE = {"n_neg": 8, "tier_proportions": [2, 2, 2, 2], "adjacent_k": 2, "seed": 5}


@pytest.fixture(scope="module")
def corpus():
    return small_corpus(n_sources=300, n_clusters=6, n_questions=80, seed=9)


def _key(corpus, **kw):
    return NegativeMiner(**corpus, **{**BASE, **kw}).run_key()


def _changed(corpus, name):
    c = {k: v.copy() for k, v in corpus.items()}
    a = c[name]
    if name == "pair_indices":
        a[0, 1] = (a[0, 1] + 1) % len(c["source_embeddings"])
    elif name in ("pair_cluster_ids", "source_cluster_ids"):
        a[3] = (a[3] + 1) % len(c["centroid_embeddings"])
    else:
        a[1, 0] += 0.25
    return c


@pytest.mark.parametrize(
    "name",
    ["source_embeddings", "question_embeddings", "centroid_embeddings", "pair_indices",
     "pair_cluster_ids", "source_cluster_ids"],
)  # fmt: skip
def test_each_input_changes_the_key(corpus, name):
    assert _key(_changed(corpus, name)) != _key(corpus)


@pytest.mark.parametrize(
    "change",
    [{"n_neg": 9}, {"tier_proportions": [3, 2, 2, 1]}, {"adjacent_k": 3}, {"seed": 6},
     {"max_score": 0.9}, {"relative_margin": 0.1}, {"absolute_margin": 0.1},
     {"near_duplicate_threshold": 0.99}, {"tier3_rank_window": (1, 5)}, {"nprobe": 2},
     {"recall_sample": 10, "nprobe": 2}],
)  # fmt: skip
def test_each_setting_changes_the_key(corpus, change):
    assert _key(corpus, **change) != _key(corpus)


def test_settings_that_cannot_change_the_output_keep_the_key(corpus):
    base = _key(corpus)
    assert _key(corpus, batch_size=7) == base
    assert _key(corpus, executor="ray") == base  # no Ray started: the key needs no run
    res_a = NegativeMiner(**corpus, **BASE, batch_size=7).mine_all_negatives()
    res_b = NegativeMiner(**corpus, **BASE).mine_all_negatives()
    assert np.array_equal(res_a["hard_negatives"].numpy(), res_b["hard_negatives"].numpy())


def test_a_centroid_change_is_not_resumed_as_the_same_run(corpus, tmp_path):
    """Moved centroids move tier 2: a resume must not reuse the finished run."""
    from negmine import mine_negatives

    out = tmp_path / "out"
    first = mine_negatives(**corpus, **BASE, output_dir=out)
    moved = _changed(corpus, "centroid_embeddings")
    moved["centroid_embeddings"] = moved["centroid_embeddings"][::-1].copy()
    again = mine_negatives(**moved, **BASE, output_dir=out, resume=True, overwrite=True)
    fresh = mine_negatives(**moved, **BASE)
    assert np.array_equal(again["hard_negatives"].numpy(), fresh["hard_negatives"].numpy())
    assert not np.array_equal(again["hard_negatives"].numpy(), first["hard_negatives"].numpy())


def test_centroids_count_even_where_the_adjacency_stays(corpus):
    """A small centroid move keeps tier 2's table but moves the probe sets of
    ``nprobe``: the key must change although the adjacency did not."""
    moved = {k: v.copy() for k, v in corpus.items()}
    moved["centroid_embeddings"][2] += 1e-3
    a = NegativeMiner(**corpus, **BASE, nprobe=2)
    b = NegativeMiner(**moved, **BASE, nprobe=2)
    assert np.array_equal(a.layout.adjacent, b.layout.adjacent)
    assert a.run_key() != b.run_key()


def test_random_seed_is_the_old_name_of_seed(corpus):
    kw = {k: v for k, v in BASE.items() if k != "seed"}
    with pytest.warns(DeprecationWarning, match="`random_seed` is now `seed`"):
        old = NegativeMiner(**corpus, **kw, random_seed=11)
    new = NegativeMiner(**corpus, **kw, seed=11)
    assert old.config == new.config and old.run_key() == new.run_key()
    with pytest.raises(TypeError, match="not both"):
        NegativeMiner(**corpus, **kw, seed=1, random_seed=1)
