"""Building an index: resolving the spec, filling a FAISS index, writing its manifest."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .._checks import check_embeddings, fail, normalized_float32, release_pages
from .manifest import _FP_CHUNK, FORMAT_VERSION, _fingerprint_start, build_versions, fingerprint
from .specs import build_clusters, choose_spec, parse_bytes

__all__ = ["build_index"]

logger = logging.getLogger(__name__)


def _resolve_spec(
    spec: Any, n: int, d: int, has_clusters: bool, memory_budget: int | str | None
) -> tuple[str, str, dict[str, Any] | None]:
    """(lower-case kind, spec as recorded, the ``"auto"`` record or None)."""
    kind = spec.strip().lower() if isinstance(spec, str) else None
    if kind is None:
        fail("spec", "be a string ('flat', 'clusters', 'auto' or a FAISS factory string)",
             repr(spec), exc=TypeError)  # fmt: skip
    if kind != "auto":
        return kind, spec, None
    budget = parse_bytes(memory_budget, "memory_budget")
    chosen, reason = choose_spec(n, d, has_clusters, budget)
    logger.info("auto index: %s (%s)", chosen, reason)
    return chosen.lower(), chosen, {"chose": chosen, "reason": reason, "memory_budget": budget}


def _build_factory(src: np.ndarray, factory: str, spec: Any, train_size: int,
                   seed: int) -> tuple[Any, str]:  # fmt: skip
    """A FAISS factory index over the normalised ``src``, and their fingerprint."""
    import faiss

    n, d = src.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        fail("spec", "be 'flat', 'clusters', 'auto' or a valid FAISS factory string",
             repr(spec), str(e).strip())  # fmt: skip
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(n, size=min(n, train_size), replace=False))
        index.train(normalized_float32(src[take]))
    h = _fingerprint_start(n, d)
    for s in range(0, n, _FP_CHUNK):
        blk = normalized_float32(src[s : s + _FP_CHUNK])
        h.update(blk.data)
        index.add(blk)
        release_pages(src)
    return index, "sha256:" + h.hexdigest()


def build_index(
    source_embeddings: Any,
    spec: Any,
    source_cluster_ids: Any,
    centroid_embeddings: Any,
    memory_budget: int | str | None,
    train_size: int,
    seed: int,
) -> tuple[Any, dict[str, Any]]:
    """A FAISS index and its manifest; see :meth:`negmine.index.SourceIndex.build`."""
    src = check_embeddings(source_embeddings, "source_embeddings")
    n, d = src.shape
    t0 = time.perf_counter()
    has_clusters = source_cluster_ids is not None and centroid_embeddings is not None
    kind, spec_used, auto = _resolve_spec(spec, n, d, has_clusters, memory_budget)
    extra: dict[str, Any] = {}
    if kind.startswith("clusters"):
        index, factory, extra = build_clusters(src, kind, source_cluster_ids,
                                               centroid_embeddings, seed)  # fmt: skip
        fp = fingerprint(src)
    else:
        factory = "Flat" if kind == "flat" else spec_used
        index, fp = _build_factory(src, factory, spec, train_size, seed)
    manifest = {
        "format_version": FORMAT_VERSION,
        "factory": factory,
        "spec": spec_used,
        "metric": "inner_product",
        "normalized": True,
        "d": int(d),
        "ntotal": int(n),
        "fingerprint": fp,
        "build": {"train_size": int(train_size), "seed": int(seed)},
        "build_seconds": round(time.perf_counter() - t0, 3),
        "versions": build_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    if auto is not None:
        manifest["auto"] = auto
    return index, manifest
