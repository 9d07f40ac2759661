"""Search settings tuned to a recall target: reached where reachable (checked by
brute force), refused clearly where not, recorded in the manifest and the run key."""

from __future__ import annotations

import itertools
import json
import logging
import re

import numpy as np
import pytest
from reference import outside_cluster_brute, small_corpus, tier3_reference

from negmine import NegativeMiner
from negmine.config import MiningConfig
from negmine.index import SourceIndex
from negmine.synth import make_corpus
from negmine.tuning import DEFAULT_TARGET_RECALL, search_ladder

T3_ONLY = {"n_neg": 3, "tier_proportions": [0, 0, 3, 0], "adjacent_k": 2, "seed": 3}
MINE = {"n_neg": 12, "tier_proportions": [3, 4, 3, 2], "adjacent_k": 3, "seed": 7}
KEYS = ("source_embeddings", "question_embeddings", "centroid_embeddings", "pair_indices",
        "pair_cluster_ids", "source_cluster_ids")  # fmt: skip


def _args(c: dict) -> list:
    return [c[k] for k in KEYS]


def _build(c: dict, spec: str) -> SourceIndex:
    kw = {}
    if spec.startswith("clusters"):
        kw = {"source_cluster_ids": c["source_cluster_ids"],
              "centroid_embeddings": c["centroid_embeddings"]}  # fmt: skip
    return SourceIndex.build(c["source_embeddings"], spec, **kw)


@pytest.fixture(scope="module")
def small() -> dict:
    return small_corpus(n_sources=600, n_clusters=10, n_questions=150, d=24, seed=5)


@pytest.fixture(scope="module")
def big() -> dict:
    return make_corpus(3000, 30, 2000, d=64, seed=1)


def _query_recall(res: dict, corpus: dict, k: int) -> float:
    """Brute-force recall@k of a tier-3-only run, per distinct (question, cluster)."""
    ids = np.asarray(res["hard_negatives"])
    ref = tier3_reference(corpus, k)
    seen: dict[tuple[int, int], float] = {}
    for p, ((q, _s), c) in enumerate(zip(corpus["pair_indices"], corpus["pair_cluster_ids"],
                                         strict=True)):  # fmt: skip
        hit = len(set(ids[p].tolist()) & set(ref[p][0].tolist())) / k
        seen[(int(q), int(c))] = hit
    return float(np.mean(list(seen.values())))


# ---------------------------------------------------------------- reaching the target
@pytest.mark.parametrize(
    "spec", ["IVF8,Flat", "clusters", "clusters,SQ8", "clusters,SQ8,sub20", "HNSW16", None]
)
def test_tuning_reaches_the_target_at_the_cheapest_setting(small, spec):
    """Every tier-3 query is in the sample here, so the tuning's recall is the run's:
    checked by brute force, and the next cheaper setting checked to miss the target."""
    target = 0.97
    index = None if spec is None else _build(small, spec)
    m = NegativeMiner(*_args(small), index=index, target_recall=target, **T3_ONLY)
    tun = m.tuning
    assert tun["sample"] == m.plan.n_tier3 and tun["k"] == 3 and tun["target"] == target
    assert tun["default"] is False and tun["seconds"] > 0
    chosen = tun["settings"]
    assert chosen == m.plan.search_params()
    # Each tried setting cheaper than the chosen one missed the target.
    assert all(t["recall"] < target for t in tun["tried"] if _cost(t["settings"]) < _cost(chosen))
    res = m.mine_all_negatives()
    brute = _query_recall(res, small, 3)
    assert brute == pytest.approx(tun["recall"], abs=1e-4)
    assert brute >= target
    # The next cheaper setting really misses it: one nprobe fewer (the refinement
    # between ladder steps), else the ladder's step below.
    ladder = search_ladder(m.plan)
    if chosen.get("nprobe", 1) > 1:
        cheaper = dict(chosen, nprobe=chosen["nprobe"] - 1)
    else:
        at = ladder.index(chosen)
        cheaper = ladder[at - 1] if at > 0 else None
    if cheaper is not None:
        res = NegativeMiner(*_args(small), index=index, **cheaper, **T3_ONLY).mine_all_negatives()
        assert _query_recall(res, small, 3) < target


def _cost(settings: dict) -> tuple[int, int, int]:
    """The order of the ladders: ``nprobe`` or ``ef_search`` first, then ``rerank``."""
    return (settings.get("nprobe", 0), settings.get("ef_search", 0), settings.get("rerank", 0))


def test_ladders_go_from_cheap_to_deep(small, big):
    ivf = search_ladder(NegativeMiner(*_args(small), index=_build(small, "IVF8,Flat"),
                                      nprobe=1, **T3_ONLY).plan)  # fmt: skip
    assert ivf == [{"nprobe": n} for n in (1, 2, 3, 4, 6, 8)]
    sq = search_ladder(NegativeMiner(*_args(small), index=_build(small, "clusters,SQ8"),
                                     nprobe=1, **T3_ONLY).plan)  # fmt: skip
    assert sq == [{"nprobe": n, "rerank": r} for n in (1, 2, 3, 4, 6, 8, 9) for r in (1, 2, 4)]
    fp16 = search_ladder(NegativeMiner(*_args(small), index=_build(small, "clusters,fp16"),
                                       nprobe=1, **T3_ONLY).plan)  # fmt: skip
    assert fp16 == [{"nprobe": n} for n in (1, 2, 3, 4, 6, 8, 9)] + [
        {"nprobe": 9, "rerank": r} for r in (8, 16, 32)
    ]
    builtin = search_ladder(NegativeMiner(*_args(small), nprobe=1, **T3_ONLY).plan)
    assert builtin == [{"nprobe": n} for n in (1, 2, 3, 4, 6, 8, 9)]


def test_tuning_and_the_recall_measurement_share_one_exact_search(small, monkeypatch):
    """The recall measured after mining uses the exact result tuning searched for
    the same sample: one exact search per run, and the recall brute force gives."""
    from negmine.search.backends import Tier3Backend

    calls = []
    reference = Tier3Backend.reference
    monkeypatch.setattr(
        Tier3Backend, "reference", lambda self, *a: calls.append(a[-1]) or reference(self, *a)
    )
    idx = _build(small, "clusters,SQ8")
    m = NegativeMiner(*_args(small), index=idx, target_recall=0.9, recall_sample=10**6, **T3_ONLY)
    res = m.mine_all_negatives()
    stats = m.last_stats
    assert calls == [3]  # tuning's; the measurement found it
    assert stats["tier3_recall"]["sample"] == stats["tuning"]["sample"] == m.plan.n_tier3
    assert stats["tier3_recall"]["recall"] == pytest.approx(_query_recall(res, small, 3), abs=1e-4)
    calls.clear()
    again = NegativeMiner(*_args(small), index=idx, nprobe=2, rerank=1, recall_sample=10**6,
                          **T3_ONLY)  # fmt: skip
    res = again.mine_all_negatives()
    assert calls == [3]  # no tuning: the measurement searches
    assert again.last_stats["tier3_recall"]["recall"] == pytest.approx(
        _query_recall(res, small, 3), abs=1e-4
    )


@pytest.mark.parametrize(
    "spec", ["clusters", "clusters,SQ8", "clusters,SQ8,sub30", "clusters,PCA4", None]
)
def test_the_clusters_bound_is_never_below_a_measured_recall(big, spec):
    """probe_bound at each nprobe is at least the recall every setting of the ladder
    measures there (so skipping what it rules out cannot change the choice); over
    float32 lists, whose scores within the probed clusters are exact, it is that
    recall."""
    from negmine.recall import _even_sample
    from negmine.search.probe import recall_at_k
    from negmine.tuning import probe_bound
    from negmine.vectors import question_vectors

    index = None if spec is None else _build(big, spec)
    plan = NegativeMiner(*_args(big), index=index, nprobe=1, **T3_ONLY).plan
    pick = _even_sample(plan.n_tier3, 400)
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    _, exact = plan.backend.reference(qvec, rows, cl, qq, 3)
    ladder = search_ladder(plan)
    nprobes = sorted({s["nprobe"] for s in ladder})
    bound = dict(zip(nprobes, probe_bound(plan, qvec, rows, cl, exact, nprobes), strict=True))
    assert bound[nprobes[0]] < 0.9 and bound[nprobes[-1]] == 1.0  # the bound does bind
    assert all(bound[a] <= bound[b] for a, b in itertools.pairwise(nprobes))
    for step in ladder:
        _, got = plan.with_search(target_recall=None, **step).backend.search(qvec, rows, cl, qq, 3)
        recall = float(recall_at_k(got, exact))
        assert recall <= bound[step["nprobe"]] + 1e-12, step
        if spec in ("clusters", None):  # up to the few hits whose cluster is within the slack
            assert recall == pytest.approx(bound[step["nprobe"]], abs=0.01), step


def _assert_brute_force(corpus: dict, qq: np.ndarray, cl: np.ndarray, d, ids) -> None:
    """``(d, ids)`` are the exact top-k outside each query's cluster (up to exact ties)."""
    want, scores = outside_cluster_brute(corpus, qq, cl, ids.shape[1])
    np.testing.assert_allclose(d, scores, rtol=0, atol=1e-5)
    assert (ids == want).mean() > 0.999


@pytest.mark.parametrize(("mapped", "refined"), [(True, False), (False, False), (True, True),
                                                (False, True)])  # fmt: skip
def test_the_reference_read_in_id_order_is_the_exact_search(
    big, tmp_path, monkeypatch, mapped, refined
):
    """Without float32 lists (8-bit lists here) the exact reference streams the
    embeddings in id order through the exact kernel, or from
    ``REFINE_MIN_SOURCES`` on through 8-bit codes with a proof: its ids are
    brute force's, and those of probing every cluster's gathered rows."""
    import negmine.search.backends as backends
    from negmine.plan import raw_cluster_lists
    from negmine.recall import _even_sample
    from negmine.search.probe import probe_outside_cluster
    from negmine.vectors import RowRange, question_vectors

    c = dict(big)
    if mapped:
        np.save(tmp_path / "s.npy", c["source_embeddings"])
        c["source_embeddings"] = np.load(tmp_path / "s.npy", mmap_mode="r")
    plan = NegativeMiner(*_args(c), index=_build(big, "clusters,SQ8"), nprobe=1, **T3_ONLY).plan
    assert isinstance(plan.exact_rows(), RowRange)
    monkeypatch.setattr(backends, "REFINE_MIN_SOURCES", 0 if refined else 10**9)
    pick = _even_sample(plan.n_tier3, 300)
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    d, ids = plan.backend.reference(qvec, rows, cl, qq, 5)
    _, old = probe_outside_cluster(
        raw_cluster_lists(plan.inputs.sources, plan.layout), plan.inputs.centroids, qvec, rows,
        cl, qq, plan.layout, plan.positives, 5, nprobe=plan.inputs.n_clusters,
    )  # fmt: skip
    np.testing.assert_array_equal(ids, old)
    _assert_brute_force(big, qq, cl, d, ids)


@pytest.mark.parametrize("spec", ["clusters", "IVF8,Flat", "IVF8,SQ8", "clusters,PCA16", None])
def test_the_refined_reference_of_any_search_is_brute_force(big, monkeypatch, spec):
    """A FAISS index and reduced lists take the refined reference too from
    ``REFINE_MIN_SOURCES`` on; float32 lists and the built-in probing keep the
    float32 kernels. Either way: the ids of brute force."""
    import negmine.search.backends as backends
    import negmine.search.refine as refine
    from negmine.recall import _even_sample
    from negmine.vectors import question_vectors

    index = None if spec is None else _build(big, spec)
    plan = NegativeMiner(*_args(big), index=index, nprobe=1, **T3_ONLY).plan
    monkeypatch.setattr(backends, "REFINE_MIN_SOURCES", 0)
    used = []
    real = refine.refined_outside_cluster
    monkeypatch.setattr(backends, "refined_outside_cluster", lambda *a: used.append(1) or real(*a))
    pick = _even_sample(plan.n_tier3, 300)
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    d, ids = plan.backend.reference(qvec, rows, cl, qq, 5)
    assert bool(used) == (spec not in ("clusters", None))
    _assert_brute_force(big, qq, cl, d, ids)


def test_tuning_searches_no_nprobe_its_bound_rules_out(big):
    """The settings whose bound is below the target are recorded as skipped, never
    searched, and the choice is the cheapest (``nprobe``, then ``rerank``) of all
    settings up to it that reaches the target, between the ladder's steps too."""
    target = 0.95
    idx = _build(big, "clusters,SQ8")
    m = NegativeMiner(*_args(big), index=idx, target_recall=target, recall_sample=500, **T3_ONLY)
    tun = m.tuning
    skipped = {s["nprobe"] for s in tun["skipped"]}
    assert skipped and all(s["bound"] < target for s in tun["skipped"])
    assert not skipped & {t["settings"]["nprobe"] for t in tun["tried"]}
    plan = m.plan.with_search(nprobe=1)
    ladder = search_ladder(plan)
    chosen = tun["settings"]
    assert chosen not in ladder or chosen == next(
        s for s in ladder if s["nprobe"] >= chosen["nprobe"] and s["rerank"] >= chosen["rerank"]
    )
    every = [
        (step, NegativeMiner(*_args(big), index=idx, recall_sample=500, **step, **T3_ONLY))
        for step in ({"nprobe": p, "rerank": r} for p in range(1, chosen["nprobe"] + 1)
                     for r in sorted({s["rerank"] for s in ladder}))
    ]  # fmt: skip
    reached = [
        step for step, mm in every
        if (mm.mine_arrays(), mm.last_stats["tier3_recall"]["recall"])[1] >= target
    ]  # fmt: skip
    assert reached[0] == chosen
    # Between the ladder's steps: the ladder alone would have chosen a larger nprobe.
    first = next(s for s in ladder if s in reached)
    assert first["nprobe"] >= chosen["nprobe"]


@pytest.mark.parametrize("spec", ["clusters", "clusters,SQ8", "clusters,SQ8,sub10"])
def test_tuning_refines_nprobe_between_the_ladders_steps(spec):
    """With 100 clusters the ladder's steps 8 and 11 are far apart: the choice is
    the smallest nprobe that reaches the target, checked by brute force over every
    query (one nprobe fewer misses, at any re-rank depth; at the chosen nprobe a
    shallower depth misses)."""
    many = make_corpus(4000, 100, 2000, d=32, seed=2)
    target = 0.975
    idx = _build(many, spec)
    m = NegativeMiner(*_args(many), index=idx, target_recall=target, recall_sample=4000,
                      **T3_ONLY)  # fmt: skip
    tun, chosen = m.tuning, m.tuning["settings"]
    assert tun["sample"] == m.plan.n_tier3
    ladder = search_ladder(m.plan.with_search(nprobe=1))
    assert chosen not in ladder  # the corpus is one where refining matters

    def recall(**settings) -> float:
        res = NegativeMiner(*_args(many), index=idx, **settings, **T3_ONLY).mine_all_negatives()
        return _query_recall(res, many, 3)

    assert recall(**chosen) >= target
    deeper = {"rerank": max(s.get("rerank", 0) for s in ladder)} if "rerank" in chosen else {}
    assert recall(**dict(chosen, nprobe=chosen["nprobe"] - 1, **deeper)) < target
    for r in sorted({s["rerank"] for s in ladder if s.get("rerank", 0) < chosen.get("rerank", 0)}):
        assert recall(**dict(chosen, rerank=r)) < target
    # Every nprobe the bound rules out, between the steps too, is recorded and unsearched.
    skipped = [s["nprobe"] for s in tun["skipped"]]
    assert skipped == sorted(skipped)
    assert all(s["bound"] < target for s in tun["skipped"])
    assert not set(skipped) & {t["settings"]["nprobe"] for t in tun["tried"]}


def test_tuning_wants_the_target_over_all_queries_not_only_the_sample(big):
    """With 300 of 1795 queries sampled, a setting is kept only when the 95 % lower
    bound of its recall over all queries reaches the target: the bound checked
    against the brute-force recall of each sampled query, and here the sample's
    own recall alone would have taken a cheaper nprobe."""
    from negmine.recall import _even_sample

    target, idx = 0.95, _build(big, "clusters")
    m = NegativeMiner(*_args(big), index=idx, target_recall=target, recall_sample=300, **T3_ONLY)
    tun, plan = m.tuning, m.plan
    ref = tier3_reference(big, 3)
    pairs = zip(big["pair_indices"][:, 0], big["pair_cluster_ids"], strict=True)
    pair_of = {(int(q), int(c)): p for p, (q, c) in enumerate(pairs)}
    pick = _even_sample(plan.n_tier3, 300)
    rows = [pair_of[(int(q), int(c))] for q, c in
            zip(plan.t3_question[pick], plan.t3_cluster[pick], strict=True)]  # fmt: skip

    def bound(**settings) -> tuple[float, float]:
        res = NegativeMiner(*_args(big), index=idx, **settings, **T3_ONLY).mine_all_negatives()
        ids = np.asarray(res["hard_negatives"])
        per = np.array([len(set(ids[p].tolist()) & set(ref[p][0].tolist())) / 3 for p in rows])
        n, pop = per.size, plan.n_tier3
        se = per.std(ddof=1) / np.sqrt(n) * np.sqrt((pop - n) / (pop - 1))
        return float(per.mean()), float(per.mean() - 1.6448536269514722 * se)

    chosen = tun["settings"]
    mean, low = bound(**chosen)
    assert tun["sample"] == 300 < plan.n_tier3 and tun["confidence"] == 0.95
    assert tun["recall"] == pytest.approx(mean, abs=1e-4)
    assert tun["recall_lower"] == pytest.approx(low, abs=1e-4) and low >= target
    cheaper_mean, cheaper_low = bound(**dict(chosen, nprobe=chosen["nprobe"] - 1))
    assert cheaper_low < target <= cheaper_mean  # the sample alone would have said yes


def test_held_out_recall_checks_queries_tuning_never_searched(big):
    """``check_recall(held_out=True)`` measures queries outside the tuning's
    sample, and its recall is the brute-force recall of the mined ids there."""
    from negmine.recall import _even_sample, held_out_sample

    idx = _build(big, "clusters,SQ8")
    m = NegativeMiner(*_args(big), index=idx, target_recall=0.95, recall_sample=500, **T3_ONLY)
    plan = m.plan
    pick = held_out_sample(plan, 500)
    assert pick.size == 500 and pick.max() < plan.n_tier3
    assert not set(pick.tolist()) & set(_even_sample(plan.n_tier3, 500).tolist())
    rep = m.check_recall(sample=500, k=3, held_out=True)
    assert rep["held_out"] is True and rep["sample"] == pick.size
    # Brute force on those queries, from the mined ids of one pair per query.
    ids = np.asarray(m.mine_all_negatives()["hard_negatives"])
    ref = tier3_reference(big, 3)
    pairs = zip(big["pair_indices"][:, 0], big["pair_cluster_ids"], strict=True)
    pair_of = {(int(q), int(c)): p for p, (q, c) in enumerate(pairs)}
    queries = zip(plan.t3_question[pick], plan.t3_cluster[pick], strict=True)
    rows = [pair_of[(int(q), int(c))] for q, c in queries]
    hits = [len(set(ids[p].tolist()) & set(ref[p][0].tolist())) / 3 for p in rows]
    assert rep["recall"] == pytest.approx(float(np.mean(hits)), abs=1e-4)
    # The default check measures the tuning's own queries: its recall is the tuning's.
    assert m.check_recall(sample=500, k=3)["recall"] == pytest.approx(m.tuning["recall"], abs=1e-4)


def test_held_out_with_every_query_tuned_is_refused(small):
    m = NegativeMiner(*_args(small), index=_build(small, "clusters,SQ8"), target_recall=0.9,
                      recall_sample=100000, **T3_ONLY)  # fmt: skip
    with pytest.raises(ValueError, match=r"`held_out` must leave queries to check; got True with"):
        m.check_recall(sample=50, held_out=True)
    with pytest.raises(ValueError, match=r"`held_out` must be True or False; got 'yes'"):
        m.check_recall(sample=50, held_out="yes")


# ---------------------------------------------------------------- the default target
def test_ivf_flat_without_settings_mines_at_the_default_target(big, caplog):
    """Before tuning, an IVF index given no settings searched at FAISS's nprobe = 1."""
    idx = _build(big, "IVF16,Flat")
    sample = 1000
    old = NegativeMiner(*_args(big), index=idx, nprobe=1, recall_sample=sample, **MINE)
    old.mine_arrays()
    assert old.tuning is None and old.last_stats["tuning"] is None
    assert old.last_stats["tier3_recall"]["recall"] < DEFAULT_TARGET_RECALL
    with caplog.at_level(logging.INFO, logger="negmine"):
        m = NegativeMiner(*_args(big), index=idx, recall_sample=sample, **MINE)
    lines = [r.getMessage() for r in caplog.records if r.name == "negmine.tuning"]
    assert len(lines) == 1 and "default target" in lines[0] and ">= 0.95" in lines[0]
    assert m.plan.sorted_sources is None  # the reference's sorted copy is not kept
    stats = m.mine_arrays()[3]
    assert DEFAULT_TARGET_RECALL == 0.95
    assert stats["tuning"]["default"] is True and stats["tuning"]["target"] == 0.95
    assert stats["tuning"]["settings"]["nprobe"] > 1
    assert stats["index"]["search_params"] == stats["tuning"]["settings"]
    # Measured on the mined ids, against exact search, on the tuning's very sample.
    assert stats["tier3_recall"]["recall"] >= DEFAULT_TARGET_RECALL
    assert stats["tier3_recall"]["sample"] == stats["tuning"]["sample"] == sample


def test_explicit_settings_are_used_as_given(small, caplog):
    idx = _build(small, "IVF8,Flat")
    with caplog.at_level(logging.INFO, logger="negmine"):
        m = NegativeMiner(*_args(small), index=idx, nprobe=1, **T3_ONLY)
    assert m.tuning is None and m.plan.search_params() == {"nprobe": 1}
    assert not [r for r in caplog.records if r.name == "negmine.tuning"]
    # No index and no nprobe: exact, nothing to tune; a flat index meets any target.
    assert NegativeMiner(*_args(small), **T3_ONLY).tuning is None
    flat = NegativeMiner(*_args(small), index=_build(small, "flat"), target_recall=1.0, **T3_ONLY)
    assert flat.tuning is None and flat.plan.backend.exact


# ---------------------------------------------------------------- unreachable targets
def test_an_unreachable_target_is_an_error_naming_the_best(big):
    idx = _build(big, "IVF16,PQ4")
    with pytest.raises(ValueError) as err:
        NegativeMiner(*_args(big), index=idx, target_recall=1.0, **MINE)
    msg = str(err.value)
    assert msg.startswith("`target_recall` must be reachable within the search settings")
    assert "IVF16,PQ4" in msg and "got 1.0" in msg and "Lower target_recall" in msg
    found = re.search(r"best tier-3 recall@3 on (\d+) sampled queries was ([0-9.]+), at "
                      r"nprobe=(\d+), rerank=(\d+)", msg)  # fmt: skip
    assert found, msg
    n, best, nprobe, rerank = found.groups()
    assert (int(n), int(nprobe), int(rerank)) == (1000, 16, 32)
    # The best recall named is what that setting measures.
    m = NegativeMiner(*_args(big), index=idx, nprobe=16, rerank=32, **MINE)
    assert m.check_recall(sample=1000)["recall"] == pytest.approx(float(best), abs=1e-4)
    assert float(best) < 1.0


def test_the_default_target_is_never_dropped_silently(big):
    idx = _build(big, "PQ2")  # no nprobe, no graph: rerank is its only setting
    with pytest.raises(ValueError) as err:
        NegativeMiner(*_args(big), index=idx, **MINE)
    found = re.search(r"got 0\.95 \(the default, as the index came without search settings\); "
                      r"the best tier-3 recall@3 on 1000 sampled queries was ([0-9.]+), at "
                      r"rerank=32 \(([0-9.]+) or more over all queries at 95% confidence",
                      str(err.value))  # fmt: skip
    assert found and float(found.group(2)) < float(found.group(1)) < 0.95, str(err.value)


# ---------------------------------------------------------------- manifest, run key
def test_manifest_and_run_key_record_what_was_used(small, tmp_path):
    idx = _build(small, "IVF8,Flat")
    m = NegativeMiner(*_args(small), index=idx, **T3_ONLY)
    m.mine_to(tmp_path / "tuned")
    man = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    tun = man["stats"]["tuning"]
    assert tun == json.loads(json.dumps(m.tuning))
    assert set(tun) >= {"target", "settings", "recall", "sample", "seconds", "k"}
    assert man["stats"]["index"]["search_params"] == tun["settings"]
    assert man["config"]["target_recall"] is None  # what was asked; the settings: above
    # The tuned run is the run at the chosen settings: same key, same bytes.
    same = NegativeMiner(*_args(small), index=idx, **tun["settings"], **T3_ONLY)
    assert same.run_key() == m.run_key() == man["run_key"]
    same.mine_to(tmp_path / "explicit")
    for name in ("hard_negatives.pt", "negative_tiers.pt", "negative_scores.pt"):
        assert (tmp_path / "tuned" / name).read_bytes() == (
            tmp_path / "explicit" / name
        ).read_bytes()
    assert "target_recall" not in MiningConfig(target_recall=0.9).result_dict()
    deeper = {k: v * 2 for k, v in tun["settings"].items()}
    other = NegativeMiner(*_args(small), index=idx, **deeper, **T3_ONLY)
    assert other.run_key() != m.run_key()


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan")])
def test_target_recall_out_of_range(bad):
    with pytest.raises(ValueError, match=r"`target_recall` must be in \(0, 1\]"):
        MiningConfig(target_recall=bad)


@pytest.mark.parametrize("bad", [True, "0.9"])
def test_target_recall_not_a_number(bad):
    with pytest.raises(TypeError, match="`target_recall` must be a number"):
        MiningConfig(target_recall=bad)


def test_target_recall_with_explicit_settings_is_refused():
    with pytest.raises(ValueError, match=r"`target_recall` must come without explicit search "
                       r"settings .*got 0\.9 with nprobe=4\. Drop"):  # fmt: skip
        MiningConfig(target_recall=0.9, nprobe=4)


# ---------------------------------------------------------------- command line
def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "negmine", *args], capture_output=True,
                          text=True, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, small):
    from negmine.io.datasets import save_dataset

    d = tmp_path_factory.mktemp("cli") / "data"
    save_dataset(d, small)
    for name, spec in (("ivf", "IVF8,Flat"), ("pq", "PQ2x4")):
        _build(small, spec).save(d.parent / name)
    return d


def test_cli_mine_prints_and_records_the_tuning(data_dir, tmp_path):
    out = tmp_path / "out"
    ivf = str(data_dir.parent / "ivf")
    proc = _cli("mine", str(data_dir), "--out", str(out), "--index", ivf, "--n-neg", "3",
                "--tier-proportions", "0,0,3,0", "--target-recall", "0.97")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tun = json.loads((out / "manifest.json").read_text())["stats"]["tuning"]
    settings = ", ".join(f"{k}={v}" for k, v in tun["settings"].items())
    line = (f"search tuned to recall@3 >= 0.97: {settings}, measured {tun['recall']:.4f} on "
            f"{tun['sample']} queries ({tun['recall_lower']:.4f} or more over all) in "
            f"{tun['seconds']:.2f} s")  # fmt: skip
    assert line in proc.stdout.splitlines()
    assert "tier-3 search tuned to recall@3 >= 0.97" in proc.stderr  # the INFO line
    assert tun["recall"] >= tun["recall_lower"] >= 0.97 and tun["confidence"] == 0.95


def test_cli_index_check_tunes_and_refuses_clearly(data_dir):
    ivf = str(data_dir.parent / "ivf")
    proc = _cli("index", "check", ivf, "--data", str(data_dir), "--recall-sample", "100")
    assert proc.returncode == 0, proc.stderr
    tuned = next(x for x in proc.stdout.splitlines() if x.startswith("tuned "))
    assert "search tuned to recall@3 >= 0.95 (default)" in tuned
    recall = float(next(x for x in proc.stdout.splitlines() if x.startswith("recall@")).split()[1])
    assert recall >= 0.95 and f"measured {recall:.4f} on 100 queries" in tuned
    bad = _cli("index", "check", str(data_dir.parent / "pq"), "--data", str(data_dir),
               "--target-recall", "1.0")  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert "`target_recall` must be reachable" in bad.stderr and "Lower target_recall" in bad.stderr
    # --held-out: the recall of up to 100 queries tuning never searched, as the API measures it.
    held = _cli("index", "check", ivf, "--data", str(data_dir), "--recall-sample", "100",
                "--held-out")  # fmt: skip
    assert held.returncode == 0, held.stderr
    line = next(x for x in held.stdout.splitlines() if x.startswith("recall@"))
    assert " held-out tier-3 queries " in line
    from negmine.io.datasets import load_dataset

    api = NegativeMiner(**load_dataset(data_dir).arrays, n_neg=3, tier_proportions=[0, 0, 1, 0],
                        adjacent_k=3, index=ivf, validate=False, recall_sample=100)  # fmt: skip
    want = api.check_recall(sample=100, k=3, held_out=True)
    assert f" on {want['sample']} held-out " in line and 0 < want["sample"] <= 100
    assert float(line.split()[1]) == pytest.approx(want["recall"], abs=1e-4)
    both = _cli("index", "check", ivf, "--data", str(data_dir), "--target-recall", "0.9",
                "--nprobe", "2")  # fmt: skip
    assert both.returncode == 2 and "`target_recall` must come without" in both.stderr
