"""Tier-3 search: kernels (exact, probe, over-fetch) and the back-ends built on them."""

from .common import QUERY_BLOCK
from .exact import SOURCE_CHUNK, exact_outside_cluster, workspace_for
from .overfetch import overfetch_outside_cluster
from .probe import PROBE_BLOCK, ClusterLists, probe_outside_cluster, recall_at_k

__all__ = [
    "PROBE_BLOCK",
    "QUERY_BLOCK",
    "SOURCE_CHUNK",
    "ClusterLists",
    "exact_outside_cluster",
    "overfetch_outside_cluster",
    "probe_outside_cluster",
    "recall_at_k",
    "workspace_for",
]
