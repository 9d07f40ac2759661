"""Compiled kernels, used when the optional ``numba`` extra is installed.

The probe kernel's scan over 8-bit lists pushes each visited list's integer
scores into its queries' running top-``k`` heaps. Composed from library calls
that push takes a row maximum (torch), a gather of the queries' heap rows, a
push by FAISS's ``addn`` and a scatter of the rows back; the compiled push
(:func:`int_push`) does the same in one pass over the scores, in place on the
heaps. It keeps FAISS's arithmetic exactly (a score enters when it is above its
heap's smallest, which it replaces, ties broken by id as FAISS breaks them), so
the heaps, their ids and order, and the output bytes are the same:
``negmine[fast]`` changes speed only.

The pair stage's cosines (and an exact re-rank's), composed from library calls,
gather each source row read from the file, normalise it, gather its question's
and its positive's rows and take two dot products (numpy's ``einsum``); the
compiled pass (:func:`row_cosines`) does it row by row in cache, in ``einsum``'s
own order of float32 operations, so the scores keep every bit. Its first use in
a process checks that against numpy and stays off if they differ (a numpy built
another way). Rows read one at a time from a file (:func:`pread_rows`), each a
``preadv`` call from Python, are read by one compiled loop of ``pread`` calls
that holds no interpreter lock.

``NEGMINE_COMPILED=0`` in the environment turns them all off (read each time a
kernel is looked up).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["compiled_version", "int_push", "int_top", "pread_rows", "pread_spans", "row_cosines"]

_log = logging.getLogger(__name__)
#: numba's version and the kernels module once imported; None: numba is missing.
_LOADED: dict[str, Any] = {}


def _enabled() -> bool:
    return os.environ.get("NEGMINE_COMPILED", "1").strip() != "0"


def _kernels() -> Any:
    if "module" not in _LOADED:
        try:
            import numba

            from . import _numba
        except ImportError:
            _LOADED.update(module=None, version=None)
        except RuntimeError as exc:  # e.g. numba finds no writable place for its cache
            _log.info("compiled kernels unavailable, the library calls instead: %s", exc)
            _LOADED.update(module=None, version=None)
        else:
            if numba.config.DISABLE_JIT:  # the kernels would run as Python, far slower
                _LOADED.update(module=None, version=None)
            else:
                _LOADED.update(module=_numba, version=numba.__version__)
                _log.debug("compiled kernels: numba %s", numba.__version__)
    return _LOADED["module"]


def compiled_version() -> str | None:
    """The numba version the compiled kernels run on; ``None`` when they are off
    (numba not installed, ``NUMBA_DISABLE_JIT=1``, or ``NEGMINE_COMPILED=0``)."""
    return _LOADED["version"] if _enabled() and _kernels() is not None else None


def int_push() -> Callable[..., None] | None:
    """The compiled push of integer scores into integer heaps, or ``None`` when off.

    ``int_push()(scores, rows, top_d, top_i, lo)`` pushes row ``r`` of ``scores``
    into heap row ``rows[r]`` exactly as FAISS's ``int_minheap_array_t.addn``
    would, with ids ``lo + j``: scores int32 [m, w], rows int64 [m] (distinct),
    top_d int32 [n, k] and top_i int64 [n, k] (min-heap rows, updated in place),
    lo int; arrays C-contiguous. The first call in a process compiles it, or
    loads it from numba's cache.
    """
    if not _enabled():
        return None
    mod = _kernels()
    return None if mod is None else mod.int_push


def int_top() -> Callable[..., np.ndarray] | None:
    """The compiled choice of each row's largest integer scores, or ``None`` when off.

    ``int_top()(scores, top_d, top_i)`` pushes row ``r`` of ``scores`` int32
    [m, w] (ids ``j``) into heap row ``r`` of ``top_d`` int32 [m, k] and
    ``top_i`` int64 [m, k], which start empty (``int32`` minimum, ``-1``): the
    same entries as FAISS's ``int_minheap_array_t.addn`` keeps, ties included,
    in another order. It offers only the entries at or above a bound that the
    row's ``k`` largest reach (for ``k`` below 64, the ``k``-th largest of the
    maxima of 64 interleaved lanes of the row); the others could enter FAISS's
    heap only to leave it again, and their passage moves no other entry in or
    out. Returns bool [m], the rows whose largest kept score is held by more
    than one entry: there the order (which of them comes first) is FAISS's only
    if FAISS pushes the row.
    """
    if not _enabled():
        return None
    mod = _kernels()
    return None if mod is None else mod.int_top


def row_cosines() -> Callable[..., np.ndarray] | None:
    """The compiled cosines of rows read from a file, or ``None`` when off.

    ``row_cosines()(block, local, qa, ia, qb, ib, out_a, out_b, at)`` takes unit
    vector ``u`` of each row ``block[local[r]]`` and writes ``out_a[at[r]] =
    qa[ia[r]] . u`` and, when ``ib`` is not empty, ``out_b[at[r]] = qb[ib[r]] .
    u``, each float32 bit for bit as :func:`negmine._checks.normalized_float32`
    and ``numpy.einsum("ij,ij->i", ...)`` give it: block float32 [b, d], qa and
    qb float32 [*, d] (rows C-contiguous), local, ia, ib and at int64 [m] (ib
    [m] or [0]), out_a and out_b float32 1-D. Returns int64 [k], the ``r`` whose
    squared norm lies outside float32's safe range, left unwritten for the
    caller's float64 path. Off as :func:`int_push` is, and also when its sums
    do not match this numpy's (checked once a process).
    """
    if not _enabled():
        return None
    mod = _kernels()
    if mod is None:
        return None
    if "cosines" not in _LOADED:
        _LOADED["cosines"] = mod.row_cosines if _matches_numpy(mod.row_cosines) else None
    return _LOADED["cosines"]


def _matches_numpy(kernel: Callable[..., np.ndarray]) -> bool:
    """Whether ``kernel`` gives numpy's bits on random rows of a few widths,
    rows of tiny and huge norms among them (which it must hand back)."""
    from ._checks import normalized_float32

    rng = np.random.default_rng(0)
    for d in (1, 7, 16, 45, 384):
        block = (rng.standard_normal((64, d)) * rng.uniform(0.01, 100, (64, 1))).astype(np.float32)
        block[3] *= np.float32(1e-25)  # squared norm below float32's range
        block[5] *= np.float32(1e18)
        q = normalized_float32(rng.standard_normal((9, d)))
        local = rng.integers(0, 64, 200)
        ia, ib = rng.integers(0, 9, 200), rng.integers(0, 9, 200)
        got_a, got_b = np.zeros(200, np.float32), np.zeros(200, np.float32)
        bad = kernel(block, local, q, ia, q, ib, got_a, got_b, np.arange(200))
        unit = normalized_float32(block[local])
        want_a = np.einsum("ij,ij->i", q[ia], unit)
        want_b = np.einsum("ij,ij->i", q[ib], unit)
        good = np.ones(200, bool)
        good[bad] = False
        same = (
            np.array_equal(np.flatnonzero(~good), np.flatnonzero(np.isin(local, [3, 5])))
            and got_a[good].tobytes() == want_a[good].tobytes()
            and got_b[good].tobytes() == want_b[good].tobytes()
        )
        if not same:
            _log.info("compiled cosines differ from numpy's at d = %d; numpy's instead", d)
            return False
    return True


def pread_rows() -> Callable[..., np.ndarray] | None:
    """Compiled single-row reads from a file, or ``None`` when off (as
    :func:`int_push`, and on a platform without POSIX ``pread``).

    ``pread_rows()(fd, base, rows, pos, offset, row)`` reads row ``rows[i]`` of
    the file (``row`` bytes at byte ``offset + rows[i] * row``) into the
    ``row`` bytes at address ``base + pos[i] * row``: fd, base, offset and row
    int, rows and pos int64 [m]. The caller keeps the buffer at ``base`` alive
    and large enough. Returns int64 [k], the ``i`` whose read came back short
    or failed, for the caller to read again (and raise on).
    """
    if not _enabled() or os.name != "posix":
        return None
    mod = _kernels()
    return None if mod is None else mod.pread_rows


def pread_spans() -> Callable[..., np.ndarray] | None:
    """Compiled reads of spans of nearby rows, or ``None`` when off (as
    :func:`pread_rows`).

    ``pread_spans()(fd, out, spans, uniq, upos, offset, scratch)`` reads, for
    each span ``[f, e)`` of ``spans`` int64 [k, 2], the file's rows ``uniq[f]``
    to ``uniq[e - 1]`` (ascending; the rows between them too, ``len(scratch)``
    rows a call, into ``scratch``) and copies row ``uniq[i]`` into
    ``out[upos[i]]`` for ``f <= i < e``. ``out`` and ``scratch`` are uint8
    [*, row] (C-contiguous byte views of the rows); the file's row ``r`` starts
    at byte ``offset + r * row``. Returns int64 [j], the spans whose read came
    back short or failed, for the caller to read again (and raise on); rows of
    such a span may be partly written.
    """
    if not _enabled() or os.name != "posix":
        return None
    mod = _kernels()
    return None if mod is None else mod.pread_spans
