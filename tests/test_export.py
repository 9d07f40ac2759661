"""Mined ids back to texts: the column layouts, written values and files on disk."""

from __future__ import annotations

import json

import numpy as np
import pytest

from negmine.export import pair_records, st_columns, write_columns

QUERIES = ["q0", "q1"]
CORPUS = ["p0", "p1", "n2", "n3", "n4"]
# q0 has two positives (p0, p1); q1 has one (p1, shared with q0)
PAIRS = np.array([[0, 0], [0, 1], [1, 1]])
NEG = np.array([[2, 3], [3, 4], [0, 2]])
TIERS = np.array([[1, 3], [2, 4], [1, 2]])
NS = np.array([[0.5, 0.25], [0.25, 0.125], [0.75, 0.5]], dtype=np.float32)
PS = np.array([0.875, 0.625, 0.9375], dtype=np.float32)


def cols(fmt, **kw):
    return st_columns(QUERIES, CORPUS, PAIRS, NEG, NS, PS, TIERS, output_format=fmt,
                      anchor_column_name="query", positive_column_name="answer", **kw)  # fmt: skip


def test_triplet_rows_and_scores():
    c = cols("triplet", output_scores=True, output_tiers=True)
    assert list(c) == ["query", "answer", "negative", "scores", "tier"]
    assert c["query"] == ["q0", "q0", "q0", "q0", "q1", "q1"]
    assert c["answer"] == ["p0", "p0", "p1", "p1", "p1", "p1"]
    assert c["negative"] == ["n2", "n3", "n3", "n4", "p0", "n2"]
    assert c["scores"] == [[0.875, 0.5], [0.875, 0.25], [0.625, 0.25], [0.625, 0.125],
                           [0.9375, 0.75], [0.9375, 0.5]]  # fmt: skip
    assert c["tier"] == [1, 3, 2, 4, 1, 2]


def test_ntuple_columns():
    c = cols("n-tuple")
    assert list(c) == ["query", "answer", "negative_1", "negative_2"]
    assert c["negative_1"] == ["n2", "n3", "p0"] and c["negative_2"] == ["n3", "n4", "n2"]
    c = cols("n-tuple", output_scores=True, output_tiers=True)
    assert list(c)[-2:] == ["scores", "tiers"]
    assert c["scores"][2] == [0.9375, 0.75, 0.5] and c["tiers"][1] == [2, 4]


def test_labeled_list_labels_or_scores():
    c = cols("labeled-list")
    assert list(c) == ["query", "answer", "labels"]
    assert c["answer"][0] == ["p0", "n2", "n3"] and c["labels"] == [[1, 0, 0]] * 3
    c = cols("labeled-list", output_scores=True)
    assert list(c) == ["query", "answer", "scores"]
    assert c["scores"][1] == [0.625, 0.25, 0.125]


def test_labeled_pair_per_question_positives_then_distinct_negatives():
    c = cols("labeled-pair", output_tiers=True)
    assert list(c) == ["query", "answer", "label", "tier"]
    # q0: positives p0, p1, then negatives n2, n3 (pair 0) and n4 (pair 1; n3 listed once)
    assert c["query"] == ["q0"] * 5 + ["q1"] * 3
    assert c["answer"] == ["p0", "p1", "n2", "n3", "n4", "p1", "p0", "n2"]
    assert c["label"] == [1, 1, 0, 0, 0, 1, 0, 0]
    assert c["tier"] == [0, 0, 1, 3, 4, 0, 1, 2]
    s = cols("labeled-pair", output_scores=True)
    assert list(s) == ["query", "answer", "score"]
    assert s["score"] == [0.875, 0.625, 0.5, 0.25, 0.125, 0.9375, 0.75, 0.5]


def test_bad_format_and_same_column_names():
    with pytest.raises(ValueError, match="`output_format` must be one of"):
        cols("quadruplet")
    with pytest.raises(ValueError, match="`positive_column_name` must differ"):
        st_columns(QUERIES, CORPUS, PAIRS, NEG, NS, PS, output_format="triplet",
                   anchor_column_name="x", positive_column_name="x")  # fmt: skip


def test_records_written_as_jsonl_and_parquet(tmp_path):
    import pyarrow.parquet as pq

    rec = pair_records(QUERIES, CORPUS, PAIRS, NEG, TIERS, NS, PS)
    j = write_columns(rec, tmp_path / "r.jsonl", "jsonl")
    lines = [json.loads(s) for s in j.read_text(encoding="utf-8").splitlines()]
    assert lines[1] == {"query": "q0", "positive": "p1", "negatives": ["n3", "n4"],
                        "tiers": [2, 4], "scores": [0.25, 0.125], "positive_score": 0.625,
                        "query_id": 0, "source_id": 1, "negative_ids": [3, 4]}  # fmt: skip
    p = write_columns(rec, tmp_path / "r.parquet", "parquet")
    assert pq.read_table(p).to_pydict() == rec
