"""What the tier-3 kernels share: FAISS heaps over numpy buffers, fixed query blocks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

__all__ = [
    "QUERY_BLOCK",
    "RESULT_BYTES",
    "RowsOf",
    "blas_threads",
    "empty_result",
    "faiss_single_threaded",
    "heap_over",
    "max_depth",
    "run_query_blocks",
]

#: Queries per matrix product. Fixed so that the arithmetic (and so any
#: near-tie) never depends on how the caller batches the work.
QUERY_BLOCK = 1024


def heap_over(dist: np.ndarray, ids: np.ndarray):
    """A FAISS min-heap over rows of ``dist`` float32 (or int32) [n, k] / ``ids`` int64 [n, k].

    Both must be valid heaps: filled with ``-inf`` (an int32 heap: its smallest
    value) / ``-1`` (all-equal rows already are heaps, so no multi-threaded
    heapify is needed, and that score is never admitted), or left so by earlier
    ``addn`` calls, which is how a search carries one running top-k per query
    across several lists.
    """
    import faiss

    heap = faiss.int_minheap_array_t() if dist.dtype == np.int32 else faiss.float_minheap_array_t()
    heap.nh = dist.shape[0]
    heap.k = dist.shape[1]
    heap.val = faiss.swig_ptr(dist)
    heap.ids = faiss.swig_ptr(ids)
    return heap


def _new_heap(n: int, k: int):
    dist, ids = empty_result(n, k)
    return heap_over(dist, ids), dist, ids


def empty_result(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A search's result before any source is found: scores float32 [n, k] of
    ``-inf`` and ids int64 [n, k] of ``-1``."""
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run numpy's BLAS on ``n`` threads inside the block (through threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n, user_api="blas"):
        yield


@contextmanager
def faiss_single_threaded() -> Iterator[None]:
    """Run FAISS calls on one OpenMP thread: its threads would otherwise spin
    against numpy's BLAS threads between calls."""
    import faiss

    n_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(n_threads)


def run_query_blocks(
    run: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    block: int,
    queries: np.ndarray,
    query_rows: np.ndarray,
    query_cluster: np.ndarray,
    query_question: np.ndarray,
    out_d: np.ndarray,
    out_i: np.ndarray,
    progress: Callable[[int], None] | None,
    lazy: bool = False,
) -> None:
    """Feed fixed blocks of queries to ``run(xq, clusters, questions)``; fill the outputs.

    ``xq`` is the block's query rows gathered, or with ``lazy`` a :class:`RowsOf`
    that gathers them a slice at a time (for a kernel that reads each row once,
    in chunks, and need not hold the block's float32 rows)."""
    for b0 in range(0, query_rows.shape[0], block):
        b1 = min(b0 + block, query_rows.shape[0])
        rows = query_rows[b0:b1]
        xq = RowsOf(queries, rows) if lazy else queries[rows]
        out_d[b0:b1], out_i[b0:b1] = run(xq, query_cluster[b0:b1], query_question[b0:b1])
        del xq  # freed before the next block's rows are gathered
        if progress is not None:
            progress(b1 - b0)


class RowsOf:
    """``queries[rows]`` gathered a slice at a time: ``self[a:b]`` is
    ``queries[rows[a:b]]``, float32 [b - a, d].

    Parameters
    ----------
    queries : float32 [Q, d]
    rows : int64 [n]
    """

    def __init__(self, queries: np.ndarray, rows: np.ndarray):
        self.queries = queries
        self.rows = rows
        self.shape = (int(rows.shape[0]), int(queries.shape[1]))

    def __getitem__(self, sl: slice) -> np.ndarray:
        return self.queries[self.rows[sl]]


#: Bytes of (score, id) results one search call may hold: the deepest k any
#: widening search asks for is this over 12 bytes per result and
#: :data:`QUERY_BLOCK` queries (21845 at 256 MiB).
RESULT_BYTES = 256 << 20


def max_depth(n_total: int) -> int:
    """The largest k a widening search may ask for over ``n_total`` vectors."""
    return int(min(n_total, max(1, RESULT_BYTES // (12 * QUERY_BLOCK))))
