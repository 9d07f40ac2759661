"""Reduced cluster lists (``clusters,PCA<m>`` and ``clusters,PCA``): a cheap
low-dimensional candidate pass, then an exact re-rank from the embeddings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from helpers import build_index as _build
from helpers import tier3_recall
from reference import check_rows, exact_negative_scores, small_corpus, unit

from negmine import NegativeMiner
from negmine.index import SourceIndex
from negmine.index.reduce import PCA_ENERGY, fit_pca
from negmine.synth import make_corpus
from negmine.tuning import REDUCED_LADDER, search_ladder

MINE = {"n_neg": 6, "tier_proportions": [1, 1, 3, 1], "adjacent_k": 2, "seed": 3}
T3 = {"n_neg": 3, "tier_proportions": [0, 0, 3, 0], "adjacent_k": 1, "seed": 3}


def _tier3(res: dict) -> np.ndarray:
    ids = np.asarray(res["hard_negatives"])
    return np.where(np.asarray(res["negative_tiers"]) == 3, ids, -1)


def _probed_brute_force(c: dict, nprobe: int, k: int) -> list[set[int]]:
    """Per pair: the k best sources by exact cosine among the ``nprobe`` clusters
    nearest the question (its pair's cluster and its positives left out)."""
    cen, qe, src = (
        unit(c["centroid_embeddings"]),
        unit(c["question_embeddings"]),
        unit(c["source_embeddings"]),
    )
    scl = c["source_cluster_ids"]
    pos: dict[int, set[int]] = {}
    for q, s in c["pair_indices"]:
        pos.setdefault(int(q), set()).add(int(s))
    out = []
    for (q, _s), cl in zip(c["pair_indices"], c["pair_cluster_ids"], strict=True):
        cs = cen @ qe[q]
        cs[cl] = -np.inf
        ok = np.isin(scl, np.argsort(-cs, kind="stable")[:nprobe])
        ok[list(pos[int(q)])] = False
        cand = np.flatnonzero(ok)
        out.append(set(cand[np.argsort(-(src[cand] @ qe[q]), kind="stable")][:k].tolist()))
    return out


@pytest.fixture(scope="module")
def corpus() -> dict:
    return small_corpus(n_sources=600, n_clusters=10, n_questions=150, d=24, seed=5)


@pytest.mark.parametrize("nprobe", [2, 5])
def test_full_rerank_depth_equals_brute_force_over_the_probed_clusters(tmp_path, corpus, nprobe):
    """A re-rank deep enough to take every probed source is exact over the probe set,
    whatever the reduction lost, and equals the float32 lists at the same nprobe."""
    idx = _build(corpus, "clusters,PCA6")
    idx.save(tmp_path / "ix")
    loaded = SourceIndex.load(tmp_path / "ix", mmap=True)
    n = len(corpus["source_embeddings"])
    res = NegativeMiner(
        **corpus, index=loaded, nprobe=nprobe, rerank=n, **MINE
    ).mine_all_negatives()
    check_rows(res, corpus, MINE["adjacent_k"])
    got = _tier3(res)
    for r, want in enumerate(_probed_brute_force(corpus, nprobe, 3)):
        assert set(got[r][got[r] >= 0].tolist()) == want, r
    flat = NegativeMiner(**corpus, index=_build(corpus, "clusters"), nprobe=nprobe, **MINE)
    np.testing.assert_array_equal(got, _tier3(flat.mine_all_negatives()))


def test_scores_are_exact_cosines_and_shallow_rerank_loses_some(corpus):
    idx = _build(corpus, "clusters,PCA4")
    shallow = NegativeMiner(**corpus, index=idx, nprobe=9, rerank=1, **MINE).mine_all_negatives()
    got = _tier3(shallow)
    want = _probed_brute_force(corpus, 9, 3)
    recall = np.mean([len(set(got[r].tolist()) & w) / 3 for r, w in enumerate(want)])
    assert recall < 1.0  # 4 of 24 axes: the candidate pass alone is not exact
    exact = exact_negative_scores(shallow, corpus)
    np.testing.assert_allclose(np.asarray(shallow["negative_scores"]), exact, atol=1e-5)


def test_recall_on_a_clustered_corpus_rises_with_the_rerank():
    """On a corpus with the spectrum of real embeddings, ``PCA`` keeps 80 % of the
    energy in 32 of 64 dims; re-ranked deep enough it finds what float32 lists
    find at the same nprobe."""
    c = make_corpus(6000, 40, 1500, d=64, seed=4, spectrum="minilm")

    def recall(spec: str, rerank: int | None) -> float:
        return tier3_recall(c, spec, rerank, 8, **T3)

    shallow, deep = recall("clusters,PCA", 2), recall("clusters,PCA", 32)
    full = recall("clusters", None)
    assert shallow < deep
    assert deep >= max(0.9, full - 0.02)


def test_manifest_records_the_reduction(tmp_path, corpus):
    idx = _build(corpus, "clusters,PCA8")
    idx.save(tmp_path / "ix")
    man = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    red = man["clusters"]["reduction"]
    assert man["factory"] == "PCA8,IVF10,Flat" and man["clusters"]["codec"] == "PCA8"
    assert red["dims"] == 8 and red["width_bytes"] == 32 and red["centred"] is True
    assert red["rerank_default"] == REDUCED_LADDER[0]
    src = unit(corpus["source_embeddings"])
    ev = np.linalg.eigvalsh(np.cov(src.T, bias=True))[::-1]
    assert red["energy"] == pytest.approx(ev[:8].sum() / ev.sum(), abs=1e-3)
    loaded = SourceIndex.load(tmp_path / "ix", mmap=True)
    axes = loaded.projection()
    np.testing.assert_allclose(axes @ axes.T, np.eye(8), atol=1e-5)  # orthonormal axes
    m = NegativeMiner(**corpus, index=loaded, recall_sample=50, nprobe=3, **MINE)
    m.mine_arrays()
    st = m.last_stats
    assert st["index"]["clusters"]["reduction"]["dims"] == 8
    assert st["index"]["search_params"] == {"nprobe": 3, "rerank": REDUCED_LADDER[0]}


def test_pca_without_dims_keeps_the_stated_energy_in_the_fewest_dims():
    rng = np.random.default_rng(0)
    scales = 1.0 / np.arange(1, 97) ** 0.7  # a decaying spectrum
    basis = np.linalg.qr(rng.standard_normal((96, 96)))[0]
    x = (rng.standard_normal((4000, 96)) * scales) @ basis.T + 3.0 * basis[:, 0]
    axes, mean, info = fit_pca(x.astype(np.float32), None)
    xu = unit(x)
    ev = np.linalg.eigvalsh(np.cov(xu.T, bias=True))[::-1]
    share = np.cumsum(ev) / ev.sum()
    need = int(np.searchsorted(share, PCA_ENERGY) + 1)
    assert info["dims"] == min(48, max(16, -(-need // 16) * 16))
    assert info["energy"] >= PCA_ENERGY or info["dims"] == 48
    np.testing.assert_allclose(mean, xu.mean(axis=0), atol=1e-5)
    # The kept axes span the leading eigenvectors.
    top = np.linalg.eigh(np.cov(xu.T, bias=True))[1][:, ::-1][:, : info["dims"]]
    overlap = np.linalg.svd(axes.astype(np.float64) @ top, compute_uv=False)
    assert overlap.min() > 0.99


@pytest.mark.parametrize("spec", ["clusters,PCA0", "clusters,PCA24", "clusters,PCAx"])
def test_bad_reductions_are_refused(corpus, spec):
    with pytest.raises(ValueError, match=r"`spec` must name a reduction to 1\.\.23 dimensions"):
        _build(corpus, spec)


def test_the_ladder_tries_each_nprobe_at_several_depths(corpus):
    plan = NegativeMiner(**corpus, index=_build(corpus, "clusters,PCA8"), nprobe=1, **T3).plan
    steps = search_ladder(plan)
    want = [{"nprobe": n, "rerank": r} for n in (1, 2, 3, 4, 6, 8, 9) for r in REDUCED_LADDER]
    assert steps == want


def test_tuning_reaches_a_target_and_says_when_it_cannot(corpus):
    idx = _build(corpus, "clusters,PCA8")
    m = NegativeMiner(**corpus, index=idx, target_recall=0.95, **T3)
    assert m.tuning["recall"] >= 0.95
    res = m.mine_all_negatives()
    got = _tier3(res)
    want = _probed_brute_force(corpus, 9, 3)  # every other cluster: the exact answer
    recall = np.mean([len(set(got[r].tolist()) & w) / 3 for r, w in enumerate(want)])
    assert recall == pytest.approx(m.tuning["recall"], abs=0.02)
    tiny = _build(corpus, "clusters,PCA1")
    with pytest.raises(ValueError, match=r"`target_recall` must be reachable.*PCA1,IVF10,Flat"):
        NegativeMiner(**corpus, index=tiny, target_recall=1.0, **T3)


def _ladder_recalls(plan) -> list[tuple[dict, float]]:
    """Recall@3 of every setting of the ladder, on the sample tuning uses."""
    from negmine.recall import _even_sample
    from negmine.search.probe import recall_at_k
    from negmine.tuning import TUNING_SAMPLE
    from negmine.vectors import question_vectors

    pick = _even_sample(plan.n_tier3, TUNING_SAMPLE)
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    _, exact = plan.backend.reference(qvec, rows, cl, qq, 3)
    out = []
    for step in search_ladder(plan):
        _, got = plan.with_search(target_recall=None, **step).backend.search(qvec, rows, cl, qq, 3)
        out.append((step, float(recall_at_k(got, exact))))
    return out


@pytest.mark.parametrize("spec", ["clusters,PCA2", "clusters,PCA8", "clusters,SQ8"])
def test_the_deepest_first_walk_keeps_the_first_setting_of_the_ladder(corpus, spec):
    """Tuning tries fewer settings than the ladder holds, yet keeps the same one:
    the cheapest in ladder order that reaches the target (8-bit lists walk their
    own depths the same way)."""
    from negmine.tuning import tune

    plan = NegativeMiner(**corpus, index=_build(corpus, spec), nprobe=1, **T3).plan
    every = _ladder_recalls(plan)
    for target in (0.5, 0.8, 0.9, 0.97):
        first = next((s for s, r in every if r >= target), None)
        if first is None:
            with pytest.raises(ValueError, match="must be reachable"):
                tune(plan, target)
            continue
        _, info = tune(plan, target)
        assert info["settings"] == first
        want = dict((str(s), r) for s, r in every)[str(first)]
        assert info["recall"] == pytest.approx(want, abs=1e-4)
        assert len(info["tried"]) <= len(every)
        walked = {str(t["settings"]): t["recall"] for t in info["tried"]}
        for s, r in every:  # what the walk measured is what the ladder measures
            if str(s) in walked:
                assert walked[str(s)] == pytest.approx(r, abs=1e-4)


def test_tuning_reduced_lists_gives_up_when_recall_stops_growing(corpus):
    """A target the reduced pass cannot reach stops the walk once the deepest
    re-rank's recall is flat over two nprobe steps, well before the ladder's end;
    the ladder indeed never reaches it."""
    from negmine.tuning import PLATEAU, tune

    plan = NegativeMiner(**corpus, index=_build(corpus, "clusters,PCA1"), nprobe=1, **T3).plan
    every = _ladder_recalls(plan)
    target = max(r for _, r in every) + 0.01
    assert target < 1.0
    with pytest.raises(ValueError, match="must be reachable") as err:
        tune(plan, target)
    # The walk starts at the first nprobe whose clusters' bound allows the target.
    ruled = re.search(r"(\d+) smaller nprobe ruled out", str(err.value))
    start = int(ruled.group(1)) if ruled else 0
    deep = [r for s, r in every if s["rerank"] == REDUCED_LADDER[-1]][start:]
    flat = next(i for i in range(2, len(deep)) if deep[i] - deep[i - 2] < PLATEAU)
    assert f"tried {flat + 1} settings" in str(err.value)
    assert flat + 1 < len(deep)  # given up before the ladder's end
