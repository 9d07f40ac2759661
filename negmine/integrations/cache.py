"""A folder of embeddings, clusters and indexes, reused across calls with the same texts.

Layout of ``cache_folder``::

    emb-<key>/              key = sha256(model identity, prompts, texts)
        questions.npy       float32 [Q, d]
        sources.npy         float32 [S, d]
        entry.json          the full key and what it was made of (written last)
        clusters-<key2>/    key2 = sha256(key, n_clusters, seed)
            centroid_embeddings.npy, source_cluster_ids.npy, entry.json
            index-<key3>/   key3 = sha256(spec): a SourceIndex directory

An entry counts only when its ``entry.json`` holds the full expected key, so a
change of model, prompt or text is a miss (a new directory), never a stale hit.
Files are written atomically and ``entry.json`` last: a killed write leaves no
entry that could be read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingCache", "digest"]

log = logging.getLogger(__name__)

ENTRY = "entry.json"


def digest(obj: Any) -> str:
    """sha256 of ``obj`` written as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _io() -> Any:
    from .. import io

    return io


def _read_entry(d: Path, key: str) -> dict[str, Any] | None:
    try:
        meta = json.loads((d / ENTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if meta.get("key") == key else None


def _save_arrays(d: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    io = _io()
    d.mkdir(parents=True, exist_ok=True)
    entry = d / ENTRY
    if entry.exists():
        entry.unlink()
    for name, a in arrays.items():
        with io.atomic_path(d / f"{name}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, a, allow_pickle=False)
    io.atomic_write_json(entry, meta)


class EmbeddingCache:
    """Embeddings keyed by model, prompts and texts; clusters and indexes under them.

    Parameters
    ----------
    folder : path
        Created when first written.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.hits: list[str] = []

    def _emb_dir(self, key: str) -> Path:
        return self.folder / f"emb-{key[:32]}"

    def get_embeddings(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(questions float32 [Q, d], sources float32 [S, d]) stored under ``key``, or None."""
        d = self._emb_dir(key)
        if _read_entry(d, key) is None:
            return None
        try:
            q = np.load(d / "questions.npy", allow_pickle=False)
            s = np.load(d / "sources.npy", allow_pickle=False)
        except (OSError, ValueError):
            return None
        self.hits.append("embeddings")
        log.info("cache: embeddings from %s", d)
        return q, s

    def put_embeddings(
        self, key: str, questions: np.ndarray, sources: np.ndarray, made_of: dict[str, Any]
    ) -> None:
        d = self._emb_dir(key)
        _save_arrays(
            d, {"questions": questions, "sources": sources}, {"key": key, "made_of": made_of}
        )
        log.info("cache: stored embeddings in %s", d)

    def _clusters_dir(self, key: str, n_clusters: Any, seed: int) -> tuple[Path, str]:
        k2 = digest({"embeddings": key, "n_clusters": str(n_clusters), "seed": int(seed)})
        return self._emb_dir(key) / f"clusters-{k2[:32]}", k2

    def get_clusters(
        self, key: str, n_clusters: Any, seed: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
        """(centroids, source cluster ids, info) for these embeddings and settings, or None."""
        d, k2 = self._clusters_dir(key, n_clusters, seed)
        meta = _read_entry(d, k2)
        if meta is None:
            return None
        cen = np.load(d / "centroid_embeddings.npy", allow_pickle=False)
        scl = np.load(d / "source_cluster_ids.npy", allow_pickle=False)
        self.hits.append("clusters")
        return cen, scl, meta["info"]

    def put_clusters(
        self,
        key: str,
        n_clusters: Any,
        seed: int,
        centroids: np.ndarray,
        source_cluster_ids: np.ndarray,
        info: dict[str, Any],
    ) -> None:
        d, k2 = self._clusters_dir(key, n_clusters, seed)
        arrays = {"centroid_embeddings": centroids, "source_cluster_ids": source_cluster_ids}
        _save_arrays(d, arrays, {"key": k2, "info": info})

    def index_dir(self, key: str, n_clusters: Any, seed: int, spec: str) -> Path:
        """Where the index of ``spec`` over these sources and clusters lives."""
        d, k2 = self._clusters_dir(key, n_clusters, seed)
        return d / f"index-{digest({'clusters': k2, 'spec': spec})[:32]}"

    def get_or_build_index(
        self, key: str, n_clusters: Any, seed: int, spec: str, build: Any
    ) -> Any:
        """The stored index for ``spec``, or ``build()`` saved there first.

        A stored index is loaded through the index store, which checks its
        manifest; one that fails to load is rebuilt.
        """
        from ..index import SourceIndex

        d = self.index_dir(key, n_clusters, seed, spec)
        if (d / "manifest.json").is_file():
            try:
                idx = SourceIndex.load(d, mmap=True)
            except (OSError, ValueError) as e:
                log.warning("cache: rebuilding the index in %s (%s)", d, e)
            else:
                self.hits.append("index")
                return idx
        idx = build()
        idx.save(d, overwrite=True)
        return idx
