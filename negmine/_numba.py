"""The numba kernels behind :mod:`negmine._compiled` (imported only there,
and only when numba is installed)."""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

#: Rows ahead whose operands :func:`row_cosines` asks the caches for.
AHEAD = 4


@intrinsic
def _prefetch_row(typingctx, arr, i):
    # Hint the caches to load row ``i`` of a C-contiguous 2-D array, a line
    # (64 bytes) at a time: ``prefetcht0`` never faults and changes no value.
    sig = numba.types.void(arr, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        shape = cgutils.unpack_tuple(builder, ary.shape)
        intp = context.get_value_type(numba.types.intp)
        ptr = cgutils.get_item_pointer2(
            context, builder, data=ary.data, shape=shape,
            strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
            inds=[args[1], ir.Constant(intp, 0)], wraparound=False,
        )  # fmt: skip
        i8p = ir.IntType(8).as_pointer()
        base = builder.bitcast(ptr, i8p)
        item = context.get_abi_sizeof(context.get_data_type(aryty.dtype))
        nbytes = builder.mul(shape[1], ir.Constant(intp, item))
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        start, step = ir.Constant(intp, 0), ir.Constant(intp, 64)
        with cgutils.for_range_slice(builder, start, nbytes, step, intp=intp) as (off, _):
            # read, highest locality, data cache
            builder.call(fn, [builder.gep(base, [off]), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


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
    """See :func:`negmine._compiled.int_push`."""
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


#: Interleaved runs of a row whose maxima bound its ``k``-th largest entry from below.
LANES = 64


@numba.njit(nogil=True, cache=True, inline="always")
def _kth_largest(buf, n, k):
    # The k-th largest of buf[:n] (1 <= k <= n), buf[:n] reordered in place.
    lo, hi, want = 0, n - 1, k - 1
    while lo < hi:
        pivot = buf[(lo + hi) >> 1]
        i, j = lo, hi
        while i <= j:
            while buf[i] > pivot:
                i += 1
            while buf[j] < pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            break
    return buf[want]


@numba.njit(nogil=True, cache=True)
def int_top(scores, top_d, top_i):
    """See :func:`negmine._compiled.int_top`."""
    m, w = scores.shape
    k = top_d.shape[1]
    redo = np.zeros(m, dtype=np.bool_)
    lane = np.empty(LANES, dtype=np.int32)
    vals_c = np.empty(w, dtype=np.int32)
    ids_c = np.empty(w, dtype=np.int64)
    pick = np.empty(w, dtype=np.int32)
    full = w // LANES * LANES
    for r in range(m):
        row = scores[r]
        vals = top_d[r]
        ids = top_i[r]
        n = 0
        if k < LANES and full > LANES:
            # Lane p's maximum is an entry of its own (columns p, p + LANES, ...):
            # k lanes reach their k-th largest, ``low``, so do the row's k largest.
            for p in range(LANES):
                lane[p] = row[p]
            for c in range(LANES, full, LANES):
                run = row[c : c + LANES]
                for p in range(LANES):
                    if run[p] > lane[p]:
                        lane[p] = run[p]
            for j in range(full, w):
                if row[j] > lane[j - full]:
                    lane[j - full] = row[j]
            low = _kth_largest(lane, LANES, k)
            for j in range(w):
                if row[j] >= low:
                    vals_c[n] = row[j]
                    ids_c[n] = j
                    n += 1
        else:
            for j in range(w):
                vals_c[j] = row[j]
                ids_c[j] = j
            n = w
        # The row's k-th largest ``t``: entries above it all stay in the heap;
        # when more than k reach it, which of those at ``t`` stay is the heap's
        # affair, so those entries go through the heap (FAISS's, in column order).
        # (Fewer than k entries, or a k-th largest that is the empty score: the
        # heap decides, as an empty-scored entry never enters it.)
        t = np.int32(-2147483648)
        if n >= k:
            pick[:n] = vals_c[:n]
            t = _kth_largest(pick, n, k)
        held = 0
        for i in range(n):
            if vals_c[i] >= t:
                held += 1
        if held == k and t > np.int32(-2147483648):
            o = 0
            for i in range(n):
                if vals_c[i] >= t:
                    vals[o] = vals_c[i]
                    ids[o] = ids_c[i]
                    o += 1
        else:
            for i in range(n):
                x = vals_c[i]
                if x >= t and vals[0] < x:
                    _replace_top(k, vals, ids, x, ids_c[i])
        best = vals[0]
        for i in range(1, k):
            if vals[i] > best:
                best = vals[i]
        if best > np.int32(-2147483648):
            same = 0
            for i in range(k):
                if vals[i] == best:
                    same += 1
            redo[r] = same > 1
    return redo


@numba.njit(nogil=True, cache=True, inline="always")
def _lane(s, a, b, i):
    # One lane's step of sixteen values: the products at i + 12, + 8, + 4, + 0.
    return (((s + a[i + 12] * b[i + 12]) + a[i + 8] * b[i + 8]) + a[i + 4] * b[i + 4]) + a[i] * b[i]


@numba.njit(nogil=True, cache=True, inline="always")
def _step16(s, a, b, i):
    # The four lanes' step over values i .. i + 15.
    return (_lane(s[0], a, b, i), _lane(s[1], a, b, i + 1), _lane(s[2], a, b, i + 2),
            _lane(s[3], a, b, i + 3))  # fmt: skip


@numba.njit(nogil=True, cache=True, inline="always")
def _step4(s, a, b, i, n):
    # The four lanes' step over values i .. i + 3 of n; a missing value adds 0 * 0.
    z = np.float32(0.0)
    return (s[0] + a[i] * b[i], s[1] + (a[i + 1] * b[i + 1] if i + 1 < n else z * z),
            s[2] + (a[i + 2] * b[i + 2] if i + 2 < n else z * z),
            s[3] + (a[i + 3] * b[i + 3] if i + 3 < n else z * z))  # fmt: skip


@numba.njit(nogil=True, cache=True, inline="always")
def _dot(a, b):
    # numpy's float32 einsum "ij,ij->i" on one row, in its order of operations:
    # four lanes, sixteen values a step (:func:`_step16`), the rest four at a
    # time (:func:`_step4`), then (lane 0 + lane 1) + (lane 2 + lane 3); no
    # fused multiply-adds. ``row_cosines`` checks this against numpy on first use.
    n = a.shape[0]
    z = np.float32(0.0)
    s = (z, z, z, z)
    i = 0
    while n - i >= 16:
        s = _step16(s, a, b, i)
        i += 16
    while i < n:
        s = _step4(s, a, b, i, n)
        i += 4
    return (s[0] + s[1]) + (s[2] + s[3])


@numba.njit(nogil=True, cache=True, inline="always")
def _dot2(a, b, u):
    # ``(_dot(a, u), _dot(b, u))`` in one pass: eight chains of additions in
    # flight instead of four, and both rows streamed at once.
    n = u.shape[0]
    z = np.float32(0.0)
    s = t = (z, z, z, z)
    i = 0
    while n - i >= 16:
        s = _step16(s, a, u, i)
        t = _step16(t, b, u, i)
        i += 16
    while i < n:
        s = _step4(s, a, u, i, n)
        t = _step4(t, b, u, i, n)
        i += 4
    return (s[0] + s[1]) + (s[2] + s[3]), (t[0] + t[1]) + (t[2] + t[3])


@numba.njit(nogil=True, cache=True)
def row_cosines(block, local, qa, ia, qb, ib, out_a, out_b, at):
    """See :func:`negmine._compiled.row_cosines`."""
    lo = np.float32(1e-30)
    hi = np.float32(1e30)
    unit = np.empty(block.shape[1], dtype=np.float32)
    bad = np.empty(local.shape[0], dtype=np.int64)
    n_bad = 0
    both = ib.shape[0] > 0
    m = local.shape[0]
    for r in range(m):
        if r + AHEAD < m:  # the rows a later step reads, from anywhere in memory
            _prefetch_row(qa, ia[r + AHEAD])
            if both:
                _prefetch_row(qb, ib[r + AHEAD])
        row = block[local[r]]
        sq = _dot(row, row)
        if not (sq > lo and sq < hi):  # left to the caller's float64 path
            bad[n_bad] = r
            n_bad += 1
            continue
        norm = np.float32(math.sqrt(sq))  # a correctly rounded float32 square root
        for j in range(unit.shape[0]):
            unit[j] = row[j] / norm
        if both:
            out_a[at[r]], out_b[at[r]] = _dot2(qa[ia[r]], qb[ib[r]], unit)
        else:
            out_a[at[r]] = _dot(qa[ia[r]], unit)
    return bad[:n_bad]


#: ``pread(fd, buf, count, offset)`` of the C library, the buffer an address.
_pread = numba.types.ExternalFunction(
    "pread",
    numba.types.intp(numba.types.intc, numba.types.uintp, numba.types.uintp, numba.types.int64),
)


@numba.njit(nogil=True, cache=True)
def pread_rows(fd, base, rows, pos, offset, row):
    """See :func:`negmine._compiled.pread_rows`."""
    short = np.empty(rows.shape[0], dtype=np.int64)
    n_short = 0
    for i in range(rows.shape[0]):
        if _pread(fd, base + pos[i] * row, row, offset + rows[i] * row) != row:
            short[n_short] = i
            n_short += 1
    return short[:n_short]


@numba.njit(nogil=True, cache=True)
def pread_spans(fd, out, spans, uniq, upos, offset, scratch):
    """See :func:`negmine._compiled.pread_spans`."""
    row = out.shape[1]
    cap = scratch.shape[0]
    base = scratch.ctypes.data
    short = np.empty(spans.shape[0], dtype=np.int64)
    n_short = 0
    for s in range(spans.shape[0]):
        f, e = spans[s, 0], spans[s, 1]
        lo, hi = uniq[f], uniq[e - 1] + 1
        i = f
        for r0 in range(lo, hi, cap):
            r1 = min(r0 + cap, hi)
            want = (r1 - r0) * row
            if _pread(fd, base, want, offset + r0 * row) != want:
                short[n_short] = s
                n_short += 1
                break
            while i < e and uniq[i] < r1:
                out[upos[i], :] = scratch[uniq[i] - r0, :]
                i += 1
    return short[:n_short]
