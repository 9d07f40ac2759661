"""Index specs: ``clusters`` (and its compressed lists), ``auto``, factory strings
with per-run search parameters; each mining a corpus that passes the validator."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import build_index as _build
from reference import check_rows, small_corpus, tier3_reference

from negmine import NegativeMiner
from negmine.index import SourceIndex
from negmine.index.specs import choose_spec, parse_bytes
from negmine.synth import make_corpus

MINE = {"n_neg": 6, "tier_proportions": [1, 1, 3, 1], "adjacent_k": 2, "seed": 3}


def _args(c: dict) -> tuple:
    return (
        c["source_embeddings"],
        c["question_embeddings"],
        c["centroid_embeddings"],
        c["pair_indices"],
        c["pair_cluster_ids"],
        c["source_cluster_ids"],
    )


def _tier3(res: dict) -> np.ndarray:
    ids = np.asarray(res["hard_negatives"])
    tiers = np.asarray(res["negative_tiers"])
    return np.where(tiers == 3, ids, -1)


def _tier3_recall(res: dict, ref: list) -> float:
    got = _tier3(res)
    hits = [len(set(got[r].tolist()) & set(ids.tolist())) / len(ids) for r, (ids, _) in
            enumerate(ref)]  # fmt: skip
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def corpus() -> dict:
    return small_corpus(n_sources=600, n_clusters=10, n_questions=150, d=24, seed=5)


def test_clusters_lists_are_the_clusters(corpus):
    idx = _build(corpus, "clusters")
    from negmine.layout import ClusterLayout

    scl = corpus["source_cluster_ids"]
    lay = ClusterLayout.build(scl, 10, np.zeros((10, 0), dtype=np.int64))
    lists = idx.cluster_lists(lay.offsets)
    unit = corpus["source_embeddings"] / np.linalg.norm(
        corpus["source_embeddings"], axis=1, keepdims=True
    )
    for c in range(10):
        members = np.flatnonzero(scl == c)  # ascending id
        np.testing.assert_allclose(lists.block(c), unit[members], rtol=0, atol=1e-6)
    pos = np.array([5, 0, 599, 123, 5])
    np.testing.assert_allclose(lists.take(lay.rank[pos]), unit[pos], atol=1e-6)


@pytest.mark.parametrize("mmap", [False, True])
def test_clusters_with_every_cluster_probed_equals_brute_force(tmp_path, corpus, mmap):
    idx = _build(corpus, "clusters")
    idx.save(tmp_path / "ix")
    loaded = SourceIndex.load(tmp_path / "ix", mmap=mmap)
    res = NegativeMiner(*_args(corpus), index=loaded, nprobe=9, **MINE).mine_all_negatives()
    check_rows(res, corpus, MINE["adjacent_k"])
    ref = tier3_reference(corpus, 3)
    got = _tier3(res)
    for r, (ids, _) in enumerate(ref):
        assert set(got[r][got[r] >= 0].tolist()) == set(ids.tolist()), r
    # The same as the built-in exact search, id for id.
    exact = NegativeMiner(*_args(corpus), **MINE).mine_all_negatives()
    np.testing.assert_array_equal(got, _tier3(exact))


def test_clusters_small_nprobe_searches_only_the_nearest_other_clusters(corpus):
    idx = _build(corpus, "clusters")
    m = NegativeMiner(*_args(corpus), index=idx, nprobe=2, **MINE)
    res = m.mine_all_negatives()
    check_rows(res, corpus, MINE["adjacent_k"])
    # Reference: brute force restricted to the two centroids nearest the
    # question other than the pair's own.
    cen = corpus["centroid_embeddings"]
    cen = cen / np.linalg.norm(cen, axis=1, keepdims=True)
    qe = corpus["question_embeddings"]
    qe = qe / np.linalg.norm(qe, axis=1, keepdims=True)
    src = corpus["source_embeddings"] / np.linalg.norm(
        corpus["source_embeddings"], axis=1, keepdims=True
    )
    scl = corpus["source_cluster_ids"]
    pairs = corpus["pair_indices"]
    pos: dict[int, set[int]] = {}
    for q, s in pairs:
        pos.setdefault(int(q), set()).add(int(s))
    got = _tier3(res)
    for r, ((q, _s), c) in enumerate(zip(pairs, corpus["pair_cluster_ids"], strict=True)):
        cs = cen @ qe[q]
        cs[c] = -np.inf
        probed = np.argsort(-cs, kind="stable")[:2]
        ok = np.isin(scl, probed)
        ok[list(pos[int(q)])] = False
        cand = np.flatnonzero(ok)
        best = cand[np.argsort(-(src[cand] @ qe[q]), kind="stable")][:3]
        assert set(got[r][got[r] >= 0].tolist()) == set(best.tolist()), r


@pytest.mark.parametrize("spec", ["clusters,SQ8", "clusters,fp16"])
def test_compressed_clusters_rerank_exactly(corpus, spec):
    idx = _build(corpus, spec)
    assert idx.manifest["factory"].endswith(("SQ8", "SQfp16"))
    res = NegativeMiner(*_args(corpus), index=idx, nprobe=9, **MINE).mine_all_negatives()
    check_rows(res, corpus, MINE["adjacent_k"])
    # Decoding errors (~1e-3) can only swap near-ties; the re-rank keeps the
    # exact cosines, so recall is near 1 and the scores are the exact ones.
    assert _tier3_recall(res, tier3_reference(corpus, 3)) >= 0.97
    sc = np.asarray(res["negative_scores"])
    qe = corpus["question_embeddings"]
    src = corpus["source_embeddings"]
    ids = np.asarray(res["hard_negatives"])
    qi = corpus["pair_indices"][:, 0]
    want = np.einsum(
        "pd,pkd->pk",
        qe[qi] / np.linalg.norm(qe[qi], axis=1, keepdims=True),
        src[ids] / np.linalg.norm(src[ids], axis=2, keepdims=True),
    )
    np.testing.assert_allclose(sc, want, atol=1e-5)


@pytest.mark.parametrize(
    "spec, params",
    [
        ("HNSW16", {"ef_search": 64}),
        ("IVF8,Flat", {"nprobe": 8}),
        ("IVF8,SQ8", {"nprobe": 8, "rerank": 3}),
    ],
)
def test_factory_specs_mine_valid_rows(tmp_path, corpus, spec, params):
    idx = SourceIndex.build(corpus["source_embeddings"], spec)
    idx.save(tmp_path / "ix")
    m = NegativeMiner(*_args(corpus), index=tmp_path / "ix", recall_sample=100, **params, **MINE)
    res = m.mine_all_negatives()
    check_rows(res, corpus, MINE["adjacent_k"])
    desc = m.last_stats["index"]
    assert desc["factory"] == spec
    for k, v in params.items():
        assert desc["search_params"][k] == v
    recall = m.last_stats["tier3_recall"]["recall"]
    assert recall == pytest.approx(_tier3_recall(res, tier3_reference(corpus, 3)), abs=0.05)
    if "nprobe" in params:  # every list probed: exact up to the codes' error
        assert recall >= 0.97


def test_ivf_nprobe_changes_the_search(corpus):
    idx = SourceIndex.build(corpus["source_embeddings"], "IVF8,Flat")
    recalls = []
    for nprobe in (1, 8):
        m = NegativeMiner(*_args(corpus), index=idx, nprobe=nprobe, recall_sample=150, **MINE)
        m.mine_all_negatives()
        recalls.append(m.last_stats["tier3_recall"]["recall"])
    assert recalls[1] == 1.0 and recalls[0] < recalls[1]


def test_clusters_index_refuses_other_clusters(corpus):
    idx = _build(corpus, "clusters")
    other = dict(corpus)
    scl = corpus["source_cluster_ids"].copy()
    scl[[10, 11]] = scl[[11, 10]] if scl[10] != scl[11] else (scl[[10, 11]] + 1) % 10
    other["source_cluster_ids"] = scl
    with pytest.raises(ValueError, match=r"other cluster assignment"):
        NegativeMiner(*_args(other), index=idx, **MINE).mine_all_negatives()
    moved = dict(corpus)
    moved["centroid_embeddings"] = corpus["centroid_embeddings"] + 0.5
    with pytest.raises(ValueError, match="other centroids"):
        NegativeMiner(*_args(moved), index=idx, **MINE).mine_all_negatives()
    other_src = dict(corpus)
    other_src["source_embeddings"] = corpus["source_embeddings"][::-1].copy()
    with pytest.raises(ValueError, match="fingerprint"):
        NegativeMiner(*_args(other_src), index=idx, **MINE).mine_all_negatives()


def test_clusters_spec_needs_the_clusters(corpus):
    with pytest.raises(ValueError, match="source_cluster_ids"):
        SourceIndex.build(corpus["source_embeddings"], "clusters")
    with pytest.raises(ValueError, match="spec"):
        _build(corpus, "clusters,PQ4")


@pytest.mark.parametrize("kw", [{"ef_search": 8}, {"rerank": 2}, {"nprobe": 2, "rerank": 2}])
def test_index_settings_without_an_index_are_refused(corpus, kw):
    name = next(k for k in kw if k != "nprobe")
    with pytest.raises(ValueError, match=f"`{name}` must come with an approximate `index`"):
        NegativeMiner(*_args(corpus), **kw, **MINE)


def test_ef_search_on_an_ivf_index_is_refused(corpus):
    idx = SourceIndex.build(corpus["source_embeddings"], "IVF8,Flat")
    with pytest.raises(ValueError, match="ef_search"):
        NegativeMiner(*_args(corpus), index=idx, ef_search=10, **MINE).mine_all_negatives()


def test_auto_records_its_choice(corpus):
    idx = _build(corpus, "auto")
    assert idx.manifest["auto"]["chose"] == "flat" and idx.is_exact
    assert "exact search" in idx.manifest["auto"]["reason"]
    big = make_corpus(3000, 12, 100, 16, seed=2)
    # A tiny budget forces an inverted file of compressed lists.
    import negmine.index.specs as specs_mod

    old = specs_mod.AUTO_FLAT_MAX
    specs_mod.AUTO_FLAT_MAX = 1000
    try:
        idx = _build(big, "auto", memory_budget=3000 * 16 * 2)
    finally:
        specs_mod.AUTO_FLAT_MAX = old
    assert idx.manifest["auto"]["chose"] == "clusters,fast"
    # 8-bit lists split in sub-lists: every cluster at least one, each its own.
    per = idx.manifest["clusters"]["sub_lists"]["per_cluster"]
    assert len(per) == 12 and min(per) >= 1
    assert idx.manifest["factory"] == f"IVF{sum(per)},SQ8" and idx.sub_list_count == sum(per)
    res = NegativeMiner(*_args(big), index=idx, **MINE).mine_all_negatives()
    check_rows(res, big, MINE["adjacent_k"])


def test_choose_spec_follows_size_and_budget():
    g = 2**30
    assert choose_spec(50_000, 384, True, 8 * g)[0] == "flat"
    assert choose_spec(400_000, 384, True, 8 * g)[0] == "clusters"
    # From a million sources on, 8-bit lists: faster at the same recall.
    spec, reason = choose_spec(1_000_000, 384, True, 8 * g)
    assert spec == "clusters,fast" and "1000000 sources >= 1000000" in reason
    # float32 over budget: 8-bit lists (fp16 is never chosen: larger and slower).
    assert choose_spec(400_000, 384, True, g // 2)[0] == "clusters,fast"  # float32: 0.57 GiB
    spec, reason = choose_spec(400_000, 384, True, g // 8)
    assert spec == "clusters,fast" and "float32 over budget" in reason
    spec, reason = choose_spec(1_000_000, 384, False, 8 * g)
    assert spec == "IVF8192_HNSW32,Flat" and "8 sqrt(n)" in reason
    assert choose_spec(400_000, 384, False, 8 * g)[0] == "IVF4096,Flat"


@pytest.mark.parametrize(
    "text, want",
    [("8G", 8 * 2**30), ("512M", 512 * 2**20), ("2.5GiB", int(2.5 * 2**30)), (4096, 4096)],
)
def test_parse_bytes(text, want):
    assert parse_bytes(text) == want


@pytest.mark.parametrize("bad", ["lots", "-1G", 0, "G"])
def test_parse_bytes_refuses(bad):
    with pytest.raises(ValueError, match="memory_budget"):
        parse_bytes(bad)


# ---------------------------------------------------------------- command line
def _cli(*args: str, check: bool = True):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "negmine", *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _recall_line(out: str) -> float:
    line = next(x for x in out.splitlines() if x.startswith("recall@"))
    return float(line.split()[1])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, corpus):
    from negmine.io.datasets import save_dataset

    d = tmp_path_factory.mktemp("cli") / "data"
    save_dataset(d, corpus)
    return d


def test_cli_build_check_mine_with_every_spec(tmp_path, data_dir, corpus):
    import json

    from negmine.io import load_outputs
    from negmine.validate import validate_negatives

    store = tmp_path / "indexes"
    for name, spec in (("flat", "flat"), ("cl", "clusters"), ("sq", "clusters,SQ8"),
                       ("hnsw", "HNSW16"), ("auto", "auto")):  # fmt: skip
        _cli("index", "build", str(data_dir), "--spec", spec, "--out", str(store / name), "-q")
    listing = _cli("index", "list", str(store)).stdout
    for name in ("flat", "cl", "sq", "hnsw", "auto"):
        assert f"\n{name} " in listing
    info = json.loads(_cli("index", "info", str(store / "cl")).stdout)
    assert info["spec"] == "clusters" and info["clusters"]["n_clusters"] == 10
    # Honest recall: a flat index is exact, and so is probing every other cluster.
    assert _recall_line(_cli("index", "check", str(store / "flat"), "--data", str(data_dir),
                             "--sample", "100").stdout) == 1.0  # fmt: skip
    assert _recall_line(_cli("index", "check", str(store / "cl"), "--data", str(data_dir),
                             "--nprobe", "9").stdout) == 1.0  # fmt: skip
    low = _recall_line(_cli("index", "check", str(store / "cl"), "--data", str(data_dir),
                            "--nprobe", "1").stdout)  # fmt: skip
    assert 0 < low < 1.0
    for name in ("cl", "sq", "hnsw", "auto"):
        out = tmp_path / f"out-{name}"
        _cli("mine", str(data_dir), "--out", str(out), "--index", str(store / name),
             "--n-neg", "6", "--tier-proportions", "1,1,3,1", "--adjacent-k", "2",
             "--recall-sample", "50", "--quiet")  # fmt: skip
        res = load_outputs(out)
        check_rows(res, corpus, 2)
        rep = validate_negatives(
            res["hard_negatives"], res["negative_tiers"], pair_indices=corpus["pair_indices"],
            pair_cluster_ids=corpus["pair_cluster_ids"],
            source_cluster_ids=corpus["source_cluster_ids"],
            centroid_embeddings=corpus["centroid_embeddings"], adjacent_k=2,
        )  # fmt: skip
        assert rep.ok
        stats = json.loads((out / "manifest.json").read_text())["stats"]
        assert stats["index"]["fingerprint"] == info["fingerprint"]
        if name != "auto":  # auto chose flat here: exact, nothing to measure
            assert 0 <= stats["tier3_recall"]["recall"] <= 1


def test_cli_refuses_mismatches_in_one_line(tmp_path, data_dir, corpus):
    from negmine.io.datasets import save_dataset

    _cli("index", "build", str(data_dir), "--spec", "clusters", "--out", str(tmp_path / "ix"))
    other = dict(corpus, source_cluster_ids=(corpus["source_cluster_ids"] + 1) % 10)
    save_dataset(tmp_path / "other", other)
    proc = _cli("mine", str(tmp_path / "other"), "--out", str(tmp_path / "o"), "--index",
                str(tmp_path / "ix"), "--quiet", check=False)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "other cluster assignment" in proc.stderr
    assert not (tmp_path / "o").exists()
    proc = _cli("index", "build", str(data_dir / "source_embeddings.npy"), "--spec", "clusters",
                "--out", str(tmp_path / "ix2"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "--clusters FILE" in proc.stderr
    proc = _cli("index", "check", str(tmp_path / "ix"), "--data", str(data_dir), "--ef-search",
                "5", check=False)  # fmt: skip
    assert proc.returncode == 2 and "ef_search" in proc.stderr
