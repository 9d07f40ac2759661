"""Tuning's merged searches over 8-bit lists (:class:`negmine.search.prefix.PrefixSearch`):
one scan of the sample answers every ``nprobe`` and ``rerank`` as the search itself does,
and tuning over them chooses what searching every setting chooses."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import build_index
from reference import small_corpus

from negmine import NegativeMiner
from negmine import tuning as tuning_mod
from negmine.recall import _even_sample
from negmine.search import prefix as prefix_mod
from negmine.search.prefix import PrefixSearch
from negmine.vectors import question_vectors

SPECS = ["clusters,SQ8", "clusters,SQ8,sub30"]
T3 = {"n_neg": 3, "tier_proportions": [0, 0, 3, 0], "adjacent_k": 1, "seed": 3}


@pytest.fixture(scope="module")
def corpus() -> dict:
    # Multi-positive questions (left out of every search) and mismatched pair clusters.
    return small_corpus(n_sources=1200, n_clusters=8, n_questions=200, d=32, seed=21)


@pytest.fixture(scope="module", params=SPECS)
def plan_and_sample(request, corpus):
    idx = build_index(corpus, request.param)
    plan = NegativeMiner(**corpus, **T3, index=idx, nprobe=1, rerank=1).plan
    pick = _even_sample(plan.n_tier3, 300)
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    return request.param, plan, (qvec, rows, cl, qq)


def _own(plan, sample, nprobe, rerank, k=3):
    return plan.with_search(nprobe=nprobe, rerank=rerank).backend.search(*sample, k)


@pytest.mark.parametrize("entries", [1 << 22, 700])
def test_every_setting_equals_the_search_itself(plan_and_sample, entries, monkeypatch):
    # 700 entries scan one or two ranks a step: the merge runs across many steps,
    # and the lists are ranked 2 at first, the ranking grown as searches go deeper.
    monkeypatch.setattr(prefix_mod, "PREFIX_ENTRIES", entries)
    if entries < 1000:
        monkeypatch.setattr(prefix_mod, "_FIRST_RANKS", 2)
    spec, plan, sample = plan_and_sample
    px = PrefixSearch(plan.backend, *sample, depth=12)
    assert px.max_nprobe == (plan.index.sub_list_count or 8) - (0 if "sub" in spec else 1)
    # Deeper and deeper, with shallower ones from what was kept in between.
    nprobes = [1, 3, 2, 7, 5, 20, 13, px.max_nprobe, px.max_nprobe - 1]
    checked = 0
    for p in dict.fromkeys(n for n in nprobes if 1 <= n <= px.max_nprobe):
        for r in (1, 2, 4):
            want_d, want_i = _own(plan, sample, p, r)
            got_d, got_i = px.search(p, r, 3)
            np.testing.assert_array_equal(got_i, want_i, err_msg=f"{spec} nprobe={p} rerank={r}")
            np.testing.assert_array_equal(got_d, want_d)
            checked += 1
    assert checked >= 12
    n, full = sample[1].size, px.max_nprobe * 12
    # What is kept is a fraction of every (query, list) pair's best 12.
    assert px._q.size < 0.25 * n * full


def test_settings_past_what_was_kept_are_refused(plan_and_sample):
    _, plan, sample = plan_and_sample
    px = PrefixSearch(plan.backend, *sample, depth=6, max_nprobe=3)
    assert px.covers(3, 2, 3) and not px.covers(4, 1, 3) and not px.covers(3, 4, 3)
    with pytest.raises(ValueError, match="past what was kept"):
        px.search(3, 4, 3)
    # A fresh one given the larger depth answers it as the search does.
    wide = PrefixSearch(plan.backend, *sample, depth=12, max_nprobe=3)
    np.testing.assert_array_equal(wide.search(3, 4, 3)[1], _own(plan, sample, 3, 4)[1])


def _tuned(corpus, spec, target):
    m = NegativeMiner(**corpus, **T3, index=build_index(corpus, spec), target_recall=target,
                      recall_sample=300)  # fmt: skip
    return m.tuning


@pytest.mark.parametrize("spec", SPECS)
def test_tuning_over_merged_searches_chooses_what_searching_each_setting_does(
    corpus, spec, monkeypatch
):
    merged = _tuned(corpus, spec, 0.9)
    with monkeypatch.context() as mp:
        mp.setattr(tuning_mod, "_prefix_search", lambda *a, **kw: None)
        plain = _tuned(corpus, spec, 0.9)
    assert merged["settings"] == plain["settings"]
    assert merged["recall"] == plain["recall"] >= 0.9
    # Each setting measured the same recall both ways, in the same order.
    strip = [{a: t[a] for a in ("settings", "recall", "lower")} for t in merged["tried"]]
    assert strip[:-1] == [{a: t[a] for a in ("settings", "recall", "lower")}
                          for t in plain["tried"]]  # fmt: skip
    # The choice was measured once more by the search itself, and that is what is reported.
    assert all(t["merged"] for t in merged["tried"][:-1])
    assert not merged["tried"][-1]["merged"]
    assert merged["tried"][-1]["settings"] == merged["settings"]
    assert not any(t["merged"] for t in plain["tried"])


def test_a_choice_the_search_itself_misses_is_walked_again_without_merging(corpus, monkeypatch):
    # Merged searches that claim the exact result (recall 1 everywhere) settle on
    # too cheap a setting; the search itself misses the target there, so the ladder
    # is walked again with the search itself, which chooses as it always has.
    spec, target = "clusters,SQ8,sub30", 0.97
    with monkeypatch.context() as mp:
        mp.setattr(tuning_mod, "_prefix_search", lambda *a, **kw: None)
        plain = _tuned(corpus, spec, target)

    class Perfect:
        def __init__(self, plan, sample, k):
            self.exact = plan.exact_reference(*sample, k)

        def covers(self, nprobe, rerank, k):
            return True

        def search(self, nprobe, rerank, k):
            return self.exact

    monkeypatch.setattr(tuning_mod, "_prefix_search",
                        lambda plan, ladder, sample, k: Perfect(plan, sample, k))  # fmt: skip
    got = _tuned(corpus, spec, target)
    assert got["settings"] == plain["settings"] and got["recall"] == plain["recall"]
    merged = [t for t in got["tried"] if t["merged"]]
    assert merged and all(t["recall"] == 1.0 for t in merged)
    again = got["tried"][len(merged) :]
    assert not any(t["merged"] for t in again)
    assert again[0]["settings"] == merged[-1]["settings"] and again[0]["lower"] < target
    assert [t["settings"] for t in again[1:]] == [t["settings"] for t in plain["tried"]]
