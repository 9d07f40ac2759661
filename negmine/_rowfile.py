"""Scattered rows of a memory-mapped array, read from its file without mapping them.

A gather of scattered rows through a file mapping maps far more than the rows:
the kernel maps whole page-cache folios around each touched page, and folios of
a file that was written or read ahead recently are often megabytes. On a 1.5 GB
float32 embedding file 256 random rows were seen to map 430 MB, and 6,144 rows
all of it, so every re-rank or cosine gather held the whole file in the resident
set until the pages were dropped. :func:`read_rows` reads the same rows with
``preadv`` into ordinary memory instead: the bytes come from the page cache all
the same, but nothing stays mapped, so the resident set grows by the rows read
and no more.

Rows are read in ascending order, a run of nearby rows in one call (a gap of up
to :data:`GAP_BYTES` is read through rather than paying another call), through a
scratch buffer of at most :data:`SCRATCH_BYTES`.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from ._compiled import pread_rows, pread_spans
from ._order import stable_order

__all__ = ["GAP_BYTES", "SCAN_BYTES", "SCRATCH_BYTES", "file_rows", "read_rows", "scan_rows"]

#: Bytes of unwanted rows read through between two wanted ones rather than
#: issuing another read (a system call costs about as much as copying this).
GAP_BYTES = 8192
#: Bound on the scratch buffer one read goes through.
SCRATCH_BYTES = 32 << 20
#: The scratch buffer of the compiled span reads: small enough to stay in a
#: core's cache between a read and the copies out of it.
SPAN_BYTES = 512 << 10
#: Bytes of the file one window of :func:`scan_rows` covers: small enough that
#: the window stays in cache while its rows are used.
SCAN_BYTES = 4 << 20
#: Bytes of a window read through that cost as much as reading one wanted row
#: on its own: a 4 MiB window took 0.45 ms, a row read alone 3 to 4 µs with its
#: share of the bookkeeping (1M x 384 float32 rows, page cache warm).
SCAN_ROW_BYTES = 32 << 10

# File identity each mapping was checked against: id(mmap) -> (weakref, key, ok).
_CHECKED: dict[int, tuple[Any, tuple[int, int, int], bool]] = {}


def _mapping(a: Any) -> Any:
    """The shared read-only or read-write :class:`mmap.mmap` behind ``a``, or None."""
    if not isinstance(a, np.memmap) or getattr(a, "mode", "c") == "c":
        return None
    m: Any = a
    for _ in range(8):
        if isinstance(m, mmap.mmap):
            return m
        m = getattr(m, "base", None)
        if m is None:
            return None
    return None


def file_rows(a: Any) -> tuple[str, int, int] | None:
    """Where the rows of ``a`` lie in its file, when they can be read directly.

    Parameters
    ----------
    a : array [n, d]
        Any array; only a 2-D :class:`numpy.memmap` (shared, not copy-on-write)
        whose rows are contiguous and in file order qualifies, such as
        ``np.load(path, mmap_mode="r")`` or a row slice of it.

    Returns
    -------
    (path, offset, row_bytes) or None
        The file, the byte offset of row 0 in it and the bytes of one row; None
        for any other array, or where the file at ``path`` no longer holds the
        mapped data (it was replaced after the mapping was made).
    """
    if not hasattr(os, "preadv"):
        return None
    mm = _mapping(a)
    path = getattr(a, "filename", None)
    if mm is None or path is None or a.ndim != 2 or a.shape[0] == 0:
        return None
    row = a.shape[1] * a.itemsize
    if a.strides != (row, a.itemsize):
        return None
    base = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
    start = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from here
    offset = a.ctypes.data - base + start
    if not _same_file(a, mm, path, offset, row):
        return None
    return path, offset, row


def _same_file(a: np.ndarray, mm: Any, path: str, offset: int, row: int) -> bool:
    """Whether ``path`` still holds the mapped bytes: its first and last row of
    ``a`` are compared once per file identity (inode, size, modification time)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    seen = _CHECKED.get(id(mm))
    if seen is not None and seen[0]() is mm and seen[1] == key:
        return seen[2]
    ok = st.st_size >= offset + a.shape[0] * row
    if ok:
        with open(path, "rb", buffering=0) as f:
            for r in (0, a.shape[0] - 1):
                if os.pread(f.fileno(), row, offset + r * row) != np.asarray(a[r]).tobytes():
                    ok = False
                    break
    # The entry goes with the mapping, so a process opening many files keeps none of the dead.
    ident = id(mm)
    _CHECKED[ident] = (weakref.ref(mm, lambda _: _CHECKED.pop(ident, None)), key, ok)
    return ok


def read_rows(
    a: Any,
    rows: np.ndarray,
    where: tuple[str, int, int] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``a[rows]`` read from the file behind ``a``, leaving nothing mapped.

    Parameters
    ----------
    a : numpy.memmap [n, d]
        An array :func:`file_rows` accepts.
    rows : int array [m]
        Row numbers in ``[0, n)``, in any order, repeats allowed.
    where : tuple, optional
        :func:`file_rows` of ``a``, when the caller has it.
    out : numpy.ndarray [m, d], optional
        C-contiguous, of ``a``'s dtype: receives the rows (a reused buffer
        spares faulting in fresh memory).

    Returns
    -------
    numpy.ndarray [m, d]
        The rows, of ``a``'s dtype (``out`` when given).
    """
    where, rows = _located(a, rows, where, "read_rows")
    path, offset, row = where
    if out is None:
        out = np.empty((rows.size, a.shape[1]), dtype=a.dtype)
    elif out.shape != (rows.size, a.shape[1]) or out.dtype != a.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"out must be a C-contiguous {a.dtype} array of shape {(rows.size, a.shape[1])}: "
            f"got {out.dtype} {out.shape}"
        )
    if rows.size == 0:
        return out
    if rows.size > 1 and rows[-1] - rows[0] == rows.size - 1 and (np.diff(rows) == 1).all():
        # One run of consecutive rows (a slice): read straight into ``out``.
        fd = os.open(path, os.O_RDONLY)
        try:
            n = rows.size * row
            _pread_full(
                fd, memoryview(out.view(np.uint8).reshape(-1)), n, offset + int(rows[0]) * row
            )
        finally:
            os.close(fd)
        return out
    order = stable_order(rows)
    srt = rows[order]
    new = np.concatenate([[True], srt[1:] != srt[:-1]])
    uniq, upos = srt[new], order[new]  # each distinct row and the out row it is read into
    # Spans of wanted rows: a new span where the gap to the previous exceeds GAP_BYTES.
    cut = np.flatnonzero(np.diff(uniq) > max(1, GAP_BYTES // row)) + 1
    first = np.concatenate([[0], cut])  # index into uniq of each span's first row
    last = np.concatenate([cut - 1, [uniq.size - 1]])
    single = first == last
    fd = os.open(path, os.O_RDONLY)
    try:
        flat = memoryview(out.view(np.uint8).reshape(-1))
        ones = first[single]
        u_ones, p_ones = uniq[ones], upos[ones]
        fast = pread_rows()  # one compiled loop of reads, or the same reads from here
        if fast is not None:
            redo = fast(fd, out.ctypes.data, u_ones, p_ones, offset, row)
            u_ones, p_ones = u_ones[redo], p_ones[redo]  # short reads: again, from here
        for u, p in zip(u_ones.tolist(), p_ones.tolist(), strict=True):
            at = p * row
            if os.preadv(fd, [flat[at : at + row]], offset + u * row) != row:
                _pread_full(fd, flat[at : at + row], row, offset + u * row)
        spans = np.flatnonzero(~single)
        if spans.size:
            fe = np.stack([first[spans], last[spans] + 1], axis=1)
            _read_spans(fd, (offset, row), fe, uniq, upos, out)
    finally:
        os.close(fd)
    if uniq.size < rows.size:  # repeated rows: copied from their first reading
        dup = ~new
        out[order[dup]] = out[upos[np.cumsum(new)[dup] - 1]]
    return out


def _located(
    a: Any, rows: Any, where: tuple[str, int, int] | None, caller: str
) -> tuple[tuple[str, int, int], np.ndarray]:
    """``(where, rows)`` checked: the file position of ``a``'s rows and ``rows``
    as int64 [m] within ``[0, n)``."""
    if where is None:
        where = file_rows(a)
        if where is None:
            raise ValueError(f"{caller} needs a memory-mapped array file_rows accepts")
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= a.shape[0]):
        raise IndexError(f"row ids must lie in [0, {a.shape[0]}): got {rows.min()}..{rows.max()}")
    return where, rows


def _read_spans(
    fd: int,
    at: tuple[int, int],
    spans: np.ndarray,
    uniq: np.ndarray,
    upos: np.ndarray,
    out: np.ndarray,
) -> None:
    """Rows ``uniq[f:e]`` (ascending) into ``out[upos[f:e]]`` for each span
    ``[f, e)`` of ``spans`` int64 [k, 2], reading each span's rows and those
    between them; ``at`` = (offset, row bytes). The compiled loop reads them
    through a scratch that stays in cache; what it cannot read, and everything
    without it, is read from here."""
    offset, row = at
    widest = int((uniq[spans[:, 1] - 1] + 1 - uniq[spans[:, 0]]).max())
    span_read = pread_spans()
    if span_read is not None:
        scratch = np.empty((min(max(1, SPAN_BYTES // row), widest), row), dtype=np.uint8)
        redo = span_read(fd, out.view(np.uint8).reshape(out.shape[0], row), spans, uniq, upos,
                         offset, scratch)  # fmt: skip
        spans = spans[redo]  # short reads: again, from here (which raises on errors)
    if spans.size:
        scratch = np.empty((min(max(1, SCRATCH_BYTES // row), widest), out.shape[1]), out.dtype)
        for f, e in spans.tolist():
            _read_span(fd, at, (int(uniq[f]), int(uniq[e - 1]) + 1), scratch, uniq[f:e],
                       upos[f:e], out)  # fmt: skip


def _read_span(
    fd: int,
    at: tuple[int, int],
    span: tuple[int, int],
    scratch: np.ndarray,
    want: np.ndarray,
    pos: np.ndarray,
    out: np.ndarray,
) -> None:
    """Rows ``want`` (ascending, within ``span`` = [lo, hi)) into ``out[pos]``,
    reading the span a scratch buffer at a time; ``at`` = (offset, row bytes)."""
    offset, row = at
    lo, hi = span
    view = memoryview(scratch.view(np.uint8).reshape(-1))
    done = 0
    for r0 in range(lo, hi, scratch.shape[0]):
        r1 = min(r0 + scratch.shape[0], hi)
        _pread_full(fd, view, (r1 - r0) * row, offset + r0 * row)
        stop = done + int(np.searchsorted(want[done:], r1))
        out[pos[done:stop]] = scratch[want[done:stop] - r0]
        done = stop


def _pread_full(fd: int, view: memoryview, n: int, at: int) -> None:
    """Read exactly ``n`` bytes at file offset ``at`` into ``view[:n]``."""
    got = 0
    while got < n:
        k = os.preadv(fd, [view[got:n]], at + got)
        if k <= 0:
            raise OSError(f"short read at byte {at + got} of a row file")
        got += k


def window_rows(row: int) -> int:
    """Rows of :func:`scan_rows`'s window for rows of ``row`` bytes."""
    return max(1, SCAN_BYTES // row)


def scan_rows(
    a: Any,
    rows: np.ndarray,
    where: tuple[str, int, int] | None = None,
    scratch: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The rows ``a[rows]``, a window of the file at a time, in file order.

    For many rows (more than a few per window) this is much cheaper than
    :func:`read_rows` followed by a gather: a window where the wanted rows are
    dense is read in one call, and the caller uses its rows while they are in
    cache, without copying them into the order of ``rows``. A window where they
    are sparse is read row by row (:func:`read_rows`).

    Parameters
    ----------
    a, rows, where
        As :func:`read_rows`: a memory-mapped array [n, d], row numbers [m]
        (any order, repeats allowed), and optionally :func:`file_rows` of ``a``.
    scratch : numpy.ndarray, optional
        C-contiguous, of ``a``'s dtype and width, at least :func:`window_rows`
        rows: the windows' buffer, when the caller reuses one from scan to scan
        (fresh memory is slow to fault in).

    Yields
    ------
    sel : int64 [k]
        Positions in ``rows`` served by this window (each position exactly once
        over the scan).
    local : int64 [k]
        Row of ``block`` holding ``a[rows[sel]]``.
    block : numpy.ndarray [b, d]
        Rows of ``a``, of its dtype, in a buffer reused by the next window
        (the caller may modify it in place).
    """
    where, rows = _located(a, rows, where, "scan_rows")
    path, offset, row = where
    if rows.size == 0:
        return
    order = stable_order(rows)
    srt = rows[order]
    win = window_rows(row)
    per_read = max(1, SCAN_ROW_BYTES // row)  # rows a single-row read is worth
    starts = np.arange(srt[0] // win * win, srt[-1] + 1, win)
    bounds = np.searchsorted(srt, np.append(starts, starts[-1] + win))
    if scratch is None:
        scratch = np.empty((win, a.shape[1]), dtype=a.dtype)
    elif (scratch.shape[0] < win or scratch.shape[1:] != a.shape[1:] or scratch.dtype != a.dtype
          or not scratch.flags.c_contiguous):  # fmt: skip
        raise ValueError(
            f"scratch must be a C-contiguous {a.dtype} array of at least {win} rows of "
            f"{a.shape[1]}: got {scratch.dtype} {scratch.shape}"
        )
    view = memoryview(scratch.view(np.uint8).reshape(-1))
    fd = os.open(path, os.O_RDONLY)
    try:
        for e0, e1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            if e1 == e0:
                continue
            s = srt[e0:e1]
            lo, hi = int(s[0]), int(s[-1]) + 1
            new = np.concatenate([[True], s[1:] != s[:-1]])
            n_new = int(np.count_nonzero(new))
            if n_new * per_read >= hi - lo:  # dense enough: the whole span in one read
                _pread_full(fd, view, (hi - lo) * row, offset + lo * row)
                yield order[e0:e1], s - lo, scratch[: hi - lo]
            else:
                block = read_rows(a, s[new], where, out=scratch[:n_new])
                yield order[e0:e1], np.cumsum(new) - 1, block
    finally:
        os.close(fd)
