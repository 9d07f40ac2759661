"""Argument checks shared by the public API.

Every message has one form: "`name` must <rule>; got <value>. <how to fix>".
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from ._rowfile import file_rows, read_rows

__all__ = [
    "as_numpy",
    "check_embeddings",
    "check_ids",
    "fail",
    "normalized_float32",
]

_CHUNK_ROWS = 65536


def fail(
    name: str, rule: str, got: Any, fix: str = "", exc: type[Exception] = ValueError
) -> NoReturn:
    """Raise ``exc`` with the project's one message form."""
    msg = f"`{name}` must {rule}; got {got}."
    if fix:
        msg += f" {fix}"
    raise exc(msg)


def as_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array without copying when possible.

    Accepts numpy arrays (memmaps included), torch tensors (moved to CPU) and
    nested sequences. Anything else raises ``TypeError`` naming ``name``.
    """
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__ or ""
    if mod.startswith("torch"):
        try:
            t = x.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            if str(t.dtype) == "torch.bfloat16":
                t = t.float()
            # Lazily conjugated or negated views refuse .numpy(); materialise them.
            return t.resolve_conj().resolve_neg().numpy()
        except (TypeError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fail(
                name,
                "be a dense CPU-readable torch tensor of a numpy-compatible dtype",
                f"a tensor that cannot be read as a numpy array ({first})",
                "Convert it first, e.g. with .to_dense().float().cpu().",
                exc=TypeError,
            )
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except (ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fail(
                name,
                "be a rectangular array (every row of the same length)",
                f"a {type(x).__name__} that numpy cannot turn into one ({first})",
            )
    fail(
        name,
        "be a numpy array, numpy memmap or torch tensor",
        f"an object of type {type(x).__name__}",
        exc=TypeError,
    )


def _shape_str(a: np.ndarray) -> str:
    return "[" + ", ".join(str(s) for s in a.shape) + "]"


def check_embeddings(x: Any, name: str, d: int | None = None, d_from: str = "") -> np.ndarray:
    """Check a float matrix ``[n, d]`` of finite, non-zero rows.

    Parameters
    ----------
    x : array-like, float, shape [n, d]
    name : str
        Argument name used in error messages.
    d : int, optional
        Required width.
    d_from : str
        Which argument fixed ``d`` (for the message).

    Returns
    -------
    numpy.ndarray
        The input as a numpy array (not copied, not normalised).
    """
    a = as_numpy(x, name)
    if a.ndim != 2:
        fail(name, "be a 2-D float array [n, d]", f"shape {_shape_str(a)}", exc=ValueError)
    if not np.issubdtype(a.dtype, np.floating):
        fail(
            name,
            "have a floating dtype (float16, float32 or float64)",
            f"dtype {a.dtype}",
            "Convert with .astype(np.float32).",
            exc=TypeError,
        )
    if a.shape[0] == 0:
        fail(name, "have at least one row", f"shape {_shape_str(a)}")
    if a.shape[1] == 0:
        fail(name, "have at least one column", f"shape {_shape_str(a)}")
    if d is not None and a.shape[1] != d:
        fail(
            name,
            f"have width d={d} like `{d_from}`",
            f"shape {_shape_str(a)}",
            "All embeddings must come from the same model.",
        )
    for start in range(0, a.shape[0], _CHUNK_ROWS):
        blk = np.asarray(a[start : start + _CHUNK_ROWS])
        finite = np.isfinite(blk).all(axis=1)
        if not finite.all():
            row = start + int(np.flatnonzero(~finite)[0])
            fail(
                name,
                "hold only finite values",
                f"NaN or inf in row {row} ({int((~finite).sum())} bad rows in rows "
                f"{start}..{start + len(blk) - 1})",
                "Drop or re-embed those rows.",
            )
        zero = ~(blk != 0).any(axis=1)
        if zero.any():
            row = start + int(np.flatnonzero(zero)[0])
            fail(
                name,
                "have no all-zero rows (cosine is undefined for them)",
                f"an all-zero row {row}",
                "Drop or re-embed that row.",
            )
        release_pages(a)
    return a


def release_pages(a: Any) -> None:
    """Drop the resident pages of a memory-mapped array from this process.

    Memory-mapped inputs (``np.load(..., mmap_mode="r")``, :class:`numpy.memmap`)
    are read chunk by chunk; without this, every page read stays mapped and
    counts in the process's resident memory until the array is closed. The
    data stays in the kernel's page cache, so reading it again is cheap. Any
    other array is left alone.

    Parameters
    ----------
    a : array-like
        Any array; only one backed by a read-only :class:`mmap.mmap` is affected.
    """
    import mmap

    mm = _file_map(a)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def _file_map(a: Any) -> Any:
    """The shared :class:`mmap.mmap` behind a memory-mapped array (or a view of
    one), or None. Copy-on-write maps (mode ``"c"``) count as None: dropping
    their pages would lose their private changes."""
    import mmap

    m = a
    for _ in range(8):  # a view's chain of bases leads to the memmap
        if isinstance(m, np.memmap):
            mm = getattr(m, "_mmap", None)
            ok = isinstance(mm, mmap.mmap) and getattr(m, "mode", "c") != "c"
            return mm if ok else None
        m = getattr(m, "base", None)
        if m is None:
            return None
    return None


#: Rows gathered through a file mapping between two page releases.
TAKE_STEP = 256


def take_rows(a: Any, rows: np.ndarray) -> np.ndarray:
    """``a[rows]`` as a new array, without leaving a memory-mapped file mapped.

    A gather of scattered rows through a file mapping maps more than the rows:
    the kernel maps whole page-cache folios around each row, and for a file
    written recently those folios can be megabytes, so 4096 scattered rows of
    a 1.3 GB file were seen to map all of it. Rows of a memory-mapped file
    are therefore read from the file without mapping them
    (:func:`negmine._rowfile.read_rows`); where that is not possible (a
    copy-on-write map, strided rows, a platform without ``preadv``) they are
    gathered :data:`TAKE_STEP` at a time, dropping the mapped pages after each
    step (:func:`release_pages`). Other arrays are indexed directly.

    Parameters
    ----------
    a : array [n, ...]
    rows : int array [m]

    Returns
    -------
    numpy.ndarray [m, ...]
    """
    where = file_rows(a)
    if where is not None:  # read from the file: nothing gets mapped
        return read_rows(a, rows, where)
    if _file_map(a) is None or len(rows) <= TAKE_STEP:
        out = np.asarray(a[rows])
        release_pages(a)
        return out
    out = np.empty((len(rows), *a.shape[1:]), dtype=a.dtype)
    for i in range(0, len(rows), TAKE_STEP):
        out[i : i + TAKE_STEP] = a[rows[i : i + TAKE_STEP]]
        release_pages(a)
    return out


def rows_into(a: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``a[rows]`` written straight into ``out`` [len(rows), d] (returned).

    ``np.take`` in mode "clip": in its default mode ("raise") it fills a
    temporary and copies that into ``out``, about 4x slower for 4096 rows of
    384 floats. A copy either way, so the same bytes. For negmine's own row
    numbers only, all in range: clipping would hide any other.
    """
    return np.take(a, rows, axis=0, out=out, mode="clip")


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same elements of the same memory, in the same layout."""
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def normalized_float32(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Return a C-contiguous float32 copy of ``a`` with unit-norm rows.

    ``out`` (float32, C-contiguous, the shape of ``a``) receives the result
    when given; fresh memory is slow to fault in on some machines.

    Works in row chunks, so a float64 or memory-mapped input never needs a
    second full-size temporary. Norms are taken in float32 and, for rows whose
    squared norm would overflow or underflow float32, again in float64 after
    scaling by the row's largest magnitude. Rows must be finite and non-zero
    (see :func:`check_embeddings`).
    """
    if out is None:
        out = np.empty(a.shape, dtype=np.float32)
    for start in range(0, a.shape[0], _CHUNK_ROWS):
        raw = np.asarray(a[start : start + _CHUNK_ROWS])
        blk = out[start : start + len(raw)]
        with np.errstate(all="ignore"):  # out-of-range rows are redone below
            if not _same_memory(raw, blk):  # (numpy copies an array onto itself via a temporary)
                blk[...] = raw
            sq = np.einsum("ij,ij->i", blk, blk)
            bad = ~((sq > 1e-30) & (sq < 1e30))
            # Taken before the division, which changes ``raw`` when it is ``out``.
            # At least float64; wider (long double) inputs keep their own range,
            # where a value past float64's maximum is still finite.
            rows = np.asarray(raw[bad], dtype=np.result_type(raw.dtype, np.float64))
            np.sqrt(sq, out=sq)
            blk /= sq[:, None]
        if rows.shape[0]:
            rows /= np.abs(rows).max(axis=1, keepdims=True)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            blk[bad] = rows
        release_pages(a)
    return out


def check_ids(
    x: Any,
    name: str,
    *,
    ndim: int,
    upper: int,
    upper_what: str,
    width: int | None = None,
) -> np.ndarray:
    """Check an integer id array with values in ``[0, upper)``.

    Parameters
    ----------
    x : array-like, integer
    name : str
        Argument name used in error messages.
    ndim : int
        Required rank.
    upper : int
        Exclusive upper bound of the ids.
    upper_what : str
        What the bound is, e.g. "S = len(source_embeddings)".
    width : int, optional
        Required size of the last axis (for ``[n, width]`` arrays).

    Returns
    -------
    numpy.ndarray of int64
    """
    a = as_numpy(x, name)
    # kind "i"/"u" only: numpy files timedelta64 under np.integer, and bool is no id.
    if a.dtype.kind not in "iu":
        fail(
            name,
            "have an integer dtype",
            f"dtype {a.dtype}",
            "Ids must be integers; convert with .astype(np.int64) if they are whole numbers.",
            exc=TypeError,
        )
    if a.ndim != ndim or (width is not None and a.shape[-1] != width):
        want = f"[n, {width}]" if width is not None else ("[n]" if ndim == 1 else f"{ndim}-D")
        fail(name, f"have shape {want}", f"shape {_shape_str(a)}")
    # Bounds are checked in the input's own dtype: casting first would wrap
    # uint64 ids past 2**63 - 1 to negative numbers and misreport them.
    if a.size:
        lo = int(a.min())
        hi = int(a.max())
        if lo < 0 or hi >= upper:
            bad = lo if lo < 0 else hi
            flat = int(np.flatnonzero(np.asarray(a).reshape(-1) == bad)[0])
            where = np.unravel_index(flat, a.shape)
            where_s = ", ".join(str(int(i)) for i in where)
            fail(
                name,
                f"hold ids in [0, {upper}) where {upper_what}",
                f"{bad} at [{where_s}]",
            )
    return np.asarray(a, dtype=np.int64)
