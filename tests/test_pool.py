"""Pools of tier-3 candidates and re-mining from them."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from reference import positives_of, unit

from negmine.miner import mine_negatives
from negmine.remine import epoch_negatives, remine
from negmine.synth import make_corpus

# Three tier-3 blocks (4096 queries each) and two pair blocks' worth of rows.
CORPUS = {"n_sources": 6000, "n_clusters": 24, "n_pairs": 9000, "d": 32, "seed": 11}
DEPTH = 48
NAMES = ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores")


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(**CORPUS)


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "run"
    mine_negatives(**corpus, pool_depth=DEPTH, output_dir=out)
    return out


def _same(a: dict, b: dict) -> None:
    for k in NAMES:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert x.tobytes() == y.tobytes(), f"{k} differs"


def _sha(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_pool_files_hold_the_exact_unfiltered_search(corpus, run_dir):
    man = json.loads((run_dir / "manifest.json").read_text())
    rec = man["pool"]
    assert rec["depth"] == DEPTH and rec["search"]["factory"] == "Flat"
    for f in rec["files"].values():
        assert _sha(run_dir / f["file"]) == f["sha256"]
    keys = np.load(run_dir / "pool_keys.npy")
    ids = np.load(run_dir / "pool_ids.npy")
    scores = np.load(run_dir / "pool_scores.npy")
    assert ids.shape == (keys.size, DEPTH) and scores.dtype == np.float32
    # Brute force on a sample of queries: cluster skipped, positives excluded.
    src, qst = unit(corpus["source_embeddings"]), unit(corpus["question_embeddings"])
    pos = positives_of(corpus["pair_indices"])
    n_q = len(qst)
    for row in np.linspace(0, keys.size - 1, 40).astype(int):
        c, q = divmod(int(keys[row]), n_q)
        s = src @ qst[q]
        s[corpus["source_cluster_ids"] == c] = -np.inf
        s[list(pos[q])] = -np.inf
        best = np.argsort(-s, kind="stable")[:DEPTH]
        assert set(ids[row]) == set(best.tolist())
        np.testing.assert_allclose(scores[row], s[ids[row]], rtol=0, atol=2e-6)


def test_a_pool_changes_no_exact_output(corpus):
    kw = {"relative_margin": 0.05, "near_duplicate_threshold": 0.97,
          "tier3_rank_window": (2, 30), "tier3_sampling": "random"}  # fmt: skip
    _same(mine_negatives(**corpus, **kw), mine_negatives(**corpus, pool_depth=DEPTH, **kw))


CHANGES = {
    "seed": {"seed": 7},
    "proportions": {"tier_proportions": [1, 2, 6, 3]},
    "n_neg": {"n_neg": 8, "seed": 3},
    "relative_margin": {"relative_margin": 0.05},
    "max_and_absolute": {"max_score": 0.8, "absolute_margin": 0.02},
    "near_duplicate": {"near_duplicate_threshold": 0.97},
    "window_random": {"tier3_rank_window": (10, 30), "tier3_sampling": "random", "seed": 9},
}


@pytest.mark.parametrize("case", sorted(CHANGES))
def test_remine_equals_mining_from_scratch(corpus, run_dir, tmp_path, case):
    kw = CHANGES[case]
    out = tmp_path / "re"
    got = remine(run_dir, corpus, out, **kw)
    want = mine_negatives(**corpus, pool_depth=DEPTH, **kw)
    _same(got, want)
    # The output is itself a pooled run: its pool is the run's, byte for byte.
    for name in ("pool_keys.npy", "pool_ids.npy", "pool_scores.npy"):
        assert (out / name).read_bytes() == (run_dir / name).read_bytes()
    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["pool_depth"] == DEPTH
    assert (
        man["stats"]["pool"]["rows_searched_again"] == got["stats"]["pool"]["rows_searched_again"]
    )


def test_epoch_negatives_follow_the_seed_rule(corpus, run_dir):
    kw = {"tier3_rank_window": (0, 20), "tier3_sampling": "random"}
    e2 = epoch_negatives(run_dir, corpus, 2, base_seed=40, **kw)
    _same(e2, mine_negatives(**corpus, pool_depth=DEPTH, seed=42, **kw))
    e3 = epoch_negatives(run_dir, corpus, 3, base_seed=40, **kw)
    assert not np.array_equal(e2["hard_negatives"].numpy(), e3["hard_negatives"].numpy())
    with pytest.raises(ValueError, match="epoch"):
        epoch_negatives(run_dir, corpus, -1)


def _past_pool(corpus, run_dir, depth, margin):
    """Rows a relative margin sends past a pool of ``depth`` (n3 = 3: k = 3, 6, 12, 24...)."""
    keys = np.load(run_dir / "pool_keys.npy")
    scores = np.load(run_dir / "pool_scores.npy")[:, :depth].astype(np.float64)
    ids = np.load(run_dir / "pool_ids.npy")[:, :depth]
    src, qst = unit(corpus["source_embeddings"]), unit(corpus["question_embeddings"])
    pos = positives_of(corpus["pair_indices"])
    q = keys % len(qst)
    floor = np.array([min(float(src[s] @ qst[qi]) for s in pos[qi]) for qi in q])
    elig = (scores <= ((1 - margin) * floor)[:, None] + 1e-6) & (ids >= 0)
    last_k = 3 * 2 ** int(np.log2(depth // 3))  # deepest k of 3 * 2^j within the depth
    return int(((elig[:, :last_k].sum(axis=1) < 3) & (ids[:, -1] >= 0)).sum())


def test_a_shallow_pool_searches_only_the_rows_past_it(corpus, tmp_path):
    run = tmp_path / "shallow"
    mine_negatives(**corpus, pool_depth=16, output_dir=run)
    kw = {"relative_margin": 0.12, "seed": 5}
    got = remine(run, corpus, tmp_path / "re", **kw)
    again = got["stats"]["pool"]["rows_searched_again"]
    want = _past_pool(corpus, run, 16, 0.12)
    assert 0 < want < json.loads((run / "manifest.json").read_text())["stats"]["tier3_queries"]
    assert again == want
    _same(got, mine_negatives(**corpus, pool_depth=16, **kw))
    # Exact search: the rows searched again find what a run without a pool finds.
    _same(got, mine_negatives(**corpus, **kw))


@pytest.mark.parametrize(
    ("setting", "value"),
    [("nprobe", 4), ("pool_depth", 64), ("rerank", 2), ("ef_search", 16)],
)
def test_settings_that_change_the_search_are_refused(corpus, run_dir, setting, value):
    with pytest.raises(ValueError, match=rf"`{setting}` must stay None|`{setting}` must stay 48"):
        remine(run_dir, corpus, **{setting: value})


def test_unknown_settings_are_refused(corpus, run_dir):
    with pytest.raises(TypeError, match="'n_negs'"):
        remine(run_dir, corpus, n_negs=3)


def test_other_data_is_refused_naming_the_array(corpus, run_dir):
    other = dict(corpus)
    other["source_embeddings"] = corpus["source_embeddings"].copy()
    other["source_embeddings"][17, 3] += 0.5
    with pytest.raises(ValueError, match="sources"):
        remine(run_dir, other)
    other = dict(corpus)
    other["pair_cluster_ids"] = corpus["pair_cluster_ids"].copy()
    other["pair_cluster_ids"][5] = (other["pair_cluster_ids"][5] + 1) % CORPUS["n_clusters"]
    with pytest.raises(ValueError, match="pair_cluster"):
        remine(run_dir, other)


def test_another_index_is_refused(corpus, run_dir, tmp_path):
    from negmine.index import SourceIndex

    idx = SourceIndex.build(corpus["source_embeddings"], "flat")
    with pytest.raises(ValueError, match="`index`"):
        remine(run_dir, corpus, index=idx)


@pytest.mark.parametrize("name", ["pool_ids.npy", "pool_scores.npy", "pool_keys.npy"])
def test_a_damaged_pool_is_refused_naming_the_file(corpus, run_dir, tmp_path, name):
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    data = bytearray((bad / name).read_bytes())
    data[-5] ^= 0x01
    (bad / name).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=name):
        remine(bad, corpus)
    (bad / name).unlink()
    with pytest.raises(ValueError, match=name):
        remine(bad, corpus)


def test_a_run_without_a_pool_is_refused(corpus, tmp_path):
    out = tmp_path / "plain"
    mine_negatives(**corpus, n_neg=4, output_dir=out)
    with pytest.raises(ValueError, match="pool_depth"):
        remine(out, corpus)


FILTERS = {"relative_margin": 0.05, "near_duplicate_threshold": 0.97,
           "tier3_rank_window": (2, 30), "tier3_sampling": "random"}  # fmt: skip


@pytest.mark.parametrize("search", ["probe", "ivf"])
def test_remine_of_an_approximate_search_equals_mining_from_scratch(corpus, tmp_path, search):
    from negmine.index import SourceIndex

    kw: dict = {"nprobe": 4}
    if search == "ivf":
        kw["index"] = SourceIndex.build(corpus["source_embeddings"], "IVF16,Flat")
    run = tmp_path / "run"
    mine_negatives(**corpus, pool_depth=32, output_dir=run, **kw)
    got = remine(run, corpus, tmp_path / "re", index=kw.get("index"), seed=4, **FILTERS)
    assert got["stats"]["pool"]["rows_searched_again"] > 0
    _same(got, mine_negatives(**corpus, pool_depth=32, seed=4, **FILTERS, **kw))
    if search == "ivf":
        with pytest.raises(ValueError, match="`index`"):
            remine(run, corpus, seed=4)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "32"])
def test_pool_depth_is_checked(bad):
    from negmine.config import MiningConfig

    with pytest.raises(ValueError, match=r"`pool_depth` must be an integer >= 1 or None"):
        MiningConfig(pool_depth=bad)


def test_runs_without_a_pool_keep_their_keys():
    from negmine.config import MiningConfig

    assert "pool_depth" not in MiningConfig().result_dict()
    assert MiningConfig(pool_depth=8).result_dict()["pool_depth"] == 8


def test_a_pooled_run_is_replaced_whole_and_foreign_files_still_refused(corpus, run_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run_dir, out)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        mine_negatives(**corpus, n_neg=4, output_dir=out)
    mine_negatives(**corpus, n_neg=4, output_dir=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "hard_negatives.pt", "manifest.json", "negative_scores.pt", "negative_tiers.pt",
        "positive_scores.pt",
    ]  # fmt: skip
    shutil.rmtree(out)
    shutil.copytree(run_dir, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        remine(run_dir, corpus, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
