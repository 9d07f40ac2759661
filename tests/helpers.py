"""Helpers tests share that build negmine's own inputs (references live in ``reference``)."""

from __future__ import annotations

import numpy as np

from negmine._checks import normalized_float32
from negmine.index import SourceIndex
from negmine.layout import ClusterLayout, PositiveSets, adjacent_clusters


def blas_kernel() -> str | None:
    """The kernel family numpy's OpenBLAS runs here (threadpoolctl's ``architecture``).

    OpenBLAS picks it from the CPU unless ``OPENBLAS_CORETYPE`` names one, and
    float32 products round differently from one family to another: on one AMD
    EPYC it picked ``SkylakeX`` (AVX-512) by itself and ``Haswell`` with
    ``OPENBLAS_CORETYPE`` set to ``Haswell`` or ``Zen``.
    """
    from threadpoolctl import threadpool_info

    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas" and "faiss" not in lib.get("filepath", ""):
            return lib.get("architecture")
    return None


def torch_openmp():
    """Torch's OpenMP runtime (``libgomp`` under torch's own ``lib`` folder) as a
    ``ctypes`` library, for ``omp_get_max_threads`` of the calling thread; None
    where it is not found (another build, another platform)."""
    import ctypes

    import torch  # noqa: F401  (loads the runtime)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "gomp" in line}
    except OSError:
        return None
    ours = sorted(p for p in paths if "/torch/" in p)
    return ctypes.CDLL(ours[0]) if ours else None


def kernel_inputs(corpus: dict) -> dict:
    """Kernel inputs the way the miner builds them: one query per distinct
    (cluster, question), sorted by cluster then question."""
    scl = corpus["source_cluster_ids"].astype(np.int64)
    cent = corpus["centroid_embeddings"]
    pairs = corpus["pair_indices"]
    n_q = corpus["question_embeddings"].shape[0]
    layout = ClusterLayout.build(scl, cent.shape[0], adjacent_clusters(cent, 2))
    key = np.unique(corpus["pair_cluster_ids"].astype(np.int64) * n_q + pairs[:, 0])
    qc = key // n_q
    qq = key - qc * n_q
    return {
        "vectors": normalized_float32(corpus["source_embeddings"])[layout.order],
        "centroids": normalized_float32(cent),
        "queries": normalized_float32(corpus["question_embeddings"]),
        "query_rows": qq,
        "query_cluster": qc,
        "query_question": qq,
        "layout": layout,
        "positives": PositiveSets.from_pairs(pairs, n_q),
    }


def build_index(corpus: dict, spec: str, **kw) -> SourceIndex:
    """``SourceIndex.build`` over the corpus's sources, with its clusters."""
    return SourceIndex.build(
        corpus["source_embeddings"],
        spec,
        source_cluster_ids=corpus["source_cluster_ids"],
        centroid_embeddings=corpus["centroid_embeddings"],
        **kw,
    )


def tier3_recall(corpus: dict, spec: str, rerank: int | None, nprobe: int, **mine) -> float:
    """Tier-3 recall@k of mining ``corpus`` over a fresh ``spec`` index, measured
    by the miner on up to 1500 queries."""
    from negmine import NegativeMiner

    m = NegativeMiner(**corpus, index=build_index(corpus, spec), nprobe=nprobe, rerank=rerank,
                      recall_sample=1500, **mine)  # fmt: skip
    m.mine_arrays()
    return m.last_stats["tier3_recall"]["recall"]
