"""The command line, run as a real process, and the package's manners."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch
from reference import check_rows, small_corpus

from negmine import NegativeMiner, validate_negatives
from negmine.io import load_outputs
from negmine.io.datasets import save_dataset


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "negmine", *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def corpus():
    return small_corpus(n_sources=300, n_clusters=6, n_questions=80, d=12, seed=21)


@pytest.mark.parametrize("fmt", ["npy", "jasper"])
def test_mine_then_validate(tmp_path, corpus, fmt):
    data = tmp_path / "data"
    save_dataset(data, corpus, format=fmt)
    out = tmp_path / "out"
    proc = _run("mine", str(data), "--out", str(out), "--n-neg", "8",
                "--tier-proportions", "2,2,2,2", "--seed", "3", "--quiet")  # fmt: skip
    assert proc.stderr == ""  # --quiet: no progress bars
    res = load_outputs(out)
    check_rows(res, corpus, adjacent_k=3)
    api = NegativeMiner(**corpus, n_neg=8, tier_proportions=[2, 2, 2, 2], seed=3)
    expected = api.mine_all_negatives()
    assert np.array_equal(res["hard_negatives"], expected["hard_negatives"].numpy())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["tier_counts"] == [2, 2, 2, 2]
    assert manifest["stats"]["tiers"]["3"]["count"] == 2 * len(corpus["pair_indices"])
    for name in ("hard_negatives", "negative_tiers"):
        t = torch.load(out / f"{name}.pt", weights_only=True)
        assert t.dtype == torch.int64 and t.shape == (len(corpus["pair_indices"]), 8)
    proc = _run("validate", str(out), "--data", str(data))
    assert "ok" in proc.stdout


def test_mine_summary_gives_the_stage_times_of_its_manifest(tmp_path, corpus):
    data = tmp_path / "data"
    save_dataset(data, corpus)
    out = tmp_path / "out"
    proc = _run("mine", str(data), "--out", str(out), "--n-neg", "8")
    st = json.loads((out / "manifest.json").read_text())["stats"]
    tm, cpu = st["timings_seconds"], st["cpu_seconds"]
    assert set(cpu) == set(tm) - {"index"}
    line = (f"tier 3 search {tm['tier3_search']:.2f} s, tiers 1, 2, 4 and cosines "
            f"{tm['sampling_and_scores']:.2f} s; CPU {cpu['total']:.2f} s, "
            f"{cpu['total'] / tm['total']:.2f} cores busy")  # fmt: skip
    assert line in proc.stdout.splitlines()


def test_jasper_without_source_clusters_derives_them(tmp_path, corpus):
    data = tmp_path / "jasper"
    arrays = {k: v for k, v in corpus.items() if k != "source_cluster_ids"}
    save_dataset(data, arrays, format="jasper")
    out = tmp_path / "out"
    proc = _run("mine", str(data), "--out", str(out), "--n-neg", "6", "--quiet", "-v")
    assert "derived" in proc.stderr.lower()
    assert _run("validate", str(out), "--data", str(data)).returncode == 0


def test_validate_fails_on_a_planted_positive(tmp_path, corpus):
    data = tmp_path / "data"
    save_dataset(data, corpus)
    out = tmp_path / "out"
    _run("mine", str(data), "--out", str(out), "--n-neg", "6", "--quiet")
    ids = torch.load(out / "hard_negatives.pt", weights_only=True)
    ids[0, 0] = int(corpus["pair_indices"][0, 1])
    torch.save(ids, out / "hard_negatives.pt")
    proc = _run("validate", str(out), "--data", str(data), check=False)
    assert proc.returncode == 1
    assert "positive" in proc.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path, corpus):
    data = tmp_path / "data"
    bad = dict(corpus)
    bad["source_embeddings"] = corpus["source_embeddings"].copy()
    bad["source_embeddings"][4, 2] = np.nan
    save_dataset(data, bad)
    proc = _run("mine", str(data), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "`source_embeddings`" in lines[0] and "row 4" in lines[0]
    assert "Traceback" not in proc.stderr
    proc = _run("mine", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_demo_small_runs_and_validates(tmp_path):
    out = tmp_path / "demo"
    proc = _run("demo", "--sources", "3000", "--n-clusters", "20", "--pairs", "1500",
                "--dim", "32", "--out", str(out))  # fmt: skip
    assert "validation: ok" in proc.stdout
    assert "tier 3 search" in proc.stderr  # progress bars go to stderr
    res = load_outputs(out)
    assert res["hard_negatives"].shape == (1500, 12)


def test_index_build_info_and_reuse(tmp_path, corpus):
    np.save(tmp_path / "src.npy", corpus["source_embeddings"])
    idx_dir = tmp_path / "idx"
    _run("index", "build", str(tmp_path / "src.npy"), "--out", str(idx_dir), "--quiet")
    info = json.loads(_run("index", "info", str(idx_dir)).stdout)
    assert info["ntotal"] == 300 and info["factory"] == "Flat"
    listing = _run("index", "list", str(tmp_path)).stdout.splitlines()
    assert len(listing) == 2 and listing[1].split()[:5] == ["idx", "flat", "Flat", "300", "12"]
    a = NegativeMiner(**corpus, n_neg=6, index=idx_dir).mine_all_negatives()
    b = NegativeMiner(**corpus, n_neg=6).mine_all_negatives()
    assert torch.equal(a["hard_negatives"], b["hard_negatives"])
    other = dict(corpus, source_embeddings=corpus["source_embeddings"] * 1.5 + 0.1)
    with pytest.raises(ValueError, match="fingerprint"):
        NegativeMiner(**other, n_neg=6, index=idx_dir).mine_all_negatives()


def test_import_is_light_and_library_is_silent(corpus, capsys, caplog):
    code = "import sys, negmine; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    with caplog.at_level(logging.WARNING, logger="negmine"):
        res = NegativeMiner(**corpus, n_neg=6).mine_all_negatives()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert not caplog.records
    report = validate_negatives(
        res["hard_negatives"], res["negative_tiers"], pair_indices=corpus["pair_indices"],
        pair_cluster_ids=corpus["pair_cluster_ids"],
        source_cluster_ids=corpus["source_cluster_ids"],
        centroid_embeddings=corpus["centroid_embeddings"],
    )  # fmt: skip
    assert report.ok


def test_save_round_trip(tmp_path, corpus):
    miner = NegativeMiner(**corpus, n_neg=6)
    res = miner.mine_all_negatives()
    miner.save(tmp_path / "o", res)
    for key, val in res.items():
        loaded = torch.load(tmp_path / "o" / f"{key}.pt", weights_only=True)
        assert torch.equal(loaded, val), key
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["seed"] == 42
    assert (
        sum(t["count"] for t in manifest["stats"]["tiers"].values())
        == res["hard_negatives"].numel()
    )


def test_saved_index_round_trip_and_fingerprint(tmp_path, corpus):
    from negmine import SourceIndex

    built = SourceIndex.build(corpus["source_embeddings"])
    built.save(tmp_path / "idx")
    q = np.ascontiguousarray(corpus["source_embeddings"][:5] / 3, dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for mmap in (False, True):
        loaded = SourceIndex.load(tmp_path / "idx", mmap=mmap)
        for a, b in zip(built.search(q, 4), loaded.search(q, 4), strict=True):
            assert np.array_equal(a, b)
    res = NegativeMiner(**corpus, n_neg=6).mine_all_negatives()
    again = NegativeMiner(**corpus, n_neg=6, index=tmp_path / "idx").mine_all_negatives()
    assert torch.equal(res["hard_negatives"], again["hard_negatives"])
    f16 = dict(corpus, source_embeddings=corpus["source_embeddings"].astype(np.float16))
    with pytest.raises(ValueError, match="other embeddings"):
        NegativeMiner(**f16, n_neg=6, index=tmp_path / "idx").mine_all_negatives()
