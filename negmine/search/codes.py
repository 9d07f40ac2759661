"""8-bit codes in the probe kernel: quantized queries and exact integer products.

Lists of 8-bit codes (:class:`negmine.index.ClusterLists` with ``codes``) rank
a query's sources by ``codes @ (q * step)``. :func:`quantize_queries` rounds
those weights to int8 and :func:`int_products` multiplies them with the codes
through torch's int8 x int8 products, summed exactly in int32: about four
times the rate of float32 products on the machines measured, and the same
bytes whatever the thread count or blocking.
"""

from __future__ import annotations

import numpy as np

__all__ = ["int_products", "quantize_queries"]


def quantize_queries(xq: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Queries as int8 weights on 8-bit codes whose dimension ``j`` steps by ``step[j]``.

    A query ``q`` ranks codes by ``codes @ (q * step)`` (see
    :class:`negmine.index.ClusterLists`); those weights are rounded to integers
    in ``[-127, 127]`` on a scale of the query's own, which keeps its ranking
    up to the rounding and makes each score an exact integer sum.

    Parameters
    ----------
    xq : float32 [n, d]
    step : float32 [d]

    Returns
    -------
    int8 [n, d]
    """
    w = xq * step
    top = np.abs(w).max(axis=1, keepdims=True)
    scale = np.divide(127.0, top, out=np.ones_like(top), where=top > 0)
    return np.rint(w * scale).astype(np.int8)


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
