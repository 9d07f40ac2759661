"""Cluster lists: the sources of each cluster as one contiguous block, and their storage.

A :class:`ClusterLists` reads cluster ``c``'s rows either from one
cluster-sorted matrix or from the inverted lists of a cluster-aligned FAISS
index (spec ``"clusters"``), memory-mapped or not. It is the storage view the
probe kernels search; it holds no search code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .._checks import fail
from .._order import stable_order
from .manifest import assignment_fingerprint, fingerprint
from .sublists import SubLists

__all__ = ["ClusterLists", "check_cluster_lists", "ivf_cluster_lists", "sub_lists"]


class ClusterLists:
    """The L2-normalised sources of each cluster as one contiguous float32 block.

    Positions follow the cluster layout: cluster ``c`` holds the positions
    ``offsets[c]:offsets[c + 1]``, and position ``i`` is source
    ``layout.order[i]``. The blocks may live in one cluster-sorted matrix
    (:meth:`from_sorted`) or in the inverted lists of a cluster-aligned FAISS
    index, memory-mapped or not (:func:`ivf_cluster_lists`).

    Parameters
    ----------
    block : callable ``c -> float32 [n_c, d]``
        Cluster ``c``'s rows (never written), valid at least until the next call.
    offsets : int64 [C + 1]
        Layout offsets of the clusters.
    d : int
        Embedding width.
    rows : callable ``(c, i int64 [m]) -> float32 [m, d]``, optional
        Rows ``i`` of cluster ``c`` (positions within the cluster), without
        materialising the whole block. Default: ``block(c)[i]``.
    codes : callable ``c -> int8 [n_c, d]``, optional
        Lists of 8-bit codes (``"clusters,SQ8"``): cluster ``c``'s codes, each
        minus 128 (never written). Row ``i`` decodes to
        ``low + (codes[i] + 128.5) * step``, so for a query ``q`` the decoded
        inner products are, up to a constant of the query, ``codes @ (q * step)``:
        integer products rank them.
    step : float32 [d], optional
        Per-dimension step of ``codes`` (given with it).
    """

    def __init__(
        self,
        block: Callable[[int], np.ndarray],
        offsets: np.ndarray,
        d: int,
        rows: Callable[[int, np.ndarray], np.ndarray] | None = None,
        codes: Callable[[int], np.ndarray] | None = None,
        step: np.ndarray | None = None,
    ):
        self.block = block
        self.offsets = offsets
        self.d = int(d)
        self.rows = rows if rows is not None else (lambda c, i: block(c)[i])
        self.codes = codes
        self.step = step
        #: Frees what the lists keep between searches (8-bit lists: their signed
        #: codes, converted again when next searched).
        self.release: Callable[[], Any] = lambda: None
        #: The sub-lists these lists are (then list ``g`` is sub-list ``g`` and
        #: positions are sub-list positions), or None where lists are clusters.
        self.sub: SubLists | None = None
        #: What owns the memory the callables read (a FAISS index), kept alive
        #: as long as the lists are.
        self.owner: Any = None

    @classmethod
    def from_sorted(cls, vectors: np.ndarray, offsets: np.ndarray) -> ClusterLists:
        """Blocks that are slices of ``vectors`` float32 [S, d] in layout order."""
        return cls(lambda c: vectors[offsets[c] : offsets[c + 1]], offsets, vectors.shape[1])

    def take(self, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Gather rows by layout position.

        Parameters
        ----------
        positions : int64 [n]
            Layout positions, each in ``[0, S)``.
        out : float32 [n, d], optional

        Returns
        -------
        float32 [n, d]
        """
        positions = np.asarray(positions, dtype=np.int64)
        if out is None:
            out = np.empty((positions.size, self.d), dtype=np.float32)
        cl = np.searchsorted(self.offsets, positions, side="right") - 1
        by_c = stable_order(cl)
        bounds = np.searchsorted(cl[by_c], np.arange(self.offsets.size))
        for c in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
            sel = by_c[bounds[c] : bounds[c + 1]]
            out[sel] = self.rows(c, positions[sel] - self.offsets[c])
        return out


def check_cluster_lists(
    index: Any,
    manifest: dict[str, Any],
    source_cluster_ids: np.ndarray,
    centroids: np.ndarray,
    offsets: np.ndarray,
    order: np.ndarray,
) -> None:
    """Refuse a ``"clusters"`` index built from other clusters.

    See :meth:`negmine.index.SourceIndex.check_clusters`.
    """
    import faiss

    info = manifest["clusters"]
    n_c = centroids.shape[0]
    if info["n_clusters"] != n_c:
        fail("index", f"be built over the C = {n_c} clusters in use",
             f"an index over {info['n_clusters']} clusters",
             "Rebuild it over these clusters: --spec clusters.")  # fmt: skip
    got = assignment_fingerprint(source_cluster_ids, n_c)
    if info["assignment"] != got:
        fail("index", "be built with the `source_cluster_ids` in use",
             f"an index built from another cluster assignment ({info['assignment']}; "
             f"in use: {got})", "Rebuild it with these clusters.")  # fmt: skip
    got = fingerprint(centroids)
    if info["centroids"] != got:
        fail("index", "be built with the `centroid_embeddings` in use",
             f"an index built from other centroids ({info['centroids']}; in use: {got})",
             "Rebuild it with these centroids.")  # fmt: skip
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    if "sub_lists" in info:
        _check_sub_lists(ivf, manifest, source_cluster_ids, offsets)
        return
    for c in range(n_c):
        size = lists.list_size(c)
        lo, hi = int(offsets[c]), int(offsets[c + 1])
        ids = faiss.rev_swig_ptr(lists.get_ids(c), size) if size else np.zeros(0, np.int64)
        if size != hi - lo or not np.array_equal(ids, order[lo:hi]):
            fail(str(manifest.get("spec")), "hold each cluster's sources in its list",
                 f"list {c} holds {size} ids, cluster {c} has {hi - lo} sources",
                 "The file does not match its manifest; rebuild the index.")  # fmt: skip


def _list_ids(ivf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sizes int64 [nlist] and ids int64 [ntotal] of an IVF index's lists, in list order."""
    import faiss

    lists = ivf.invlists
    sizes = np.array([lists.list_size(g) for g in range(ivf.nlist)], dtype=np.int64)
    ids = np.empty(int(sizes.sum()), dtype=np.int64)
    at = 0
    for g in np.flatnonzero(sizes).tolist():
        n = int(sizes[g])
        ids[at : at + n] = faiss.rev_swig_ptr(lists.get_ids(g), n)
        at += n
    return sizes, ids


def _check_sub_lists(
    ivf: Any, manifest: dict[str, Any], source_cluster_ids: np.ndarray, offsets: np.ndarray
) -> None:
    """Refuse sub-lists that do not split the clusters in use: each list must hold
    sources of one cluster, the lists of cluster ``c`` (``per_cluster``, in turn)
    all of its sources, each once, ascending id within a list."""
    per = np.asarray(manifest["clusters"]["sub_lists"]["per_cluster"], dtype=np.int64)
    spec = str(manifest.get("spec"))
    rebuild = "The file does not match its manifest; rebuild the index."
    if per.size != offsets.size - 1 or int(per.sum()) != int(ivf.nlist):
        fail(spec, "hold one sub-list per entry of its manifest's per_cluster",
             f"{int(ivf.nlist)} lists for {int(per.sum())} sub-lists", rebuild)  # fmt: skip
    sizes, ids = _list_ids(ivf)
    owner = np.repeat(np.repeat(np.arange(per.size), per), sizes)
    n = source_cluster_ids.shape[0]
    ok = ids.size == n and bool(((ids >= 0) & (ids < n)).all())
    ok = ok and np.array_equal(np.bincount(ids, minlength=n), np.ones(n, dtype=np.int64))
    ok = ok and np.array_equal(source_cluster_ids[ids], owner)
    starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
    ok = ok and bool((np.diff(ids)[(np.arange(1, ids.size) - starts[1:]) > 0] > 0).all())
    if not ok:
        fail(spec, "hold each cluster's sources in its sub-lists, each once, ascending id",
             "lists whose sources are not those of their clusters", rebuild)  # fmt: skip


def sub_lists(index: Any, manifest: dict[str, Any]) -> SubLists:
    """The sub-lists of an 8-bit ``"clusters"`` index built with them."""
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    per = np.asarray(manifest["clusters"]["sub_lists"]["per_cluster"], dtype=np.int64)
    sizes, ids = _list_ids(ivf)
    offsets = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    first = np.zeros(per.size + 1, dtype=np.int64)
    np.cumsum(per, out=first[1:])
    g, d = int(ivf.nlist), int(ivf.d)
    quant = faiss.downcast_index(ivf.quantizer)
    cen = np.array(faiss.rev_swig_ptr(quant.get_xb(), g * d), dtype=np.float32).reshape(g, d)
    codes = ivf.sq.compute_codes(cen) if g else np.zeros((0, d), dtype=np.uint8)
    return SubLists(offsets, ids, first, (codes ^ 0x80).view(np.int8))


def ivf_cluster_lists(
    index: Any, manifest: dict[str, Any], offsets: np.ndarray, cache: dict | None = None,
    sub: SubLists | None = None,
) -> ClusterLists:  # fmt: skip
    """The lists of a ``"clusters"`` index; see ``SourceIndex.cluster_lists``.

    ``cache`` (a dict kept with the index) holds 8-bit lists' signed codes, so
    that the lists of every plan over the index convert each list once. Over
    an index with sub-lists the lists returned are the sub-lists (``offsets``
    is then unused), with :class:`SubLists` as their ``sub`` (``sub``, when
    given, else read from the index).
    """
    import faiss

    if sub is None and "sub_lists" in manifest["clusters"]:
        sub = sub_lists(index, manifest)
    if sub is not None:
        offsets = sub.offsets

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    lists, d = ivf.invlists, int(ivf.d)  # reduced lists are narrower than the index
    codec = manifest["clusters"]["codec"]
    if codec.startswith("PCA"):
        codec = "Flat"  # float32 values, of the reduced width
    code_size = int(ivf.code_size)

    sizes = np.diff(offsets)
    aligned = np.empty((int(sizes.max()) if sizes.size else 0, d), dtype=np.float32)

    def block(c: int) -> np.ndarray:
        n = int(offsets[c + 1] - offsets[c])
        if n == 0:
            return np.zeros((0, d), dtype=np.float32)
        raw = faiss.rev_swig_ptr(lists.get_codes(c), n * code_size)
        if codec == "Flat":
            view = raw.view(np.float32).reshape(n, d)
            if view.flags.aligned:
                return view
            # A memory-mapped file puts the lists at odd byte offsets, and
            # numpy multiplies unaligned arrays without BLAS (2-3x slower):
            # an aligned copy costs a small fraction of the product.
            out = aligned[:n]
            out.view(np.uint8).reshape(-1)[:] = raw
            return out
        if codec == "SQfp16":
            return raw.view(np.float16).reshape(n, d).astype(np.float32)
        return ivf.sq.decode(raw.reshape(n, code_size))

    def rows(c: int, i: np.ndarray) -> np.ndarray:
        n = int(offsets[c + 1] - offsets[c])
        raw = faiss.rev_swig_ptr(lists.get_codes(c), n * code_size).reshape(n, code_size)
        picked = raw[i]  # a fresh (aligned) array of the chosen codes only
        if codec == "Flat":
            return picked.view(np.float32)
        if codec == "SQfp16":
            return picked.view(np.float16).astype(np.float32)
        return ivf.sq.decode(picked)

    if codec != "SQ8" or ivf.sq.qtype != faiss.ScalarQuantizer.QT_8bit or code_size != d:
        out = ClusterLists(block, offsets, d, rows)
        out.owner = index  # the lists' memory is the index's
        return out
    trained = faiss.vector_to_array(ivf.sq.trained).astype(np.float32)
    step = trained[d:] / 255  # QT_8bit decodes code u of dimension j to low_j + (u + 0.5) step_j
    # Each list is converted once, when first searched, into one array of int8
    # codes in layout order (a quarter of the float32 sources at most; pages are
    # taken only as lists are converted).
    cache = {} if cache is None else cache
    key = np.ascontiguousarray(offsets, dtype=np.int64).tobytes()
    mapped = _read_only_file_maps()

    lock = threading.Lock()  # the probe kernel scans on several threads

    def codes(c: int) -> np.ndarray:
        with lock:
            if key not in cache:
                cache.clear()  # one layout at a time
                cache[key] = (np.empty((int(offsets[-1]), d), dtype=np.int8),
                              np.zeros(len(offsets) - 1, dtype=bool))  # fmt: skip
            signed, ready = cache[key]
            lo, hi = int(offsets[c]), int(offsets[c + 1])
            out = signed[lo:hi]
            if not ready[c] and hi > lo:
                raw = faiss.rev_swig_ptr(lists.get_codes(c), (hi - lo) * d).reshape(hi - lo, d)
                np.bitwise_xor(raw, 0x80, out=out.view(np.uint8))  # u - 128, as int8
                _drop_mapped(raw, mapped)  # a memory-mapped index is not read again
            ready[c] = True
        return out

    out = ClusterLists(block, offsets, d, rows, codes, step)
    out.owner = index
    out.sub = sub
    out.release = lambda: cache.pop(key, None)
    return out


def _read_only_file_maps() -> list[tuple[int, int]]:
    """Address ranges of this process's read-only file mappings (Linux; empty elsewhere)."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5].startswith("/") and "w" not in parts[1]:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    out.append((lo, hi))
    except (OSError, ValueError):
        return []
    return out


def _drop_mapped(a: np.ndarray, maps: list[tuple[int, int]]) -> None:
    """Drop from this process the pages of ``a`` if they lie in a read-only file
    mapping (a memory-mapped index): the kernel reads them back from the file if
    they are touched again. Anything else (memory of the process's own, which
    this would zero) is left alone."""
    import ctypes
    import mmap

    start, size = a.ctypes.data, a.nbytes
    if not size or not any(lo <= start and start + size <= hi for lo, hi in maps):
        return
    page = mmap.PAGESIZE
    lo = start // page * page
    hi = -(-(start + size) // page) * page
    try:
        libc = ctypes.CDLL(None)
        libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), mmap.MADV_DONTNEED)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
