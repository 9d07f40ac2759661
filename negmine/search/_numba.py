"""The numba kernels behind :mod:`negmine.search.compiled` (imported only there,
and only when numba is installed)."""

from __future__ import annotations

import numba


@numba.njit(nogil=True, cache=True, inline="always")
def _replace_top(k, vals, ids, val, idx):
    # FAISS's heap_replace_top for CMin<int32, int64>: node i (1-based) sits at
    # i - 1; (a, ia) is below (b, ib) when a < b, or a == b and ia < ib.
    i = 1
    while True:
        i1 = i << 1
        if i1 > k:
            break
        c = i1
        if i1 + 1 <= k:
            a, b = vals[i1 - 1], vals[i1]
            if not (a < b or (a == b and ids[i1 - 1] < ids[i1])):
                c = i1 + 1
        v = vals[c - 1]
        if val < v or (val == v and idx < ids[c - 1]):
            break
        vals[i - 1] = v
        ids[i - 1] = ids[c - 1]
        i = c
    vals[i - 1] = val
    ids[i - 1] = idx


@numba.njit(nogil=True, cache=True)
def int_push(scores, rows, top_d, top_i, lo):
    """See :func:`negmine.search.compiled.int_push`."""
    m, w = scores.shape
    k = top_d.shape[1]
    for r in range(m):
        row = scores[r]
        top = row[0]
        for j in range(1, w):  # the row's maximum first: most rows hold nothing to push
            if row[j] > top:
                top = row[j]
        vals = top_d[rows[r]]
        t = vals[0]
        if not t < top:
            continue
        ids = top_i[rows[r]]
        for j in range(w):
            x = row[j]
            if t < x:
                _replace_top(k, vals, ids, x, lo + j)
                t = vals[0]
