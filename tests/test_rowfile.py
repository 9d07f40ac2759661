"""Rows of memory-mapped embeddings read from their file (negmine._rowfile)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from negmine import _rowfile
from negmine import vectors as vectors_mod
from negmine._checks import take_rows
from negmine._rowfile import file_rows, read_rows, scan_rows
from negmine.layout import PositiveSets
from negmine.vectors import SourceVectors


def _saved(tmp_path, a: np.ndarray, name: str = "x.npy") -> np.memmap:
    path = tmp_path / name
    np.save(path, a)
    return np.load(path, mmap_mode="r")


@pytest.fixture
def rows_file(tmp_path):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3000, 24)).astype(np.float32)
    return a, _saved(tmp_path, a)


@pytest.mark.parametrize(
    "pick",
    [
        lambda rng, n: rng.integers(0, n, 5000),  # scattered, with repeats
        lambda rng, n: np.arange(n)[::-1],  # every row, reversed
        lambda rng, n: np.sort(rng.choice(n, n // 2, replace=False)),  # dense spans
        lambda rng, n: np.array([n - 1]),
        lambda rng, n: np.array([], dtype=np.int64),
        lambda rng, n: np.array([5, 5, 5, 0, 5]),
        lambda rng, n: np.arange(100, n - 7),  # one run of consecutive rows: one read
        lambda rng, n: np.arange(n),
        lambda rng, n: np.array([7, 8]),
        lambda rng, n: np.array([9, 8, 7]),  # consecutive but descending
    ],
)
@pytest.mark.parametrize("compiled", ["0", "1"])
def test_read_rows_equals_indexing(rows_file, pick, compiled, monkeypatch):
    """Single rows read by the compiled loop of reads (``negmine[fast]``) or
    one call at a time from Python, spans through the scratch: the rows."""
    monkeypatch.setenv("NEGMINE_COMPILED", compiled)
    a, m = rows_file
    rows = pick(np.random.default_rng(3), a.shape[0])
    got = read_rows(m, rows)
    np.testing.assert_array_equal(got, a[rows])
    assert got.dtype == a.dtype


def test_compiled_reads_hand_back_the_rows_they_could_not_read(rows_file):
    """A row past the file's end reads short: the compiled loop returns its
    index for the caller to read again, and reads the others in place."""
    from negmine import _compiled

    pytest.importorskip("numba")
    reads = _compiled.pread_rows()
    assert reads is not None
    a, m = rows_file
    path, offset, row = file_rows(m)
    out = np.zeros((4, a.shape[1]), dtype=a.dtype)
    fd = os.open(path, os.O_RDONLY)
    try:
        rows = np.array([17, a.shape[0] + 3, 2999, 0], dtype=np.int64)
        short = reads(fd, out.ctypes.data, rows, np.array([3, 2, 1, 0]), offset, row)
    finally:
        os.close(fd)
    assert short.tolist() == [1]
    np.testing.assert_array_equal(out[[3, 1, 0]], a[[17, 2999, 0]])
    assert not out[2].any()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.integers(0, 999), max_size=300),
    scratch_rows=st.integers(1, 40),
    gap_bytes=st.sampled_from([1, 64, 8192]),
    compiled=st.sampled_from(["0", "1"]),
)
def test_read_rows_any_rows_any_scratch(tmp_path_factory, rows, scratch_rows, gap_bytes, compiled):
    """Spans read through a scratch buffer of any size (from Python, or by the
    compiled loop through its own), any gap rule, equal indexing."""
    base = tmp_path_factory.getbasetemp() / "prop.npy"
    a = np.arange(1000 * 6, dtype=np.float64).reshape(1000, 6)
    if not base.exists():
        np.save(base, a)
    m = np.load(base, mmap_mode="r")
    old = (_rowfile.SCRATCH_BYTES, _rowfile.SPAN_BYTES, _rowfile.GAP_BYTES)
    was = os.environ.get("NEGMINE_COMPILED")
    try:
        _rowfile.SCRATCH_BYTES = _rowfile.SPAN_BYTES = scratch_rows * 48
        _rowfile.GAP_BYTES = gap_bytes
        os.environ["NEGMINE_COMPILED"] = compiled
        got = read_rows(m, np.array(rows, dtype=np.int64))
    finally:
        _rowfile.SCRATCH_BYTES, _rowfile.SPAN_BYTES, _rowfile.GAP_BYTES = old
        if was is None:
            os.environ.pop("NEGMINE_COMPILED")
        else:
            os.environ["NEGMINE_COMPILED"] = was
    np.testing.assert_array_equal(got, a[np.array(rows, dtype=np.int64)].reshape(-1, 6))


def test_compiled_span_reads_hand_back_the_spans_they_could_not_read(rows_file):
    """A span reaching past the file's end reads short: the compiled loop
    returns its index and copies every row of the other spans, a scratch of
    rows at a time, from the rows read, gaps between them skipped."""
    from negmine import _compiled

    pytest.importorskip("numba")
    reads = _compiled.pread_spans()
    assert reads is not None
    a, m = rows_file
    path, offset, row = file_rows(m)
    n = a.shape[0]
    uniq = np.array([3, 4, 9, 10, 11, 2990, 2999, n + 1, 100, 101, 140], dtype=np.int64)
    spans = np.array([[0, 5], [5, 8], [8, 11]], dtype=np.int64)  # the middle one past the end
    upos = np.array([10, 0, 9, 1, 8, 2, 7, 3, 6, 4, 5], dtype=np.int64)
    out = np.zeros((11, a.shape[1]), dtype=a.dtype)
    scratch = np.empty((4, row), dtype=np.uint8)  # spans of 9 and 41 rows: several reads each
    fd = os.open(path, os.O_RDONLY)
    try:
        short = reads(fd, out.view(np.uint8), spans, uniq, upos, offset, scratch)
    finally:
        os.close(fd)
    assert short.tolist() == [1]
    done = np.r_[0:5, 8:11]
    np.testing.assert_array_equal(out[upos[done]], a[uniq[done]])


@pytest.mark.parametrize("compiled", ["0", "1"])
def test_a_short_span_read_raises(rows_file, compiled, monkeypatch):
    """A span whose read comes back short (here: its last row past the file's
    end) is read again from Python, which raises rather than return stale rows."""
    monkeypatch.setenv("NEGMINE_COMPILED", compiled)
    a, m = rows_file
    path, offset, row = file_rows(m)
    n = a.shape[0]
    with pytest.raises(OSError, match="short read"):
        read_rows(m, np.array([n - 3, n - 1], dtype=np.int64), where=(path, offset + row, row))


@pytest.mark.parametrize("dtype", ["<f2", "<f8", ">f4"])
def test_other_dtypes_and_a_row_slice(tmp_path, dtype):
    a = np.random.default_rng(1).standard_normal((500, 10)).astype(dtype)
    m = _saved(tmp_path, a)
    rows = np.random.default_rng(2).integers(0, 300, 400)
    np.testing.assert_array_equal(read_rows(m, rows), a[rows])
    view = m[150:450]
    where = file_rows(view)
    assert where is not None and where[1] == file_rows(m)[1] + 150 * a.shape[1] * a.itemsize
    np.testing.assert_array_equal(read_rows(view, rows % 300), a[150:450][rows % 300])


def test_out_buffer_and_bad_arguments(rows_file):
    a, m = rows_file
    rows = np.array([9, 2, 9, 2999])
    out = np.full((4, 24), np.nan, dtype=np.float32)
    assert read_rows(m, rows, out=out) is out
    np.testing.assert_array_equal(out, a[rows])
    with pytest.raises(ValueError, match="C-contiguous float32 array of shape"):
        read_rows(m, rows, out=np.empty((4, 24), dtype=np.float64))
    with pytest.raises(IndexError, match=r"\[0, 3000\)"):
        read_rows(m, np.array([0, 3000]))
    with pytest.raises(ValueError, match="file_rows"):
        read_rows(a, rows)


def test_arrays_that_cannot_be_read_from_their_file(tmp_path, rows_file):
    a, m = rows_file
    assert file_rows(m) is not None
    assert file_rows(a) is None  # in memory
    assert file_rows(m[:, :12]) is None  # strided rows
    assert file_rows(m[::2]) is None
    path = tmp_path / "x.npy"
    cow = np.load(path, mmap_mode="c")  # private changes the file does not hold
    assert file_rows(cow) is None
    f = tmp_path / "f.npy"
    np.save(f, np.asfortranarray(a))
    assert file_rows(np.load(f, mmap_mode="r")) is None


def test_a_replaced_file_is_not_read(tmp_path):
    """A mapping outlives its file being replaced: the rows come from the mapping."""
    a = np.random.default_rng(4).standard_normal((800, 8)).astype(np.float32)
    m = _saved(tmp_path, a)
    rows = np.array([799, 0, 10, 10])
    np.testing.assert_array_equal(take_rows(m, rows), a[rows])  # read from the file
    new = tmp_path / "new.npy"
    np.save(new, a + 1.0)
    os.replace(new, tmp_path / "x.npy")
    assert file_rows(m) is None
    np.testing.assert_array_equal(take_rows(m, rows), a[rows])


def test_source_vectors_from_a_file_equal_those_in_memory(rows_file):
    a, m = rows_file
    pos = PositiveSets(np.array([0, 1], dtype=np.int64), np.array([3], dtype=np.int64))
    ids = np.random.default_rng(5).integers(0, a.shape[0], 777)
    mem, mapped = SourceVectors(a, pos), SourceVectors(m, pos)
    ref = mem.gather(ids)
    np.testing.assert_array_equal(mapped.gather(ids), ref)
    out = np.empty_like(ref)
    np.testing.assert_array_equal(mapped.gather_mapped(ids, out), ref)
    unit = a[ids] / np.linalg.norm(a[ids], axis=1, keepdims=True)
    np.testing.assert_allclose(ref, unit, rtol=0, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_question_vectors_read_on_threads_equal_those_in_memory(rows_file, threads, monkeypatch):
    """Distinct questions' unit rows, read from a mapped file by 1, 2 or 3 threads
    (each its own run of rows), have the bytes of normalizing them in memory."""
    from negmine.vectors import question_vectors

    monkeypatch.setattr(vectors_mod, "SCAN_THREADS", threads)
    monkeypatch.setattr(vectors_mod, "SCAN_MIN_PART", 100)
    a, m = rows_file
    qs = np.random.default_rng(11).integers(0, a.shape[0], 2500)
    got, inv = question_vectors(m, qs)
    want, winv = question_vectors(a, qs)
    np.testing.assert_array_equal(inv, winv)
    assert got.tobytes() == want.tobytes()
    uq = np.unique(qs)
    np.testing.assert_allclose(got[inv], a[qs] / np.linalg.norm(a[qs], axis=1, keepdims=True),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert uq.size > 3 * 100  # every thread count really cuts the rows


@pytest.mark.parametrize("mapped", [True, False])
def test_a_row_range_slices_unit_rows_in_id_order(rows_file, mapped):
    """RowRange[s0:s1] holds the unit vectors of sources s0..s1-1, read in one call
    from a mapped file or gathered from memory; a slice's buffer is reused."""
    from negmine.vectors import RowRange

    a, m = rows_file
    pos = PositiveSets(np.array([0, 1], dtype=np.int64), np.array([3], dtype=np.int64))
    rr = SourceVectors(m if mapped else a, pos).row_range()
    assert isinstance(rr, RowRange) and rr.shape == a.shape
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    for s0, s1 in [(0, 3000), (17, 1041), (2999, 3000), (2990, 4000), (5, 5)]:
        got = rr[s0:s1]
        np.testing.assert_allclose(got, unit[s0:s1], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(
            got, SourceVectors(a, pos).gather(np.arange(s0, min(s1, 3000)))
        )
    first = rr[0:10]
    rr[10:20]
    np.testing.assert_allclose(first, unit[10:20], rtol=0, atol=1e-6)  # the same buffer
    with pytest.raises(ValueError, match="consecutive"):
        rr[0:10:2]


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.integers(0, 999), max_size=400),
    window_rows=st.integers(1, 64),
    row_cost=st.sampled_from([1, 48 * 4, 1 << 20]),
)
def test_scan_rows_serves_every_position_once(tmp_path_factory, rows, window_rows, row_cost):
    """Windows of any size, read whole or row by row: every position of ``rows``
    is served exactly once, with its row's values."""
    base = tmp_path_factory.getbasetemp() / "scan.npy"
    a = np.arange(1000 * 6, dtype=np.float64).reshape(1000, 6)
    if not base.exists():
        np.save(base, a)
    m = np.load(base, mmap_mode="r")
    rows = np.array(rows, dtype=np.int64)
    got = np.full((rows.size, 6), np.nan)
    seen = np.zeros(rows.size, dtype=np.int64)
    old = (_rowfile.SCAN_BYTES, _rowfile.SCAN_ROW_BYTES)
    try:
        _rowfile.SCAN_BYTES, _rowfile.SCAN_ROW_BYTES = window_rows * 48, row_cost
        for sel, local, block in scan_rows(m, rows):
            got[sel] = block[local]
            np.add.at(seen, sel, 1)
    finally:
        _rowfile.SCAN_BYTES, _rowfile.SCAN_ROW_BYTES = old
    np.testing.assert_array_equal(seen, 1)
    np.testing.assert_array_equal(got, a[rows].reshape(-1, 6))


@pytest.mark.parametrize(("dtype", "threads"), [("<f4", 1), ("<f4", 3), (">f4", 2), ("<f2", 2)])
def test_pair_cosines_scanned_from_a_file_equal_gathered_ones(
    tmp_path, monkeypatch, dtype, threads
):
    """The file scan of pair_cosines (many small windows and scans here, the file
    cut over ``threads`` threads) gives the bytes of the row-by-row gathers over
    the same rows in memory, and the cosines a float64 reference gives."""
    monkeypatch.setattr(vectors_mod, "SCAN_THREADS", threads)
    monkeypatch.setattr(vectors_mod, "SCAN_MIN_PART", 16)
    rng = np.random.default_rng(11)
    a = rng.standard_normal((2000, 24)).astype(dtype)
    if a.itemsize == 4:  # rows whose squared norm leaves float32's range (normalised in place)
        a[5] *= 1e20
        a[7] *= 1e-20
    m = _saved(tmp_path, a)
    q = rng.standard_normal((300, 24)).astype(np.float32)
    pos = PositiveSets(np.zeros(301, dtype=np.int64), np.zeros(0, dtype=np.int64))
    ids = rng.integers(0, 2000, (700, 5))
    ids[:40] = rng.integers(100, 140, (40, 5))  # a dense corner
    ids[50, :2] = [5, 7]
    questions, anchors = rng.integers(0, 300, 700), rng.integers(0, 2000, 700)
    anchors[51:53] = [5, 7]
    monkeypatch.setattr(_rowfile, "SCAN_BYTES", 96 * a.itemsize * 24)
    monkeypatch.setattr(vectors_mod, "SCAN_PAIRS", 128)
    monkeypatch.setattr(vectors_mod, "CHUNK", 64)
    from_file = SourceVectors(m, pos)
    assert from_file._file() is not None  # the scan, not the gathers
    scanned = from_file.pair_cosines(q, ids, questions, anchors)
    gathered = SourceVectors(np.asarray(a), pos).pair_cosines(q, ids, questions, anchors)
    for got, want in zip(scanned, gathered, strict=True):
        assert got.tobytes() == want.tobytes()
    s = a.astype(np.float64)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    u = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(scanned[0], np.einsum("rd,rkd->rk", u[questions], s[ids]), atol=1e-5)
    np.testing.assert_allclose(scanned[1], np.einsum("rd,rkd->rk", s[anchors], s[ids]), atol=1e-5)
    np.testing.assert_allclose(
        scanned[2], np.einsum("rd,rd->r", u[questions], s[anchors]), atol=1e-5
    )


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(("dtype", "threads"), [("<f4", 1), ("<f4", 3), (">f4", 2), ("<f2", 2)])
def test_rerank_cosines_scanned_from_a_file_equal_gathered_ones(
    tmp_path, monkeypatch, dtype, threads
):
    """to_queries (the exact re-rank's cosines) read in file order gives the bytes
    of gathering the candidates query by query, -inf where a candidate is missing,
    from windows read whole and windows read row by row, the file cut over
    ``threads`` threads."""
    monkeypatch.setattr(vectors_mod, "SCAN_THREADS", threads)
    monkeypatch.setattr(vectors_mod, "SCAN_MIN_PART", 16)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3000, 24)).astype(dtype)
    m = _saved(tmp_path, a)
    q = rng.standard_normal((50, 24)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    pos = PositiveSets(np.zeros(51, dtype=np.int64), np.zeros(0, dtype=np.int64))
    rows = rng.integers(0, 50, 400)
    ids = rng.integers(0, 600, (400, 6))  # dense below row 600
    ids[::5, 3] = rng.integers(600, 3000, 80)  # sparse above
    ids[::7, 4:] = -1
    monkeypatch.setattr(_rowfile, "SCAN_BYTES", 200 * 24 * a.itemsize)
    monkeypatch.setattr(_rowfile, "SCAN_ROW_BYTES", 8 * 24 * a.itemsize)
    monkeypatch.setattr(vectors_mod, "RERANK_ROWS", 100)
    reads = []
    monkeypatch.setattr(_rowfile, "read_rows", _counting(_rowfile.read_rows, reads))
    from_file = SourceVectors(m, pos)
    assert from_file._file() is not None
    got = from_file.to_queries(q, rows, ids)
    assert reads  # some windows were read row by row
    mem = SourceVectors(a, pos).to_queries(q, rows, ids)
    assert got.tobytes() == mem.tobytes()
    # the re-rank's former formula: each query row against its gathered candidates
    unit = SourceVectors(a, pos).gather(np.maximum(ids, 0).reshape(-1)).reshape(400, 6, 24)
    want = np.where(ids >= 0, np.einsum("md,mkd->mk", q[rows], unit), -np.inf)
    assert got.tobytes() == want.astype(np.float32).tobytes()


def test_scan_rows_into_a_caller_s_window_buffer(rows_file, monkeypatch):
    """A window buffer passed in (larger than a window, full of garbage) serves
    the same rows as scan_rows's own; one too small, of another dtype or width
    is refused, naming the argument."""
    a, m = rows_file
    monkeypatch.setattr(_rowfile, "SCAN_BYTES", 50 * 24 * 4)
    rows = np.random.default_rng(3).integers(0, a.shape[0], 900)
    scratch = np.full((80, 24), np.nan, dtype=np.float32)
    got = np.full((rows.size, 24), np.nan, dtype=np.float32)
    for sel, local, block in scan_rows(m, rows, scratch=scratch):
        assert np.shares_memory(block, scratch)
        got[sel] = block[local]
    np.testing.assert_array_equal(got, a[rows])
    for bad in (np.empty((49, 24), np.float32), np.empty((80, 24), np.float64),
                np.empty((80, 23), np.float32)):  # fmt: skip
        with pytest.raises(ValueError, match="scratch must be"):
            next(scan_rows(m, rows, scratch=bad))


def test_question_vectors_into_a_reused_buffer(rows_file):
    from negmine.vectors import question_vectors

    a, m = rows_file
    qs = np.random.default_rng(4).integers(0, a.shape[0], 500)
    buf = np.full((600, 24), np.nan, dtype=np.float32)
    got, inv = question_vectors(m, qs, buf)
    want, winv = question_vectors(m, qs)
    assert np.shares_memory(got, buf) and got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(inv, winv)
    with pytest.raises(ValueError, match="buf must hold"):
        question_vectors(m, qs, buf[:10])


def test_buffers_kept_from_call_to_call_change_no_cosine(tmp_path, monkeypatch):
    """One SourceVectors over a file, its pass and window buffers kept between
    calls: pair and re-rank cosines of calls of growing and shrinking sizes, on
    1 to 3 threads, and after freeing the buffers, have the bytes of a fresh
    SourceVectors for each call and of the gathers over the rows in memory."""
    monkeypatch.setattr(vectors_mod, "SCAN_MIN_PART", 16)
    monkeypatch.setattr(_rowfile, "SCAN_BYTES", 96 * 4 * 24)
    monkeypatch.setattr(vectors_mod, "SCAN_PAIRS", 128)
    monkeypatch.setattr(vectors_mod, "CHUNK", 64)
    rng = np.random.default_rng(12)
    a = rng.standard_normal((2000, 24)).astype(np.float32)
    m = _saved(tmp_path, a)
    q = rng.standard_normal((300, 24)).astype(np.float32)
    pos = PositiveSets(np.zeros(301, dtype=np.int64), np.zeros(0, dtype=np.int64))
    kept = SourceVectors(m, pos)
    held = None
    for step, (n, threads) in enumerate([(700, 3), (90, 1), (700, 2), (300, 3), (700, 3)]):
        monkeypatch.setattr(vectors_mod, "SCAN_THREADS", threads)
        if step == 4:
            kept.free_buffers()
            assert kept._a.shape[0] == 0 and kept._windows == []
        ids = rng.integers(0, 2000, (n, 5))
        questions, anchors = rng.integers(0, 300, n), rng.integers(0, 2000, n)
        qv = q[rng.integers(0, 300, n)]
        qv /= np.linalg.norm(qv, axis=1, keepdims=True)
        got = (
            *kept.pair_cosines(q, ids, questions, anchors),
            kept.to_queries(qv, np.arange(n), ids),
        )
        fresh = SourceVectors(m, pos)
        memory = SourceVectors(np.asarray(a), pos)
        for other in (fresh, memory):
            want = (*other.pair_cosines(q, ids, questions, anchors),
                    other.to_queries(qv, np.arange(n), ids))  # fmt: skip
            for g, w in zip(got, want, strict=True):
                assert g.tobytes() == w.tobytes()
        if step == 0:
            held = (kept._a, kept._b, list(kept._windows))
            assert held[0].shape[0] == 128 and len(held[2]) == 3
        elif step < 4:  # the same buffers served every later call
            assert kept._a is held[0] and kept._b is held[1]
            assert all(w is h for w, h in zip(kept._windows, held[2], strict=True))
