"""The products' library (numpy or torch): values, search results, determinism, "auto"."""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import kernel_inputs as _inputs
from helpers import torch_openmp
from reference import outside_cluster_brute, small_corpus, unit
from threadpoolctl import threadpool_limits

from negmine import NegativeMiner
from negmine.bench import bare_product_seconds
from negmine.cli import _build_parser
from negmine.cli.mine import _miner_keywords, mine, print_stats
from negmine.config import MiningConfig
from negmine.inputs import check_inputs
from negmine.plan import make_plan
from negmine.run_key import run_key
from negmine.search.exact import exact_outside_cluster
from negmine.search.probe import probe_outside_cluster
from negmine.search.products import (
    cache_path,
    calibrate,
    matmul_into,
    one_thread_pool,
    product_threads,
    resolve_products,
)
from negmine.synth import make_corpus

torch = pytest.importorskip("torch")

LIBS = ("numpy", "torch")
#: float32 round-off of a cosine of unit vectors in d <= 64, with margin.
TOL = 1e-5


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test calibrates into its own cache directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.mark.parametrize("lib", LIBS)
def test_matmul_into_matches_float64(lib):
    rng = np.random.default_rng(0)
    a = unit(rng.standard_normal((37, 48))).astype(np.float32)
    big = unit(rng.standard_normal((106, 48))).astype(np.float32)
    b = big[::2]  # strided rows: read as they are
    ro = big[:20].copy()
    ro.setflags(write=False)  # as a memory-mapped index's lists
    ref = a.astype(np.float64) @ b.astype(np.float64).T
    out = np.full((37, 53), np.nan, dtype=np.float32)
    matmul_into(a, b, out, lib)
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)
    out2 = np.empty((37, 20), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the library stays silent
        matmul_into(a, ro, out2, lib)
    np.testing.assert_allclose(out2, a.astype(np.float64) @ ro.T.astype(np.float64), atol=TOL)


def _exact(inp: dict, k: int, lib: str):
    args = {key: v for key, v in inp.items() if key != "centroids"}
    return exact_outside_cluster(**args, k=k, cluster_sorted=True, products=lib)


def _probe(inp: dict, k: int, nprobe: int, lib: str):
    return probe_outside_cluster(**inp, k=k, nprobe=nprobe, products=lib)


@pytest.fixture(scope="module")
def clustered():
    corpus = make_corpus(4000, 20, 1500, 64, seed=1)
    return corpus, _inputs(corpus)


def _brute_force(corpus: dict, inp: dict, k: int) -> np.ndarray:
    """float64 [M, k]: the k best cosines outside each query's cluster, positives excluded."""
    return outside_cluster_brute(corpus, inp["query_question"], inp["query_cluster"], k)[1]


def _cosines(corpus: dict, inp: dict, ids: np.ndarray) -> np.ndarray:
    """float64 cosine of each returned id to its query."""
    src = unit(corpus["source_embeddings"])
    qry = unit(corpus["question_embeddings"])[inp["query_question"]]
    return np.einsum("md,mkd->mk", qry, src[ids])


def _same_up_to_ties(got: tuple, base: tuple) -> None:
    """Same ids as ``base`` except where two scores lie within round-off."""
    (d, i), (d0, i0) = got, base
    np.testing.assert_allclose(d, d0, atol=TOL, rtol=0)
    differ = i != i0
    assert differ.mean() < 0.01
    # A different id at a rank can only come from a near-tie at that rank.
    assert np.all(np.abs(d - d0)[differ] <= TOL)


@pytest.mark.parametrize("kernel", ["exact", "probe"])
def test_torch_finds_what_numpy_and_brute_force_find(clustered, kernel):
    corpus, inp = clustered
    k = 8
    n_c = inp["centroids"].shape[0]
    run = (lambda lib: _exact(inp, k, lib)) if kernel == "exact" else (
        lambda lib: _probe(inp, k, n_c, lib))  # fmt: skip
    ref = _brute_force(corpus, inp, k)
    got = {lib: run(lib) for lib in LIBS}
    for d, i in got.values():
        assert (i >= 0).all()
        # The ids are a true top-k (up to round-off) and carry their own scores.
        np.testing.assert_allclose(_cosines(corpus, inp, i), ref, atol=TOL, rtol=0)
        np.testing.assert_allclose(d, ref, atol=TOL, rtol=0)
    # Through another library the scores may round differently (or not: OpenBLAS's
    # AVX-512 kernels and torch's gave the same bytes here), never beyond near-ties.
    _same_up_to_ties(got["torch"], got["numpy"])


def test_probe_subset_same_ids(clustered):
    _, inp = clustered
    for nprobe in (2, 5):
        _same_up_to_ties(_probe(inp, 6, nprobe, "torch"), _probe(inp, 6, nprobe, "numpy"))


@pytest.mark.parametrize("lib", LIBS)
def test_same_library_same_bytes_whatever_the_callers_threads(clustered, lib):
    _, inp = clustered
    before = torch.get_num_threads()
    out = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        with threadpool_limits(limits=n, user_api="blas"):
            out[n] = [_probe(inp, 6, 4, lib)]
            if lib == "torch":  # numpy's exact products follow the caller's BLAS threads
                out[n].append(_exact(inp, 6, lib))
            assert torch.get_num_threads() == n  # restored after the kernels
        torch.set_num_threads(before)
    again = _probe(inp, 6, 4, lib)
    for (d1, i1), (d2, i2) in zip(out[1], out[2], strict=True):
        assert d1.tobytes() == d2.tobytes() and i1.tobytes() == i2.tobytes()
    assert again[0].tobytes() == out[2][0][0].tobytes()


def test_each_pool_thread_runs_torch_products_on_one_openmp_thread(monkeypatch):
    """``torch.set_num_threads`` in one thread leaves a thread started later at
    OpenMP's default (the core count): the pool's threads set their own."""
    omp = torch_openmp()
    if omp is None:
        pytest.skip("torch's OpenMP runtime not found")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with product_threads("torch", 1):
        with one_thread_pool(2) as pool:
            counts = list(pool.map(lambda _: omp.omp_get_max_threads(), range(6)))
        assert counts == [1] * 6
        if (os.cpu_count() or 1) > 1:  # what a plain thread would have had
            with ThreadPoolExecutor(1) as plain:
                assert plain.submit(omp.omp_get_max_threads).result() > 1


def test_calibrate_names_the_faster_library_and_caches_it():
    cal = calibrate(d=32, shapes=((128, 96), (16, 40)), threads=1)
    assert cal["library"] in LIBS and not cal["cached"]
    assert set(cal["gflops"]) == set(LIBS) and cal["threads"] == 1
    for lib in LIBS:
        by_shape = cal["gflops_by_shape"][lib]
        assert set(by_shape) == {"128x96", "16x40"} and min(by_shape.values()) > 0
        mean = np.exp(np.mean(np.log(list(by_shape.values()))))
        assert cal["gflops"][lib] == pytest.approx(mean, rel=0.01)
    assert cal["library"] == max(LIBS, key=lambda lib: cal["gflops"][lib])
    again = calibrate(d=32, shapes=((128, 96), (16, 40)), threads=1)
    assert again["cached"] and again["library"] == cal["library"]
    assert again["gflops"] == cal["gflops"]
    stored = json.loads(cache_path().read_text())
    assert len(stored["machines"]) == 1
    other = calibrate(d=32, shapes=((128, 96), (16, 40)), threads=2)  # another key
    assert not other["cached"] and other["threads"] == 2


def test_unwritable_cache_only_costs_a_measurement(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    for _ in range(2):
        cal = calibrate(d=16, shapes=((32, 32),), threads=1)
        assert cal["library"] in LIBS and not cal["cached"]


def test_without_torch_auto_is_numpy(monkeypatch):
    import negmine.search.products as products

    monkeypatch.setattr(products, "torch_available", lambda: False)
    cal = calibrate(d=16, shapes=((32, 32),), threads=1)
    assert cal["library"] == "numpy" and set(cal["gflops"]) == {"numpy"}
    assert resolve_products("auto", 16, 1)["library"] == "numpy"


def _plan(corpus: dict, **settings):
    inputs = check_inputs(
        corpus["source_embeddings"], corpus["question_embeddings"],
        corpus["centroid_embeddings"], corpus["pair_indices"], corpus["pair_cluster_ids"],
        corpus["source_cluster_ids"],
    )  # fmt: skip
    return make_plan(MiningConfig(n_neg=4, **settings), inputs)


def test_library_is_keyed_only_where_it_is_not_numpy():
    corpus = small_corpus(n_sources=300, n_clusters=6, n_questions=60, seed=2)
    assert "products" not in MiningConfig().result_dict()
    assert MiningConfig(products="torch").result_dict()["products"] == "torch"
    keys = {lib: run_key(_plan(corpus, nprobe=3, products=lib)) for lib in LIBS}
    assert keys["numpy"] == run_key(_plan(corpus, nprobe=3))  # the default key is unchanged
    assert keys["numpy"] != keys["torch"]
    plan = _plan(corpus, products="torch")
    assert plan.backend.products == "torch"
    assert plan.products == {"setting": "torch", "library": "torch", "calibration": None}
    # Mined end to end (exact tier 3): the same negatives, no near-tie in this corpus.
    res = {lib: NegativeMiner(**corpus, n_neg=4, seed=1, products=lib).mine_all_negatives()
           for lib in LIBS}  # fmt: skip
    for name in ("hard_negatives", "negative_tiers"):
        assert np.array_equal(res["numpy"][name].numpy(), res["torch"][name].numpy())
    np.testing.assert_allclose(
        res["numpy"]["negative_scores"].numpy(), res["torch"]["negative_scores"].numpy(), atol=TOL
    )


def test_auto_resolves_once_and_is_recorded():
    corpus = small_corpus(n_sources=300, n_clusters=6, n_questions=60, seed=2)
    m = NegativeMiner(**corpus, n_neg=4, nprobe=3, products="auto")
    lib = m.plan.config.products
    assert lib in LIBS and m.plan.backend.products == lib and m.config.products == "auto"
    m.mine_arrays()
    rec = m.last_stats["products"]
    assert rec["setting"] == "auto" and rec["library"] == lib
    cal = rec["calibration"]
    assert cal["library"] == lib and set(cal["gflops"]) == set(LIBS)
    assert cal["threads"] == 2  # the probe kernel's threads
    # Measured once per machine: the next run reads the cache.
    assert resolve_products("auto", 16, 2)["calibration"]["cached"]
    fixed = NegativeMiner(**corpus, n_neg=4, nprobe=3, products=lib)
    assert run_key(fixed.plan) == run_key(m.plan)  # keyed by the library it resolved to
    res = m.mine_all_negatives()
    assert res["hard_negatives"].numpy().tobytes() == (
        fixed.mine_all_negatives()["hard_negatives"].numpy().tobytes()
    )


@pytest.mark.parametrize("bad", ["mkl", "Torch", 1, None])
def test_bad_value_names_products(bad):
    with pytest.raises(ValueError, match=r"`products` must be one of 'numpy', 'torch', 'auto'"):
        MiningConfig(products=bad)
    with pytest.raises(ValueError, match="`products`"):
        resolve_products(bad)


def test_cli_option_and_bench_baseline(capsys):
    parse = _build_parser().parse_args
    assert "products" not in _miner_keywords(parse(["mine", "D", "--out", "O"]))
    args = parse(["mine", "D", "--out", "O", "--products", "auto", "--nprobe", "2", "-q"])
    assert _miner_keywords(args)["products"] == "auto"
    corpus = small_corpus(n_sources=200, n_clusters=5, n_questions=40, seed=6)
    stats = mine(args, corpus, None)
    assert stats["products"]["setting"] == "auto"
    print_stats(stats, 1.0)
    lib = stats["products"]["library"]
    assert f"products through {lib} (auto; GFLOP/s numpy " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parse(["mine", "D", "--out", "O", "--products", "mkl"])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((300, 16), dtype=np.float32)
    s = rng.standard_normal((500, 16), dtype=np.float32)
    for lib in LIBS:
        assert bare_product_seconds(q, s, library=lib) > 0
