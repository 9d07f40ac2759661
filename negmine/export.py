"""Mined ids back to texts: sentence-transformers formats, jsonl and parquet.

The sentence-transformers formats have the columns, in the order, that
``sentence_transformers.util.mine_hard_negatives`` gives (``a`` and ``p`` the
anchor and positive column names):

==============  ==================================  ==========================
format          columns                             with ``output_scores``
==============  ==================================  ==========================
triplet         a, p, negative                      a, p, negative, scores
n-tuple         a, p, negative_1 .. negative_n      ... , scores
labeled-pair    a, p, label                         a, p, score
labeled-list    a, p (list), labels (list)          a, p (list), scores (list)
==============  ==================================  ==========================

Rows follow the pairs, grouped by question as sentence-transformers groups
them. ``triplet`` has one row per (pair, negative); ``n-tuple`` and
``labeled-list`` one row per pair; ``labeled-pair`` lists, per question, its
positives (label 1) then its negatives (label 0, each distinct text once).
``output_tiers`` appends the tier of each negative: ``tier`` (triplet,
labeled-pair, where positives have tier 0) or ``tiers`` (a list).

``jsonl`` and ``parquet`` write one row per pair with every field:
``query``, ``positive``, ``negatives``, ``tiers``, ``scores``,
``positive_score``, ``query_id``, ``source_id``, ``negative_ids``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import fail

__all__ = ["FILE_FORMATS", "ST_FORMATS", "export_run", "pair_records", "st_columns"]

ST_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
FILE_FORMATS = ("jsonl", "parquet")


def _float(x: Any) -> float:
    return float(np.float32(x))


def st_columns(
    queries: list[str],
    corpus: list[str],
    pair_indices: np.ndarray,
    hard_negatives: np.ndarray,
    negative_scores: np.ndarray,
    positive_scores: np.ndarray,
    negative_tiers: np.ndarray | None = None,
    *,
    output_format: str = "triplet",
    output_scores: bool = False,
    output_tiers: bool = False,
    anchor_column_name: str = "anchor",
    positive_column_name: str = "positive",
) -> dict[str, list[Any]]:
    """Columns of a sentence-transformers training set, in order.

    Parameters
    ----------
    queries, corpus : list of str
        Text of each question id and source id.
    pair_indices : int [P, 2]
        (question id, source id) of each pair.
    hard_negatives : int [P, n]
        Source ids of each pair's negatives.
    negative_scores : float [P, n]
        Cosine of each negative to the pair's question.
    positive_scores : float [P]
        Cosine of each pair's question to its source.
    negative_tiers : int [P, n], optional
        Needed with ``output_tiers``.
    output_format : {"triplet", "n-tuple", "labeled-pair", "labeled-list"}
    output_scores, output_tiers : bool
    anchor_column_name, positive_column_name : str

    Returns
    -------
    dict of str to list
        Column name to values; insertion order is column order.
    """
    if output_format not in ST_FORMATS:
        fail("output_format", f"be one of {list(ST_FORMATS)}", repr(output_format))
    if output_tiers and negative_tiers is None:
        fail("output_tiers", "come with the tiers of the negatives", "no negative_tiers")
    if anchor_column_name == positive_column_name:
        fail("positive_column_name", "differ from anchor_column_name", repr(positive_column_name))
    pairs = np.asarray(pair_indices)
    neg = np.asarray(hard_negatives)
    ns = np.asarray(negative_scores, dtype=np.float32)
    ps = np.asarray(positive_scores, dtype=np.float32)
    tiers = None if negative_tiers is None else np.asarray(negative_tiers)
    a, p = anchor_column_name, positive_column_name
    qtext = [queries[int(i)] for i in pairs[:, 0]]
    ptext = [corpus[int(i)] for i in pairs[:, 1]]
    ntext = [[corpus[int(j)] for j in row] for row in neg]
    n = neg.shape[1]
    cols: dict[str, list[Any]] = {}
    if output_format == "triplet":
        cols[a] = [t for t in qtext for _ in range(n)]
        cols[p] = [t for t in ptext for _ in range(n)]
        cols["negative"] = [t for row in ntext for t in row]
        if output_scores:
            cols["scores"] = [[_float(ps[i]), _float(s)] for i in range(len(ns)) for s in ns[i]]
        if output_tiers:
            cols["tier"] = [int(t) for row in tiers for t in row]
    elif output_format == "n-tuple":
        cols[a], cols[p] = qtext, ptext
        for j in range(n):
            cols[f"negative_{j + 1}"] = [row[j] for row in ntext]
        if output_scores:
            cols["scores"] = [[_float(ps[i])] + [_float(s) for s in ns[i]] for i in range(len(ns))]
        if output_tiers:
            cols["tiers"] = [[int(t) for t in row] for row in tiers]
    elif output_format == "labeled-list":
        cols[a] = qtext
        cols[p] = [[ptext[i], *ntext[i]] for i in range(len(ntext))]
        if output_scores:
            cols["scores"] = [[_float(ps[i])] + [_float(s) for s in ns[i]] for i in range(len(ns))]
        else:
            cols["labels"] = [[1] + [0] * n for _ in range(len(ntext))]
        if output_tiers:
            cols["tiers"] = [[0] + [int(t) for t in row] for row in tiers]
    else:
        cols = _labeled_pairs(
            queries, corpus, pairs, neg, ns, ps, tiers, output_scores, output_tiers, a, p
        )
    return cols


def _labeled_pairs(queries, corpus, pairs, neg, ns, ps, tiers, scores, with_tiers, a, p):
    """Per question: its positives (label 1), then its negatives once each (label 0)."""
    cols: dict[str, list[Any]] = {a: [], p: [], "score" if scores else "label": []}
    if with_tiers:
        cols["tier"] = []
    key = "score" if scores else "label"
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    ends = np.r_[starts[1:], len(pairs)]
    for s, e in zip(starts, ends, strict=True):
        q = queries[int(pairs[s, 0])]
        rows = [(int(pairs[i, 1]), _float(ps[i]) if scores else 1, 0) for i in range(s, e)]
        taken = {r[0] for r in rows}
        for i in range(s, e):
            for j, sid in enumerate(neg[i]):
                if int(sid) in taken:
                    continue
                taken.add(int(sid))
                t = int(tiers[i, j]) if tiers is not None else 0
                rows.append((int(sid), _float(ns[i, j]) if scores else 0, t))
        for sid, v, t in rows:
            cols[a].append(q)
            cols[p].append(corpus[sid])
            cols[key].append(v)
            if with_tiers:
                cols["tier"].append(t)
    return cols


def pair_records(
    queries: list[str],
    corpus: list[str],
    pair_indices: np.ndarray,
    hard_negatives: np.ndarray,
    negative_tiers: np.ndarray,
    negative_scores: np.ndarray,
    positive_scores: np.ndarray | None,
) -> dict[str, list[Any]]:
    """One row per pair with every field, as columns (see the module docstring)."""
    pairs = np.asarray(pair_indices)
    neg = np.asarray(hard_negatives)
    ps = None if positive_scores is None else np.asarray(positive_scores, dtype=np.float32)
    return {
        "query": [queries[int(i)] for i in pairs[:, 0]],
        "positive": [corpus[int(i)] for i in pairs[:, 1]],
        "negatives": [[corpus[int(j)] for j in row] for row in neg],
        "tiers": np.asarray(negative_tiers).astype(np.int64).tolist(),
        "scores": np.asarray(negative_scores, dtype=np.float32).astype(np.float64).tolist(),
        "positive_score": [None] * len(pairs) if ps is None else ps.astype(np.float64).tolist(),
        "query_id": pairs[:, 0].astype(np.int64).tolist(),
        "source_id": pairs[:, 1].astype(np.int64).tolist(),
        "negative_ids": neg.astype(np.int64).tolist(),
    }


def write_columns(columns: dict[str, list[Any]], path: str | os.PathLike[str], kind: str) -> Path:
    """Write columns as ``jsonl`` (an object a line), ``parquet`` or a saved HF dataset (``hf``)."""
    from . import io

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    if kind == "jsonl":
        with io.atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(json.dumps({k: columns[k][i] for k in names}, ensure_ascii=False) + "\n")
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with io.atomic_path(out) as tmp:
            pq.write_table(pa.table(columns), tmp)
    elif kind == "hf":
        from datasets import Dataset

        if out.exists():
            fail(
                "out",
                "not exist yet (a dataset directory is written whole)",
                f"'{out}'",
                "Choose a new path or remove it.",
            )
        Dataset.from_dict(columns).save_to_disk(str(out))
    else:
        fail("kind", "be 'jsonl', 'parquet' or 'hf'", repr(kind))
    return out


def export_run(
    run_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    output_format: str = "jsonl",
    *,
    output_scores: bool = False,
    output_tiers: bool = False,
) -> tuple[Path, int]:
    """Write the texts of a mining run.

    Parameters
    ----------
    run_dir : path
        A ``negmine mine`` output directory.
    data_dir : path
        The ``negmine prepare`` directory it was mined from.
    out : path
        ``jsonl``/``parquet``: that file. A sentence-transformers format: a
        ``.jsonl`` or ``.parquet`` file by suffix, else a saved
        ``datasets.Dataset`` directory (``load_from_disk``).
    output_format : {"triplet", "n-tuple", "labeled-pair", "labeled-list", "jsonl", "parquet"}
    output_scores, output_tiers : bool
        Sentence-transformers formats only (the file formats hold everything).

    Returns
    -------
    (pathlib.Path, int)
        What was written and its number of rows.
    """
    from .io import load_outputs

    if output_format not in ST_FORMATS + FILE_FORMATS:
        fail("format", f"be one of {list(ST_FORMATS + FILE_FORMATS)}", repr(output_format))
    from .prepare import load_texts

    queries, corpus, meta = load_texts(data_dir)
    pairs = np.load(Path(data_dir) / "pair_indices.npy", allow_pickle=False)
    res = load_outputs(run_dir)
    neg = np.asarray(res["hard_negatives"])
    if neg.shape[0] != pairs.shape[0] or (neg.size and neg.max() >= len(corpus)):
        fail(
            "run_dir",
            f"hold negatives mined from '{data_dir}' ({pairs.shape[0]} pairs, "
            f"{len(corpus)} sources)",
            f"'{run_dir}' with {neg.shape[0]} rows",
            "Export a run with the data directory it was mined from.",
        )
    tiers, ns = np.asarray(res["negative_tiers"]), np.asarray(res["negative_scores"])
    ps = res.get("positive_scores")
    if output_format in FILE_FORMATS:
        cols = pair_records(queries, corpus, pairs, neg, tiers, ns, ps)
        kind = output_format
    else:
        if ps is None:
            fail(
                "run_dir",
                "hold positive_scores (written by this negmine version)",
                f"'{run_dir}' without them",
                "Mine again to export a ST format.",
            )
        cols = st_columns(
            queries,
            corpus,
            pairs,
            neg,
            ns,
            np.asarray(ps),
            tiers,
            output_format=output_format,
            output_scores=output_scores,
            output_tiers=output_tiers,
            anchor_column_name=meta.get("anchor_column_name", "anchor"),
            positive_column_name=meta.get("positive_column_name", "positive"),
        )
        suffix = Path(out).suffix.lower()
        kind = {".jsonl": "jsonl", ".parquet": "parquet"}.get(suffix, "hf")
    path = write_columns(cols, out, kind)
    return path, len(next(iter(cols.values())))
