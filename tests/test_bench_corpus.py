"""negmine.bench_corpus: spectrum figures and the PCA candidate pass, against direct ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negmine.bench_corpus import (
    compare_corpora,
    covariance_spectrum,
    energy_kept,
    fit_power_law,
    format_table,
    main,
    pca_candidate_recall,
)
from negmine.io import save_dataset
from negmine.synth import make_corpus


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return make_corpus(3000, 20, 400, 32, seed=3, spectrum="minilm")


def test_covariance_spectrum_is_numpys(small) -> None:
    x = small["source_embeddings"]
    spec = covariance_spectrum(x)
    ref = np.linalg.eigvalsh(np.cov(x.astype(np.float64).T, bias=True))[::-1]
    np.testing.assert_allclose(spec.eigenvalues, np.maximum(ref, 0), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(spec.mean, x.mean(axis=0, dtype=np.float64), atol=1e-12)
    cov = np.cov(x.astype(np.float64).T, bias=True)
    np.testing.assert_allclose(cov @ spec.axes, spec.axes * spec.eigenvalues, atol=1e-10)
    # a sample of rows is exactly the spectrum of those rows
    sub = covariance_spectrum(x, sample=500, seed=4)
    rows = np.sort(np.random.default_rng(4).choice(x.shape[0], 500, replace=False))
    np.testing.assert_allclose(sub.eigenvalues, covariance_spectrum(x[rows]).eigenvalues)


def test_energy_kept_is_the_cumulative_share() -> None:
    ev = np.array([4.0, 3.0, 2.0, 1.0])
    assert energy_kept(ev, [1, 2, 4]) == {1: 0.4, 2: 0.7, 4: 1.0}
    with pytest.raises(ValueError, match=r"`dims` must hold numbers of axes in \[1, 4\]; got 5"):
        energy_kept(ev, [5])


def test_power_law_fits_recover_known_laws() -> None:
    ranks = np.arange(1, 385, dtype=np.float64)
    plain = fit_power_law(ranks**-1.3)
    assert plain["power"] == pytest.approx(1.3, abs=1e-9)
    assert plain["coefficient"] == pytest.approx(1 / np.sum(ranks**-1.3), rel=1e-9)
    shifted = fit_power_law((ranks + 12) ** -1.75)
    assert shifted["shift"] == 12 and shifted["shifted_power"] == pytest.approx(1.75)
    assert shifted["shifted_rms"] < 1e-9


def _reference(src, scl, q, qc, qpos, axes, rerank, k=3):
    """Per query, in Python: the exact top-k outside the cluster and the re-ranked candidates."""
    found = {r: 0 for r in rerank}
    own = 0
    for i in range(q.shape[0]):
        exact = src @ q[i]
        own += int(np.sum(scl[np.argsort(-exact, kind="stable")[:k]] == qc[i]))
        allowed = np.flatnonzero((scl != qc[i]) & (np.arange(src.shape[0]) != qpos[i]))
        kth = np.sort(exact[allowed])[::-1][k - 1]
        low = (src[allowed] @ axes) @ (axes.T @ q[i])
        order = allowed[np.argsort(-low, kind="stable")]
        for r in rerank:
            cand = order[:r]
            best = np.sort(exact[cand])[::-1][:k]
            found[r] += int(np.sum(best >= kth - 1e-6))
    n = q.shape[0] * k
    return {r: v / n for r, v in found.items()}, own / n


def test_pca_candidate_recall_matches_a_per_query_reference(small) -> None:
    src, scl = small["source_embeddings"], small["source_cluster_ids"]
    pairs = small["pair_indices"][:300]
    q, qc, qpos = (
        small["question_embeddings"][pairs[:, 0]],
        small["pair_cluster_ids"][:300],
        pairs[:, 1],
    )
    axes = covariance_spectrum(src).axes[:, :6]
    got = pca_candidate_recall(src, scl, q, qc, qpos, axes, rerank=(5, 20))
    want, own = _reference(src, scl, q, qc, qpos, axes.astype(np.float32), (5, 20))
    assert got["recall"] == pytest.approx(want, abs=1e-9)
    assert got["own_cluster_top_k"] == pytest.approx(own, abs=1e-9)
    assert got["recall"][5] < got["recall"][20] < 1.0  # a pass on 6 of 32 axes misses some
    full = pca_candidate_recall(src, scl, q, qc, qpos, np.eye(32), rerank=(3,))
    assert full["recall"][3] == 1.0


def test_a_duplicate_of_a_top_source_counts_as_found() -> None:
    rng = np.random.default_rng(0)
    src = _unit(rng.standard_normal((50, 8)))
    src[1] = src[0]  # two copies of the best source
    q = _unit(src[:1] + 0.01 * rng.standard_normal((1, 8)))
    scl = np.arange(50) % 5
    scl[:2] = 1
    # whichever copy the candidate pass returns, the answer is right
    got = pca_candidate_recall(src, scl, q, np.array([0]), np.array([49]), np.eye(8), (3,), k=1)
    assert got["recall"][3] == 1.0


def test_compare_corpora_and_the_table(small) -> None:
    flat = make_corpus(3000, 20, 400, 32, seed=3)
    res = compare_corpora({"flat": flat, "matched": small}, dims=(4, 8), pca_dim=8, n_queries=200)
    for name, c in (("flat", flat), ("matched", small)):
        r = res[name]
        ev = covariance_spectrum(c["source_embeddings"]).eigenvalues
        assert r["energy"] == pytest.approx(energy_kept(ev, (4, 8)))
        assert r["queries"] == 200 and r["sources"] == 3000 and r["clusters"] == 20
        sizes = np.bincount(c["source_cluster_ids"])
        assert r["largest_over_median_cluster"] == pytest.approx(sizes.max() / np.median(sizes))
        mean = c["source_embeddings"].mean(axis=0, dtype=np.float64)
        assert r["mean_norm"] == pytest.approx(np.linalg.norm(mean))
    table = format_table(res).splitlines()
    assert len(table) == 4 and table[2].startswith("| flat | 3,000 | 20 |")
    with pytest.raises(ValueError, match="`pca_dim` must be in"):
        compare_corpora({"flat": flat}, pca_dim=33)


def test_main_prints_the_table(tmp_path, capsys) -> None:
    save_dataset(tmp_path / "real", make_corpus(1500, 10, 200, 384, seed=9))
    argv = ["--sources", "2000", "--clusters", "12", "--pairs", "300", "--queries", "100"]
    argv += ["--real", str(tmp_path / "real"), "--json", str(tmp_path / "out.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| synthetic, flat | 2,000 | 12 |" in out and "| real | 1,500 | 10 |" in out
    saved = json.loads((tmp_path / "out.json").read_text())
    assert set(saved) == {"synthetic, flat", "synthetic, minilm", "real"}


@pytest.mark.parametrize("want", [1, 700, 5000, 10**6])
def test_store_pairs_sample_keeps_whole_clusters(want):
    """The sampled mining of ``bench --store`` keeps every pair of the clusters it
    takes, takes them evenly, and takes enough."""
    from negmine.bench_store import _cluster_sample

    rng = np.random.default_rng(2)
    pc = rng.choice(60, 9000, p=rng.dirichlet(np.ones(60)))  # skewed sizes, some empty
    take = _cluster_sample(pc, want)
    chosen = np.unique(pc[take])
    np.testing.assert_array_equal(take, np.flatnonzero(np.isin(pc, chosen)))
    counts = np.bincount(pc, minlength=60)
    assert take.size >= min(want, pc.size)
    busy = np.flatnonzero(counts)
    pos = np.searchsorted(busy, chosen)  # spread over the non-empty clusters
    assert chosen.size == 1 or np.diff(pos).max() <= 2 * busy.size / (chosen.size - 1) + 1
