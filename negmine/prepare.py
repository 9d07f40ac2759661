"""From (question, passage) texts to the six mining inputs, and data directories with texts.

Texts become ids first: each distinct question text is one question, each
distinct passage text one source (a repeated answer is one source, so it can
never come back as a negative of a question it answers), and exact duplicate
rows are one pair. Ids follow first appearance, never hash order.

A prepared data directory holds what ``negmine mine`` reads (the six ``.npy``
inputs), the texts (``queries.parquet``, ``corpus.parquet``, one ``text``
column each, row ``i`` the text of id ``i``) and ``prepare.json`` (column
names, model, prompts, clustering settings, fingerprints of the texts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_embeddings, fail
from .clustering import cluster_sources, pair_clusters
from .io.datasets import save_dataset

__all__ = [
    "PREPARE_FILE",
    "PairTexts",
    "check_texts",
    "load_texts",
    "pairs_from_texts",
    "read_table",
    "prepare_arrays",
    "save_prepared",
    "texts_fingerprint",
]

log = logging.getLogger(__name__)

PREPARE_FILE = "prepare.json"
QUERIES_FILE = "queries.parquet"
CORPUS_FILE = "corpus.parquet"


def _atomic() -> Any:
    from . import io

    return io


@dataclass
class PairTexts:
    """Distinct texts and the pairs between them.

    Attributes
    ----------
    queries : list of str
        Distinct question texts, in order of first appearance; id = position.
    corpus : list of str
        Distinct passage texts: the extra corpus first, then the positives, in
        order of first appearance (the order sentence-transformers uses).
    pair_indices : int64 [P, 2]
        Distinct (question id, source id) pairs, grouped by question (questions
        in order of first appearance, a question's positives in their order).
    row_pair : int64 [N]
        The pair of each input row (duplicate rows share one).
    """

    queries: list[str]
    corpus: list[str]
    pair_indices: np.ndarray
    row_pair: np.ndarray

    @property
    def n_duplicate_rows(self) -> int:
        return int(self.row_pair.size - self.pair_indices.shape[0])


def check_texts(values: Sequence[Any], name: str, allow_empty: bool = False) -> list[str]:
    """``values`` as a list of non-empty strings; a bad entry fails naming its row."""
    out = list(values)
    if not out and not allow_empty:
        fail(name, "hold at least one text", "an empty column", "Pass a non-empty dataset.")
    for i, v in enumerate(out):
        if not isinstance(v, str):
            fail(
                name,
                "hold texts (str)",
                f"{type(v).__name__} {v!r} at row {i}",
                "Convert the column to strings, or drop the rows without a text.",
                exc=TypeError,
            )
        if not v.strip():
            fail(
                name,
                "hold non-empty texts",
                f"{v!r} at row {i}",
                "Every question needs a positive text; drop or fill that row.",
            )
    return out


def pairs_from_texts(
    queries: Sequence[str],
    positives: Sequence[str],
    corpus: Sequence[str] | None = None,
    names: tuple[str, str] = ("queries", "positives"),
) -> PairTexts:
    """Dedupe texts into ids and rows into pairs.

    Parameters
    ----------
    queries, positives : sequence of str, length N
        Row ``i`` says ``positives[i]`` answers ``queries[i]``.
    corpus : sequence of str, optional
        More passages, candidates for negatives only (unless also a positive).
    names : (str, str)
        How errors name ``queries`` and ``positives`` (e.g. their columns).

    Returns
    -------
    PairTexts
    """
    q = check_texts(queries, names[0])
    p = check_texts(positives, names[1])
    if len(q) != len(p):
        fail(names[1], f"have one text per query (N = {len(q)})", f"{len(p)} texts")
    extra = check_texts(corpus, "corpus", allow_empty=True) if corpus is not None else []
    q_id: dict[str, int] = {}
    for t in q:
        q_id.setdefault(t, len(q_id))
    s_id: dict[str, int] = {}
    for t in (*extra, *p):
        s_id.setdefault(t, len(s_id))
    rows = np.array(
        [[q_id[a], s_id[b]] for a, b in zip(q, p, strict=True)], dtype=np.int64
    ).reshape(-1, 2)
    # distinct pairs in first appearance, then grouped by question (stable)
    seen: dict[tuple[int, int], int] = {}
    first = [seen.setdefault((int(a), int(b)), len(seen)) for a, b in rows]
    uniq = np.array(list(seen), dtype=np.int64).reshape(-1, 2)
    order = np.argsort(uniq[:, 0], kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return PairTexts(list(q_id), list(s_id), uniq[order], rank[np.asarray(first, dtype=np.int64)])


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 of a list of texts (their order and boundaries included)."""
    h = hashlib.sha256()
    h.update(len(texts).to_bytes(8, "little"))
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def prepare_arrays(
    source_embeddings: Any,
    question_embeddings: Any,
    pair_indices: Any,
    *,
    n_clusters: Any = "auto",
    seed: int = 42,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The six mining inputs from embeddings and pairs, clustering the sources.

    Parameters
    ----------
    source_embeddings : float [S, d]
    question_embeddings : float [Q, d]
    pair_indices : int [P, 2]
        (question, source) pairs.
    n_clusters : int or "auto"
        See :func:`negmine.clustering.default_n_clusters`.
    seed : int
        k-means seed.

    Returns
    -------
    arrays : dict
        The :data:`negmine.io.datasets.INPUT_NAMES` arrays: sources and questions
        as float32, centroids float32 [C, d], pairs int64 [P, 2], pair and
        source clusters int64.
    info : dict
        The clustering's :attr:`negmine.clustering.Clusters.info`.
    """
    src = check_embeddings(source_embeddings, "source_embeddings")
    qry = check_embeddings(
        question_embeddings, "question_embeddings", src.shape[1], "source_embeddings"
    )
    cl = cluster_sources(src, n_clusters, seed=seed)
    pairs = np.asarray(pair_indices, dtype=np.int64)
    arrays = {
        "source_embeddings": np.ascontiguousarray(src, dtype=np.float32),
        "question_embeddings": np.ascontiguousarray(qry, dtype=np.float32),
        "centroid_embeddings": cl.centroid_embeddings,
        "pair_indices": pairs,
        "pair_cluster_ids": pair_clusters(pairs, cl.source_cluster_ids),
        "source_cluster_ids": cl.source_cluster_ids,
    }
    return arrays, dict(cl.info)


def save_prepared(
    path: str | os.PathLike[str],
    arrays: dict[str, np.ndarray],
    texts: PairTexts,
    info: dict[str, Any],
) -> Path:
    """Write a prepared data directory: the six inputs, the texts and ``prepare.json``.

    ``prepare.json`` is written last: a directory without it is incomplete.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    marker = p / PREPARE_FILE
    if marker.exists():
        marker.unlink()
    save_dataset(p, arrays)
    io = _atomic()
    for name, col in ((QUERIES_FILE, texts.queries), (CORPUS_FILE, texts.corpus)):
        with io.atomic_path(p / name) as tmp:
            pq.write_table(pa.table({"text": pa.array(col, type=pa.string())}), tmp)
    meta = dict(info)
    meta["queries_sha256"] = texts_fingerprint(texts.queries)
    meta["corpus_sha256"] = texts_fingerprint(texts.corpus)
    meta["n_pairs"] = int(texts.pair_indices.shape[0])
    meta["n_duplicate_rows"] = texts.n_duplicate_rows
    io.atomic_write_json(marker, meta)
    log.info("wrote %s", p)
    return p


def load_texts(path: str | os.PathLike[str]) -> tuple[list[str], list[str], dict[str, Any]]:
    """Question texts, passage texts and ``prepare.json`` of a prepared data directory.

    Raises
    ------
    FileNotFoundError
        When ``path`` has no ``prepare.json``, ``queries.parquet`` or ``corpus.parquet``.
    ValueError
        When the texts do not match the fingerprints recorded in ``prepare.json``.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    for name in (PREPARE_FILE, QUERIES_FILE, CORPUS_FILE):
        if not (p / name).is_file():
            raise FileNotFoundError(
                f"`data` must be a directory written by `negmine prepare`; '{p}' has no {name}. "
                "Run negmine prepare first."
            )
    meta = json.loads((p / PREPARE_FILE).read_text(encoding="utf-8"))
    queries = pq.read_table(p / QUERIES_FILE).column("text").to_pylist()
    corpus = pq.read_table(p / CORPUS_FILE).column("text").to_pylist()
    for name, col in (("queries", queries), ("corpus", corpus)):
        if texts_fingerprint(col) != meta.get(f"{name}_sha256"):
            fail(
                "data",
                f"hold the {name} texts recorded in {PREPARE_FILE}",
                f"'{p}'",
                "The texts changed after prepare; run negmine prepare again.",
            )
    return queries, corpus, meta


def read_table(path: str | os.PathLike[str]) -> dict[str, list[Any]]:
    """Columns of a ``.jsonl`` file, a ``.parquet`` file or a saved HF dataset directory.

    Returns
    -------
    dict of str to list
        Column name to values, in the file's column order.
    """
    p = Path(path)
    if p.is_dir():
        from datasets import load_from_disk

        ds = load_from_disk(str(p))
        if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
            fail(
                "pairs",
                "be one dataset, not a DatasetDict",
                f"splits {list(ds.keys())}",
                f"Point at one split's directory, e.g. '{p / next(iter(ds.keys()))}'.",
            )
        return {c: ds[c] for c in ds.column_names}
    if not p.is_file():
        raise FileNotFoundError(f"`pairs` must be an existing file or directory; got '{p}'.")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pydict()
    if p.suffix in (".jsonl", ".json"):
        cols: dict[str, list[Any]] = {}
        with open(p, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                fail(
                    "pairs", "hold one JSON object per line", f"{type(r).__name__} on line {i + 1}"
                )
            for k in r:
                cols.setdefault(k, [])
        for k in cols:
            cols[k] = [r.get(k) for r in rows]
        return cols
    if p.suffix == ".txt":
        return {"text": p.read_text(encoding="utf-8").splitlines()}
    fail("pairs", "be a .jsonl, .parquet or .txt file or a saved dataset directory", f"'{p}'")
