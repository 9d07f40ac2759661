"""Indexes over the sources: building, the on-disk store, specs and cluster lists.

``SourceIndex`` is the object users handle; :mod:`.manifest` reads and checks
manifests and computes fingerprints, :mod:`.store` writes and opens index
directories, :mod:`.verify` checks ``index.faiss`` against its manifest,
:mod:`.specs` chooses ``"auto"`` and builds cluster-aligned indexes, and
:mod:`.lists` is the storage view of cluster lists. Nothing here imports the
search kernels.
"""

from __future__ import annotations

from .lists import ClusterLists
from .manifest import (
    _FP_CHUNK,
    FORMAT_VERSION,
    INDEX_NAME,
    MANIFEST_NAME,
    assignment_fingerprint,
    fingerprint,
    read_manifest,
)
from .source import MMAP_FACTORIES, SourceIndex
from .specs import AUTO_FLAT_MAX, build_clusters, choose_spec, parse_bytes
from .store import IndexEntry, list_indexes
from .verify import VERIFIED_NAME

__all__ = [
    "AUTO_FLAT_MAX",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "MANIFEST_NAME",
    "MMAP_FACTORIES",
    "VERIFIED_NAME",
    "ClusterLists",
    "IndexEntry",
    "SourceIndex",
    "_FP_CHUNK",
    "assignment_fingerprint",
    "build_clusters",
    "choose_spec",
    "fingerprint",
    "list_indexes",
    "parse_bytes",
    "read_manifest",
]
