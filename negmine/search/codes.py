"""8-bit codes in the probe kernel: quantized queries and exact integer products.

Lists of 8-bit codes (:class:`negmine.index.ClusterLists` with ``codes``) rank
a query's sources by ``codes @ (q * step)``. :func:`quantize_queries` rounds
those weights to int8 and :func:`int_products` multiplies them with the codes
through torch's int8 x int8 products, summed exactly in int32: about four
times the rate of float32 products on the machines measured, and the same
bytes whatever the thread count or blocking.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["QUANTIZE_ROWS", "int_products", "quantize_queries"]


#: Rows :func:`quantize_queries` works on at a time: its float32 temporaries
#: (768 KiB at d = 384) come from the allocator's heap, kept from piece to
#: piece, not fresh mappings, whose pages are slow to fault in.
QUANTIZE_ROWS = 512


def quantize_queries(xq: Any, step: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Queries as int8 weights on 8-bit codes whose dimension ``j`` steps by ``step[j]``.

    A query ``q`` ranks codes by ``codes @ (q * step)`` (see
    :class:`negmine.index.ClusterLists`); those weights are rounded to integers
    in ``[-127, 127]`` on a scale of the query's own, which keeps its ranking
    up to the rounding and makes each score an exact integer sum.

    Parameters
    ----------
    xq : float32 [n, d]
        An array, or rows sliced on demand (``xq[a:b]`` float32 [b - a, d], as
        :class:`negmine.search.common.RowsOf`).
    step : float32 [d]
    out : int8 [n, d], optional
        Receives the weights.

    Returns
    -------
    int8 [n, d]
        ``out`` when given. Each row's weights depend on that row alone, so
        any cut into pieces gives the same bytes.
    """
    n, d = int(xq.shape[0]), int(xq.shape[1])
    if out is None:
        out = np.empty((n, d), dtype=np.int8)
    w = np.empty((min(n, QUANTIZE_ROWS), d), dtype=np.float32)
    for r0 in range(0, n, QUANTIZE_ROWS):
        r1 = min(r0 + QUANTIZE_ROWS, n)
        wp = np.multiply(xq[r0:r1], step, out=w[: r1 - r0])
        top = np.abs(wp).max(axis=1, keepdims=True)
        scale = np.divide(127.0, top, out=np.ones_like(top), where=top > 0)
        np.rint(np.multiply(wp, scale, out=wp), out=wp)
        out[r0:r1] = wp
    return out


def int_products(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = a @ b.T``, summed exactly, through torch's integer products.

    Parameters
    ----------
    a : int8 [m, d]
        C-contiguous.
    b : int8 [n, d]
        C-contiguous (read as its transpose, no copy).
    out : int32 [m, n]
        C-contiguous, written in place.
    """
    import torch

    torch._int_mm(torch.from_numpy(a), torch.from_numpy(b).T, out=torch.from_numpy(out))
