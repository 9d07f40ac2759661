"""make_corpus(spectrum="minilm"): a covariance spectrum like real sentence embeddings."""

from __future__ import annotations

import hashlib
import platform

import numpy as np
import pytest
from helpers import blas_kernel
from threadpoolctl import threadpool_limits

from negmine.synth import make_corpus, top_hits_share
from negmine.synth.params import _SPECTRA

MEASURED = _SPECTRA["minilm"]
#: Largest gap allowed between a generated corpus's energy kept at k axes and the measured one.
ENERGY_TOL = 0.03
MEAN_NORM_TOL = 0.03
#: The size the spectrum was calibrated at, scaled down (same number of clusters).
SIZE = {"n_sources": 30_000, "n_clusters": 300, "n_pairs": 3_000}


def _spectrum(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance eigenvalues (decreasing) of the rows of ``x`` and the norm of their mean."""
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    cov = (x - mean).T @ (x - mean) / x.shape[0]
    return np.linalg.eigvalsh(cov)[::-1], float(np.linalg.norm(mean))


def _energy_gaps(x: np.ndarray) -> dict[int, float]:
    """Generated minus measured energy kept, per number of axes stored with the spectrum."""
    ev, _ = _spectrum(x)
    kept = np.cumsum(ev) / ev.sum()
    return {k: float(kept[k - 1] - v) for k, v in MEASURED.energy}


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def matched() -> dict[str, np.ndarray]:
    return make_corpus(**SIZE, seed=0, spectrum="minilm")


@pytest.fixture(scope="module")
def flat() -> dict[str, np.ndarray]:
    return make_corpus(**SIZE, seed=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_energy_kept_matches_the_measured_spectrum(seed: int, matched) -> None:
    c = matched if seed == 0 else make_corpus(**SIZE, seed=seed, spectrum="minilm")
    gaps = _energy_gaps(c["source_embeddings"])
    assert {64, 96, 128} <= set(gaps)
    assert max(abs(g) for g in gaps.values()) <= ENERGY_TOL, gaps
    _, mean_norm = _spectrum(c["source_embeddings"])
    assert abs(mean_norm - MEASURED.mean_norm) <= MEAN_NORM_TOL


def test_flat_corpus_does_not_pass_the_spectrum_check(flat) -> None:
    # The check is strict enough to tell the spectra apart: without the map the
    # topics hold too much of the variance in a few axes and the tail is too flat.
    gaps = _energy_gaps(flat["source_embeddings"])
    assert gaps[32] > 2 * ENERGY_TOL
    assert gaps[192] < -ENERGY_TOL
    _, mean_norm = _spectrum(flat["source_embeddings"])
    assert mean_norm < MEASURED.mean_norm - 4 * MEAN_NORM_TOL


def test_questions_follow_the_spectrum_too(matched, flat) -> None:
    # their perturbation goes through the same map, so PCA keeps most of them as well
    ev, _ = _spectrum(matched["question_embeddings"])
    ev_flat, _ = _spectrum(flat["question_embeddings"])
    kept, kept_flat = ev[:96].sum() / ev.sum(), ev_flat[:96].sum() / ev_flat.sum()
    assert kept >= 0.78 and kept > kept_flat + 0.1


def test_same_seed_same_corpus_other_seed_other() -> None:
    kw = {"n_sources": 3_000, "n_clusters": 30, "n_pairs": 800, "d": 64, "spectrum": "minilm"}
    a, b = make_corpus(**kw, seed=4), make_corpus(**kw, seed=4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    other = make_corpus(**kw, seed=5)
    assert not np.array_equal(a["source_embeddings"], other["source_embeddings"])


def test_output_does_not_depend_on_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    from negmine.synth import vectors

    kw = {"n_sources": 3_000, "n_clusters": 30, "n_pairs": 2_000, "d": 48, "seed": 2}
    # several chunks, so the threaded path really runs
    monkeypatch.setattr(vectors, "_CHUNK_ROWS", 256)
    monkeypatch.setattr(vectors, "_MAX_WORKERS", 1)
    serial = make_corpus(**kw, spectrum="minilm")
    monkeypatch.setattr(vectors, "_MAX_WORKERS", 3)
    monkeypatch.setattr(vectors, "_n_workers", lambda: 3)
    threaded = make_corpus(**kw, spectrum="minilm")
    for key in serial:
        np.testing.assert_array_equal(serial[key], threaded[key], err_msg=key)


def test_cluster_labels_are_the_nearest_centroid(matched) -> None:
    sims = matched["source_embeddings"] @ _unit(matched["centroid_embeddings"]).T
    ids = matched["source_cluster_ids"]
    own = sims[np.arange(ids.size), ids]
    assert (own >= sims.max(axis=1) - 1e-5).all()
    # and the centroids are (after one update) the means of their clusters
    means = np.zeros(matched["centroid_embeddings"].shape)
    np.add.at(means, ids, matched["source_embeddings"])
    cos = np.einsum("ij,ij->i", _unit(means), _unit(matched["centroid_embeddings"]))
    assert cos.min() >= 0.99


def test_rows_are_unit_and_questions_sit_at_the_drawn_cosine(matched) -> None:
    src, qs = matched["source_embeddings"], matched["question_embeddings"]
    np.testing.assert_allclose(np.linalg.norm(src, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(qs, axis=1), 1.0, atol=1e-5)
    qids, first = np.unique(matched["pair_indices"][:, 0], return_index=True)
    pos = matched["pair_indices"][first, 1]
    cos = np.einsum("ij,ij->i", qs[qids], src[pos])
    lo, hi = MEASURED.question_cos
    assert cos.min() >= lo - 1e-4 and cos.max() <= hi + 1e-4
    assert np.median(cos) == pytest.approx((lo + hi) / 2, abs=0.02)
    # the positive is usually, but not always, the best hit
    top1 = (qs[qids[:1000]] @ src.T).argmax(axis=1)
    assert 0.6 <= np.mean(top1 == pos[:1000]) <= 0.95


def test_clusters_still_overlap_and_sizes_stay_skewed(matched, flat) -> None:
    # more overlap than without a spectrum (real embeddings overlap more still)
    share = top_hits_share(matched, k=3, sample=1_000)
    assert 0.75 <= share <= 0.9
    assert share < top_hits_share(flat, k=3, sample=1_000)
    assert share < top_hits_share(make_corpus(**SIZE, seed=0, spectrum="minilm", overlap=0.0))
    sizes = np.bincount(matched["source_cluster_ids"], minlength=SIZE["n_clusters"])
    assert sizes.max() > 10 * np.median(sizes)


def test_same_layout_draws_as_the_default(matched, flat) -> None:
    # the map and offset come from their own generator: the first positives are the same
    for c in (matched, flat):
        assert c["question_embeddings"].shape == flat["question_embeddings"].shape
    _, first = np.unique(flat["pair_indices"][:, 0], return_index=True)
    np.testing.assert_array_equal(matched["pair_indices"][first], flat["pair_indices"][first])
    assert not np.allclose(matched["source_embeddings"], flat["source_embeddings"])


def test_default_is_unchanged() -> None:
    kw = {"n_sources": 4000, "n_clusters": 40, "n_pairs": 1500, "d": 64, "seed": 3}
    with threadpool_limits(limits=2, user_api="blas"):
        a, b = make_corpus(**kw), make_corpus(**kw, spectrum=None)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a[k]).tobytes() for k in sorted(a)))
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"digest recorded on x86-64; this is {platform.machine()}")
    # 2 BLAS threads, numpy's OpenBLAS, for each family of kernels it was seen to run here:
    # Haswell's before the spectrum option existed, SkylakeX's later, on code that still
    # gave Haswell's digest with those kernels.
    recorded = {
        "Haswell": "943484d88bcf34ecca8786c29ab6bad283ee9f5fff34c2ef7440574fe1d17999",
        "SkylakeX": "2216ff1fd9ee569f9f7eabf92411db634db54a1e69d0403e96bff4d070623246",
    }
    kernel = blas_kernel()
    if kernel not in recorded:
        pytest.skip(f"digest recorded with numpy's OpenBLAS on {sorted(recorded)}; here {kernel}")
    assert digest.hexdigest() == recorded[kernel]


@pytest.mark.parametrize("bad", ["MiniLM", "flat", "", 1, 0.5, True])
def test_unknown_spectrum_is_refused(bad) -> None:
    with pytest.raises(ValueError, match=r"`spectrum` must be None or \"minilm\"; got"):
        make_corpus(100, 2, 10, 16, spectrum=bad)
