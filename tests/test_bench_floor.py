"""The store bench's products floor (:mod:`negmine.bench_floor`): the sources each
tier-3 query scans, counted against a per-query brute force, and the floor's parts."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import build_index
from reference import small_corpus, unit

from negmine import NegativeMiner
from negmine.bench_floor import _loop, products_floor, scanned_per_query
from negmine.search.codes import quantize_queries

MINE = {"n_neg": 4, "tier_proportions": [1, 1, 1, 1], "adjacent_k": 1, "seed": 0}


@pytest.fixture(scope="module")
def corpus() -> dict:
    return small_corpus(n_sources=900, n_clusters=12, n_questions=200, d=24, seed=5)


def _brute_scanned(plan, nprobe: int) -> float:
    """Mean probe-set size, one query at a time: the clusters in descending centroid
    score (ties to the lower id), the query's own skipped, the first ``nprobe``."""
    cent = unit(np.asarray(plan.inputs.centroids, dtype=np.float64))
    sizes = np.diff(plan.layout.offsets)
    total = 0
    for cl, q in zip(plan.t3_cluster.tolist(), plan.t3_question.tolist(), strict=True):
        qv = unit(np.asarray(plan.inputs.questions[q : q + 1], dtype=np.float64))[0]
        ranked = [c for c in np.argsort(-(cent @ qv), kind="stable").tolist() if c != cl]
        total += int(sizes[ranked[:nprobe]].sum())
    return total / plan.n_tier3


def _brute_sub_scanned(plan, nprobe: int) -> float:
    """Mean probe-set size over sub-lists, one query at a time: the sub-lists in
    descending integer score of their centroid codes with the quantized query
    (ties to the lower list), the own cluster's skipped, the first ``nprobe``."""
    lists = plan.backend.lists
    sub = lists.sub
    sizes = np.diff(sub.offsets)
    owner = sub.list_cluster
    codes = sub.codes.astype(np.int64)
    total = 0
    for cl, q in zip(plan.t3_cluster.tolist(), plan.t3_question.tolist(), strict=True):
        qv = unit(np.asarray(plan.inputs.questions[q : q + 1], dtype=np.float32))
        sc = codes @ quantize_queries(qv, lists.step)[0].astype(np.int64)
        ranked = [g for g in np.lexsort((np.arange(sc.size), -sc)).tolist() if owner[g] != cl]
        total += int(sizes[ranked[:nprobe]].sum())
    return total / plan.n_tier3


@pytest.mark.parametrize("nprobe", [1, 3, 7, 11, 40])
def test_scanned_per_query_matches_a_per_query_count(corpus, nprobe):
    plan = NegativeMiner(**corpus, **MINE, nprobe=nprobe).plan
    got = scanned_per_query(plan, nprobe, sample=10**6)  # every tier-3 query
    assert got == pytest.approx(_brute_scanned(plan, nprobe), rel=1e-12)
    if nprobe >= 11:  # every other cluster: all sources but the own cluster's
        sizes = np.diff(plan.layout.offsets)
        assert got == pytest.approx(sizes.sum() - sizes[plan.t3_cluster].mean(), rel=1e-12)


@pytest.mark.parametrize(
    "spec, kind", [("clusters", "numpy"), ("clusters,fast", "int8"), ("clusters,SQ8,sub15", "int8")]
)
def test_floor_is_the_candidate_products_at_the_measured_rate(corpus, spec, kind):
    idx = build_index(corpus, spec)
    plan = NegativeMiner(**corpus, **MINE, index=idx, nprobe=4).plan
    f = products_floor(plan, 4)
    assert f["kind"] == kind and f["width"] == corpus["source_embeddings"].shape[1]
    subs = idx.sub_list_count
    assert (subs is not None) == (spec != "clusters")
    brute = _brute_scanned if subs is None else _brute_sub_scanned
    assert f["scanned_per_query"] == pytest.approx(brute(plan, 4), rel=1e-3)
    # Over sub-lists, choosing them is one product per sub-list centroid too.
    assert f["choice_per_query"] == (subs or 0)
    ops = 2.0 * plan.n_tier3 * (f["scanned_per_query"] + (subs or 0)) * f["width"]
    assert f["floor_s"] == pytest.approx(ops / f["ops_per_s"], rel=1e-3)
    # A probed cluster's mean size is the timed product's width.
    assert f["shape"][1] == round(f["scanned_per_query"] / 4)


def test_no_floor_without_a_probe_search(corpus):
    assert products_floor(NegativeMiner(**corpus, **MINE).plan, 4) is None  # exact tier 3


def test_the_rate_counts_every_call_its_clock_ran_over():
    calls = []
    assert _loop(lambda: calls.append(1), 0.0) == len(calls) == 4  # one untimed, three timed
    calls.clear()
    n = _loop(lambda: calls.append(1), 0.02)
    assert n == len(calls) >= 4
