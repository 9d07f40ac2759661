"""Unit vectors of sources and questions, and every cosine negmine reports.

One object, :class:`SourceVectors`, gathers the L2-normalised rows of sources
by id, from wherever the exact float32 vectors already are (a cluster-ordered
copy, a flat index, float32 cluster lists) or else from the raw embeddings,
memory-mapped ones included. The miner's scores, the filters and the
validator's near-duplicate rule all compute their cosines through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import numpy as np

from ._checks import normalized_float32, release_pages, rows_into, take_rows
from ._compiled import row_cosines
from ._rowfile import file_rows, read_rows, scan_rows, window_rows
from .layout import PositiveSets, csr_expand

__all__ = ["RowRange", "SourceVectors", "question_vectors"]

_UNSET = object()

#: Rows gathered at a time by the cosine helpers; their buffers are reused.
CHUNK = 16384
#: Candidates an exact re-rank scores at a time (:meth:`SourceVectors.to_queries`).
RERANK_ROWS = 4096
#: Pairs whose negatives one file scan of :meth:`SourceVectors.pair_cosines`
#: serves (their questions' and sources' unit rows are held meanwhile). A
#: block's negatives want most windows of a large file: each scan reads it
#: nearly whole, so fewer, larger passes read less.
SCAN_PAIRS = 4 * CHUNK
#: Threads a file scan is cut across, each reading its own part of the file:
#: reads, norms and dot products release the GIL, and each cosine is computed
#: alone, so any count gives the same bytes.
SCAN_THREADS = 2
#: Fewest rows a scan thread is given.
SCAN_MIN_PART = 4096


class RowRange:
    """Unit vectors of all sources in id order, as an array the exact kernel slices.

    ``rows[s0:s1]`` is float32 [s1 - s0, d], the unit vectors of sources
    ``s0 .. s1 - 1``: read from the embeddings' file in one call when they are
    memory-mapped (nothing stays mapped), else gathered and normalised. The
    slice lives in a buffer the next slice reuses, so only one is held at a
    time: the caller must be done with a slice before taking the next.

    Parameters
    ----------
    vectors : SourceVectors
    """

    def __init__(self, vectors: SourceVectors):
        self.vectors = vectors
        self.shape = (int(vectors.raw.shape[0]), vectors.dim)
        self.dtype = np.dtype(np.float32)
        self._buf = np.empty((0, vectors.dim), dtype=np.float32)

    def __getitem__(self, sl: slice) -> np.ndarray:
        s0, s1, step = sl.indices(self.shape[0])
        if step != 1:
            raise ValueError("RowRange takes slices of consecutive rows only")
        n = max(0, s1 - s0)
        if self._buf.shape[0] < n:
            self._buf = np.empty((n, self.shape[1]), dtype=np.float32)
        return self.vectors.gather(np.arange(s0, s0 + n, dtype=np.int64), self._buf[:n])


def question_vectors(
    raw_questions: Any, questions: np.ndarray, buf: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the distinct ``questions`` and each entry's row in them.

    Parameters
    ----------
    raw_questions : array [Q, d]
        Question embeddings as given.
    questions : int64 [n]
    buf : float32 [>= n, d], optional
        C-contiguous rows that a memory-mapped file's rows are read into (the
        vectors are then its first rows): a buffer reused from call to call
        spares faulting in fresh memory.

    Returns
    -------
    vectors : float32 [n', d]
        One unit row per distinct question, ascending id. A memory-mapped
        file's rows are read on up to :data:`SCAN_THREADS` threads, each its
        own part of them.
    inverse : int64 [n]
        Row of ``vectors`` of each entry of ``questions``.
    """
    uq, inv = np.unique(questions, return_inverse=True)
    where = file_rows(raw_questions)
    if where is None:
        return normalized_float32(take_rows(raw_questions, uq)), inv
    # A memory-mapped file: each thread reads its own run of the (ascending)
    # rows and normalizes it, row by row, so the bytes are those of one thread.
    shape = (uq.size, raw_questions.shape[1])
    out = np.empty(shape, dtype=np.float32) if buf is None else buf[: uq.size]
    if out.shape != shape:
        raise ValueError(f"buf must hold {shape[0]} rows of {shape[1]}: got {buf.shape}")

    def run(a: int, b: int) -> None:
        if raw_questions.dtype == np.float32:  # read in place, normalized there
            normalized_float32(read_rows(raw_questions, uq[a:b], where, out=out[a:b]), out=out[a:b])
        else:
            normalized_float32(read_rows(raw_questions, uq[a:b], where), out=out[a:b])

    in_parts(uq.size, run)
    return out, inv


def in_parts(n: int, run: Callable[[int, int], object]) -> None:
    """``run(a, b)`` over ``[0, n)`` cut in up to :data:`SCAN_THREADS` runs of at
    least :data:`SCAN_MIN_PART`, each on its own thread (one run: in this one).

    For reads whose result does not depend on the cut: rows read and normalized
    one by one."""
    parts = min(SCAN_THREADS, max(1, n // SCAN_MIN_PART))
    if parts == 1:
        run(0, n)
        return
    cuts = np.linspace(0, n, parts + 1).astype(np.int64).tolist()
    with ThreadPoolExecutor(parts, thread_name_prefix="negmine-read") as pool:
        for done in [pool.submit(run, a, b) for a, b in pairwise(cuts)]:
            done.result()


class SourceVectors:
    """Unit vectors of sources by id.

    Parameters
    ----------
    raw : array [S, d]
        The source embeddings as given.
    positives : PositiveSets
        Positive sources of each question (for the cosines to positives).
    gather : callable ``(ids int64 [n], out float32 [n, d]) -> out``, optional
        Where exact unit vectors already live (see :meth:`from_rows`); default:
        normalise the gathered raw rows.
    """

    def __init__(
        self,
        raw: Any,
        positives: PositiveSets,
        gather: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ):
        self.raw = raw
        self.dim = int(raw.shape[1])
        self.positives = positives
        self._gather = gather
        self._a = np.empty((0, self.dim), dtype=np.float32)
        self._b = np.empty((0, self.dim), dtype=np.float32)
        self._windows: list[np.ndarray] = []  # file scans' window buffers, one a thread
        self._where: Any = _UNSET

    @classmethod
    def from_rows(
        cls, raw: Any, positives: PositiveSets, rows: np.ndarray, position: np.ndarray | None
    ) -> SourceVectors:
        """Vectors kept in ``rows`` float32 [S, d]: row ``position[id]`` is source ``id``
        (``position`` None: row ``id``)."""
        if position is None:
            return cls(raw, positives, lambda ids, out: rows_into(rows, ids, out))
        return cls(raw, positives, lambda ids, out: rows_into(rows, position[ids], out))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_a"] = state["_b"] = np.empty((0, self.dim), dtype=np.float32)
        state["_windows"] = []
        state["_where"] = _UNSET  # a file position holds only in this process
        return state

    def _read(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray | None:
        """Rows ``ids`` of a memory-mapped ``raw`` read from its file into ``out``
        (unit rows), or None where ``raw`` is not such an array."""
        if self._file() is None:
            return None
        if self.raw.dtype == np.float32 and out.flags.c_contiguous:
            return normalized_float32(read_rows(self.raw, ids, self._where, out=out), out=out)
        return normalized_float32(read_rows(self.raw, ids, self._where), out=out)

    def gather(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Unit vectors of sources ``ids`` int64 [n] into ``out`` float32 [n, d]."""
        if out is None:
            out = np.empty((ids.shape[0], self.dim), dtype=np.float32)
        if self._gather is not None:
            return self._gather(ids, out)
        if self._read(ids, out) is not None:
            return out
        return normalized_float32(take_rows(self.raw, ids), out=out)

    def gather_mapped(self, ids: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Like :meth:`gather`, for many scattered gathers in a row (an exact
        re-rank). A memory-mapped input is read from its file, which maps
        nothing; where that is not possible it stays mapped, since dropping the
        pages after each gather would fault them in again and again. Call
        :meth:`release` after the last one.
        """
        if self._gather is not None:
            return self._gather(ids, out)
        if self._read(ids, out) is not None:  # a file read maps nothing
            return out
        return normalized_float32(np.take(np.asarray(self.raw), ids, axis=0), out=out)

    def row_range(self) -> RowRange:
        """All sources' unit vectors in id order, read a slice at a time (see :class:`RowRange`)."""
        return RowRange(self)

    def release(self) -> None:
        """Drop the pages :meth:`gather_mapped` left mapped (see :func:`release_pages`)."""
        release_pages(self.raw)

    def free_buffers(self) -> None:
        """Free the buffers kept from call to call (reallocated when needed again)."""
        self._a = self._b = np.empty((0, self.dim), dtype=np.float32)
        self._windows = []

    def _bufs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._a.shape[0] < n:
            self._a = np.empty((n, self.dim), dtype=np.float32)
            self._b = np.empty((n, self.dim), dtype=np.float32)
        return self._a[:n], self._b[:n]

    def between(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine of source ``a[i]`` to source ``b[i]``: int64 [n], [n] -> float32 [n]."""
        out = np.empty(a.shape[0], dtype=np.float32)
        for s0 in range(0, a.shape[0], CHUNK):
            s1 = min(s0 + CHUNK, a.shape[0])
            va, vb = self._bufs(s1 - s0)
            self.gather(a[s0:s1], va)
            self.gather(b[s0:s1], vb)
            out[s0:s1] = np.einsum("ij,ij->i", va, vb)
        return out

    def to_vectors(self, vecs: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Cosine of ``vecs[i]`` (float32 [n, d], unit rows) to source ``ids[i]`` -> float32 [n]."""
        out = np.empty(ids.shape[0], dtype=np.float32)
        for s0 in range(0, ids.shape[0], CHUNK):
            s1 = min(s0 + CHUNK, ids.shape[0])
            _, vb = self._bufs(s1 - s0)
            self.gather(ids[s0:s1], vb)
            out[s0:s1] = np.einsum("ij,ij->i", vecs[s0:s1], vb)
        return out

    def _reduce_over_positives(self, questions, cos_of, reduce, empty) -> np.ndarray:
        owner, at = csr_expand(self.positives.offsets, questions)
        out = np.full(questions.shape[0], empty, dtype=np.float32)
        if owner.size == 0:
            return out
        cos = cos_of(owner, self.positives.sources[at])
        starts = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
        out[owner[starts]] = reduce.reduceat(cos, starts)
        return out

    def max_to_positives(self, questions: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Largest cosine of source ``ids[i]`` to a positive of ``questions[i]``.

        Parameters
        ----------
        questions, ids : int64 [n]

        Returns
        -------
        float32 [n]
            ``-inf`` for a question without positives.
        """
        return self._reduce_over_positives(
            questions, lambda o, pos: self.between(ids[o], pos), np.maximum, -np.inf
        )

    def positive_floor(self, qvecs: np.ndarray, questions: np.ndarray) -> np.ndarray:
        """Lowest cosine of each question to its positives.

        Parameters
        ----------
        qvecs : float32 [n, d]
            Unit vectors of the questions.
        questions : int64 [n]

        Returns
        -------
        float32 [n]
            ``inf`` for a question without positives.
        """
        return self._reduce_over_positives(
            questions, lambda o, pos: self.to_vectors(qvecs[o], pos), np.minimum, np.inf
        )

    def pair_cosines(
        self, raw_questions: Any, ids: np.ndarray, questions: np.ndarray, anchors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Cosine of each negative to its row's question and to its row's source,
        and of each row's question to its source.

        Parameters
        ----------
        raw_questions : array [Q, d]
        ids : int64 [R, n_neg]
            Negative source ids.
        questions, anchors : int64 [R]
            Each row's question and positive source.

        Returns
        -------
        to_question, to_anchor : float32 [R, n_neg]
        anchor : float32 [R]
            Cosine of question ``questions[i]`` to source ``anchors[i]``.
        """
        out = np.empty(ids.shape, dtype=np.float32)
        out_a = np.empty(ids.shape, dtype=np.float32)
        pos = np.empty(ids.shape[0], dtype=np.float32)
        if self._scans():
            self._scan_pair_cosines(raw_questions, ids, questions, anchors, (out, out_a, pos))
            return out, out_a, pos
        # Gathers go into reused buffers: fresh memory is slow to fault in.
        qbuf = np.empty((min(CHUNK, ids.shape[0]), self.dim), dtype=np.float32)
        sbuf = np.empty_like(qbuf)
        abuf = np.empty_like(qbuf)
        for p0 in range(0, ids.shape[0], CHUNK):
            p1 = min(p0 + CHUNK, ids.shape[0])
            uq, inv = question_vectors(raw_questions, questions[p0:p1])
            qv = rows_into(uq, inv, qbuf[: p1 - p0])
            av = self.gather_mapped(anchors[p0:p1], abuf[: p1 - p0])
            pos[p0:p1] = np.einsum("ij,ij->i", qv, av)
            for j in range(ids.shape[1]):
                sv = self.gather_mapped(ids[p0:p1, j], sbuf[: p1 - p0])
                out[p0:p1, j] = np.einsum("ij,ij->i", qv, sv)
                out_a[p0:p1, j] = np.einsum("ij,ij->i", av, sv)
        self.release()  # scattered gathers kept the file mapped until here
        return out, out_a, pos

    def _file(self) -> tuple[str, int, int] | None:
        """Where ``raw``'s rows lie in its file (:func:`file_rows`), or None."""
        if self._where is _UNSET:
            self._where = file_rows(self.raw)
        return self._where

    def _scans(self) -> bool:
        """Whether many rows are best read from ``raw``'s file in file order
        (:meth:`_scan_threads`): no faster store holds them, and the file can be read."""
        return self._gather is None and self._file() is not None

    def _scan_pair_cosines(self, raw_questions, ids, questions, anchors, outs) -> None:
        """:meth:`pair_cosines` of a memory-mapped ``raw``: the negatives' rows are
        read in file order, a window at a time (:func:`scan_rows`), and each is
        scored against its row's question and source while in cache. The same
        cosines as gathering them row by row, for half the time or less when a
        block wants much of the file."""
        n = ids.shape[1]
        flat_q, flat_a, pos = outs[0].reshape(-1), outs[1].reshape(-1), outs[2]
        qbuf = np.empty((CHUNK, self.dim), dtype=np.float32)
        cos = row_cosines()
        # A pass's question and positive rows go into buffers kept from pass to
        # pass and block to block: fresh memory is slow to fault in.
        q_rows, a_rows = self._bufs(min(SCAN_PAIRS, ids.shape[0]))
        for p0 in range(0, ids.shape[0], SCAN_PAIRS):
            p1 = min(p0 + SCAN_PAIRS, ids.shape[0])
            uq, inv = question_vectors(raw_questions, questions[p0:p1], q_rows)
            av = a_rows[: p1 - p0]

            def read(a: int, b: int, p0: int = p0, av: np.ndarray = av) -> None:
                self.gather_mapped(anchors[p0 + a : p0 + b], av[a:b])

            in_parts(p1 - p0, read)  # scattered rows, read one by one: on threads
            for c0 in range(0, p1 - p0, CHUNK):
                c1 = min(c0 + CHUNK, p1 - p0)
                qv = rows_into(uq, inv[c0:c1], qbuf[: c1 - c0])
                pos[p0 + c0 : p0 + c1] = np.einsum("ij,ij->i", qv, av[c0:c1])

            def score(at, sv, buf, p0=p0, uq=uq, inv=inv, av=av):
                pair = at // n
                qv = rows_into(uq, inv[pair], buf[: at.size])
                flat_q[p0 * n + at] = np.einsum("ij,ij->i", qv, sv)
                qv = rows_into(av, pair, buf[: at.size])
                flat_a[p0 * n + at] = np.einsum("ij,ij->i", qv, sv)

            def fast(at, local, block, p0=p0, uq=uq, inv=inv, av=av):
                pair = at // n
                return cos(block, local, uq, inv[pair], av, pair, flat_q, flat_a, p0 * n + at)

            self._scan_threads(ids[p0:p1].reshape(-1), score, None if cos is None else fast)

    def _scan_threads(
        self,
        ids: np.ndarray,
        score: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
        fast: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """``score(at, vecs, buf)`` for the unit rows of sources ``ids`` int64 [m]
        of a memory-mapped ``raw``, read in file order a window at a time
        (:func:`scan_rows`), the file cut by row into parts scanned on up to
        :data:`SCAN_THREADS` threads.

        ``at`` int64 [c] are positions in ``ids`` and ``vecs`` float32 [c, d]
        their unit rows; ``buf`` is a float32 scratch of ``vecs``' shape or
        larger, the thread's own; ``score`` must write only where ``at`` says
        (each position comes once, from one thread). ``fast(at, local, block)``,
        when given, scores a window's float32 rows ``block[local]`` itself (the
        compiled cosines, bit for bit ``score``'s) and returns the entries of
        ``local`` it left to ``score``.
        """
        parts = min(SCAN_THREADS, max(1, ids.size // SCAN_MIN_PART))
        if parts == 1:
            sels = [np.arange(ids.size)]
        else:  # cut at row quantiles: each thread reads its own windows
            at = np.arange(1, parts) * ids.size // parts
            edges = np.partition(ids, at)[at]
            which = np.searchsorted(edges, ids, side="right")
            sels = [np.flatnonzero(which == j) for j in range(parts)]
        # Each thread's window buffer is kept from scan to scan (fresh memory is
        # slow to fault in); scans of one SourceVectors never run at once.
        while len(self._windows) < len(sels):
            win = window_rows(self._where[2])
            self._windows.append(np.empty((win, self.dim), dtype=self.raw.dtype))

        def run(sel: np.ndarray, window: np.ndarray) -> None:
            sbuf = np.empty((RERANK_ROWS, self.dim), dtype=np.float32)
            qbuf = np.empty_like(sbuf)
            for at, local, block in scan_rows(self.raw, ids[sel], self._where, window):
                at = sel[at]
                if fast is not None and block.dtype == np.float32:
                    left = fast(at, local, block)
                    if left.size == 0:
                        continue
                    at, local = at[left], local[left]
                for c0, rows in _unit_rows(local, block, sbuf):
                    score(at[c0 : c0 + rows.shape[0]], rows, qbuf)

        if len(sels) == 1:
            run(sels[0], self._windows[0])
            return
        with ThreadPoolExecutor(len(sels), thread_name_prefix="negmine-read") as pool:
            for done in [
                pool.submit(run, *job) for job in zip(sels, self._windows[: len(sels)], strict=True)
            ]:
                done.result()

    def _gathered(
        self, ids: np.ndarray, buf: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Unit rows of sources ``ids`` int64 [m], ``len(buf)`` at a time in the
        order of ``ids``, from wherever :meth:`gather_mapped` finds them: yields
        ``(at, vecs)``, positions int64 [c] in ``ids`` and their rows float32
        [c, d] in ``buf`` (call :meth:`release` after the last item)."""
        step = buf.shape[0]
        for c0 in range(0, ids.size, step):
            at = np.arange(c0, min(c0 + step, ids.size))
            yield at, self.gather_mapped(ids[at], buf[: at.size])

    def to_queries(self, qvecs: np.ndarray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Cosine of source ``ids[i, j]`` to query ``qvecs[rows[i]]`` (an exact re-rank).

        Parameters
        ----------
        qvecs : float32 [Q, d]
            Unit query vectors.
        rows : int64 [m]
            Row of ``qvecs`` of each row of ``ids``.
        ids : int64 [m, k]
            Source ids; ``-1`` for none.

        Returns
        -------
        float32 [m, k]
            ``-inf`` where ``ids`` is ``-1``. A memory-mapped ``raw`` is read in
            file order, a window at a time (as :meth:`pair_cosines`); other
            sources are gathered :data:`RERANK_ROWS` at a time.
        """
        k = ids.shape[1]
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        flat = out.reshape(-1)
        live = np.flatnonzero(ids.reshape(-1) >= 0)
        want = ids.reshape(-1)[live]

        def score(at, sv, buf):
            qv = rows_into(qvecs, rows[live[at] // k], buf[: at.size])
            flat[live[at]] = np.einsum("ij,ij->i", qv, sv)

        if self._scans():
            cos = row_cosines() if qvecs.dtype == np.float32 else None

            def fast(at, local, block):
                return cos(
                    block, local, qvecs, rows[live[at] // k], qvecs, _NO_ROWS, flat, flat, live[at]
                )

            self._scan_threads(want, score, None if cos is None else fast)
            return out
        sbuf = np.empty((min(RERANK_ROWS, max(1, live.size)), self.dim), dtype=np.float32)
        qbuf = np.empty_like(sbuf)
        for at, sv in self._gathered(want, sbuf):
            score(at, sv, qbuf)
        self.release()  # gathers of a mapped array kept it mapped until here
        return out


_NO_ROWS = np.empty(0, dtype=np.int64)


def _unit_rows(
    local: np.ndarray, block: np.ndarray, buf: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """Unit rows of ``block[local]``, ``len(buf)`` at a time into ``buf``
    (reused by the next item): yields ``(c0, rows)``, rows float32 [c, d] of
    ``local[c0 : c0 + c]``. Only the wanted rows are normalised (row by row, so
    the same bytes as normalising the window): a window may hold few of them."""
    step = buf.shape[0]
    for c0 in range(0, local.size, step):
        part = local[c0 : c0 + step]
        out = buf[: part.size]
        rows = rows_into(block, part, out) if block.dtype == np.float32 else block[part]
        yield c0, normalized_float32(rows, out=out)
