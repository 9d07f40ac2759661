"""``SourceIndex``: a FAISS index over the L2-normalised sources, and its store.

An index on disk is a directory holding ``index.faiss`` and ``manifest.json``.
The manifest records the FAISS factory string, metric, dimension, size, the
versions that built it, a fingerprint of the normalised source embeddings and
the size and sha256 of ``index.faiss``.

The store is built so that a reader can trust what it loads:

* :meth:`SourceIndex.load` checks the manifest and then the size and sha256 of
  ``index.faiss`` *before* FAISS parses the file, so a truncated or altered
  file raises ``ValueError`` instead of being parsed (FAISS would load a
  flipped byte in the vectors silently).
* :meth:`SourceIndex.save` writes the whole directory under a temporary name
  next to it and swaps it into place in one step, so a concurrent reader sees
  either the old complete index or the new complete one.
* :meth:`SourceIndex.check_matches` refuses an index built from other
  embeddings, naming both fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ._checks import check_embeddings, fail, normalized_float32, release_pages
from ._fs import fsync_dir, install_dir

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "MANIFEST_NAME",
    "MMAP_FACTORIES",
    "SourceIndex",
    "fingerprint",
    "read_manifest",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

#: File names inside an index directory.
INDEX_NAME = "index.faiss"
MANIFEST_NAME = "manifest.json"

#: Factory-string families whose data ``SourceIndex.load(path, mmap=True)``
#: memory-maps instead of copying into RAM (measured with faiss 1.15.1:
#: anonymous RSS stays flat and the file shows in ``/proc/self/maps``).
#: ``<n>``, ``<M>``, ``<m>`` and ``<b>`` stand for numbers; a pre-transform
#: such as ``"PCA32,"`` in front of an IVF index keeps it mapped. The fast-scan
#: variants (``"PQ16x4fs"``, ``"IVF64,PQ16x4fs"``) are always copied into RAM.
#: Every other family has only been seen copied into RAM. All but the IVF
#: families need a faiss with ``IO_FLAG_MMAP_IFC``; older ones map IVF lists only.
MMAP_FACTORIES: tuple[str, ...] = (
    "Flat",
    "HNSW<M>",
    "HNSW<M>,SQ<b>",
    "SQ<b>",
    "PQ<m>",
    "IVF<n>,Flat",
    "IVF<n>,SQ<b>",
    "IVF<n>,PQ<m>",
)

_FP_CHUNK = 1 << 16
_HASH_BLOCK = 1 << 22  # 4 MiB reads when hashing index.faiss
_LOAD_ATTEMPTS = 5  # a load that races a rebuild starts over at most this often
# index_bytes is checked when present (older manifests lack it; the sha256 still covers them)
_REQUIRED_KEYS = (
    "format_version",
    "factory",
    "metric",
    "d",
    "ntotal",
    "fingerprint",
    "index_sha256",
)


def _fingerprint_start(n: int, d: int):
    return hashlib.sha256(f"negmine-sources:{n}x{d}:".encode())


def fingerprint(source_embeddings: np.ndarray) -> str:
    """sha256 of the L2-normalised float32 sources ``[S, d]`` (shape included).

    Normalises chunk by chunk, so it never holds a second full copy.

    Parameters
    ----------
    source_embeddings : numpy.ndarray, float, shape [S, d]
        Raw source embeddings (finite, non-zero rows).

    Returns
    -------
    str
        ``"sha256:<64 hex digits>"``, equal to the ``fingerprint`` that
        :meth:`SourceIndex.build` records for the same sources.
    """
    n, d = source_embeddings.shape
    h = _fingerprint_start(n, d)
    for s in range(0, n, _FP_CHUNK):
        h.update(normalized_float32(source_embeddings[s : s + _FP_CHUNK]).data)
        release_pages(source_embeddings)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------


def _is_count(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower())


def _parse_manifest(raw: bytes, mpath: Path) -> dict[str, Any]:
    """Parse and check the bytes of a ``manifest.json``; errors name ``mpath``."""
    rebuild = "Rebuild the index with SourceIndex.build(...).save(path)."
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(str(mpath), "hold valid JSON", f"text that is not ({e})", rebuild)
    if not isinstance(obj, dict):
        fail(str(mpath), "hold a JSON object", f"a JSON {type(obj).__name__}", rebuild)
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        fail(
            str(mpath),
            f"hold the keys {', '.join(_REQUIRED_KEYS)}",
            f"a manifest without {', '.join(missing)}",
            "It was not written by SourceIndex.save or is damaged. " + rebuild,
        )
    if obj["format_version"] != FORMAT_VERSION:
        fail(
            str(mpath),
            f"have format_version {FORMAT_VERSION}",
            f"format_version {obj['format_version']!r}",
            "It was written by another negmine version. " + rebuild,
        )
    if obj["metric"] != "inner_product":
        fail(
            str(mpath),
            "have metric 'inner_product' (negmine searches normalised sources by inner product)",
            f"metric {obj['metric']!r}",
            rebuild,
        )
    bad = []
    if not isinstance(obj["factory"], str) or not obj["factory"]:
        bad.append(f"factory={obj['factory']!r}")
    for k in ("d", "ntotal"):
        if not _is_count(obj[k], 1):
            bad.append(f"{k}={obj[k]!r}")
    fp = obj["fingerprint"]
    if not (isinstance(fp, str) and fp.startswith("sha256:") and _is_hex64(fp[7:])):
        bad.append(f"fingerprint={fp!r}")
    if not _is_hex64(obj["index_sha256"]):
        bad.append(f"index_sha256={obj['index_sha256']!r}")
    if "index_bytes" in obj and not _is_count(obj["index_bytes"], 1):
        bad.append(f"index_bytes={obj['index_bytes']!r}")
    if bad:
        fail(
            str(mpath),
            "record a non-empty factory string, positive integers d and ntotal, "
            "a 'sha256:<hex>' fingerprint and the index file's sha256 and size",
            ", ".join(bad),
            "The manifest is damaged. " + rebuild,
        )
    return obj


def _missing_dir(p: Path) -> NoReturn:
    state = "a file" if p.exists() else "nothing"
    fail(
        "path",
        f"be an index directory holding {MANIFEST_NAME} and {INDEX_NAME}",
        f"'{p}' ({state} at that path)",
        "Build one with SourceIndex.build(...).save(path) or `negmine index build`.",
    )


def _missing_file(p: Path, name: str) -> NoReturn:
    fail(
        "path",
        f"be an index directory holding {MANIFEST_NAME} and {INDEX_NAME}",
        f"'{p}' without {name}",
        "The directory is not a complete index; rebuild it with SourceIndex.build(...).save(path).",
    )


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check only the JSON manifest of an index directory.

    ``index.faiss`` is not opened: use :meth:`SourceIndex.load` to verify it.

    Parameters
    ----------
    path : str or path-like
        An index directory written by :meth:`SourceIndex.save`.

    Returns
    -------
    dict
        The parsed manifest.

    Raises
    ------
    ValueError
        If ``path`` is not a directory, ``manifest.json`` is missing or not
        JSON, misses a required key, has another ``format_version`` or a
        metric other than ``inner_product``. The message names the path.
    """
    p = Path(path)
    if not p.is_dir():
        _missing_dir(p)
    mpath = p / MANIFEST_NAME
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        _missing_file(p, MANIFEST_NAME)
    return _parse_manifest(raw, mpath)


# --------------------------------------------------------------------------
# low-level file helpers
# --------------------------------------------------------------------------


def _sha256_fd(fd: int) -> str:
    """sha256 of a whole open file, read in 4 MiB blocks without moving its offset."""
    h = hashlib.sha256()
    pos = 0
    while True:
        if hasattr(os, "pread"):
            blk = os.pread(fd, _HASH_BLOCK, pos)
        else:  # pragma: no cover - platforms without pread
            os.lseek(fd, pos, os.SEEK_SET)
            blk = os.read(fd, _HASH_BLOCK)
        if not blk:
            break
        h.update(blk)
        pos += len(blk)
    return h.hexdigest()


def _hash_and_sync(path: Path) -> tuple[int, str]:
    """Size and sha256 of a freshly written file, which is fsynced on the way."""
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = _sha256_fd(fd)
        os.fsync(fd)
        return os.fstat(fd).st_size, digest
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _check_save_target(out: Path, overwrite: bool) -> bool:
    """Return whether ``out`` exists (as a replaceable index directory)."""
    if out.is_symlink():
        fail(
            "path",
            "be a real directory, not a symbolic link (saving replaces the directory itself)",
            f"'{out}' -> '{os.readlink(out)}'",
            "Pass the directory the link points to.",
            exc=FileExistsError,
        )
    if not out.exists():
        return False
    if not out.is_dir():
        fail(
            "path",
            "be a directory or a new path",
            f"'{out}', which is a file",
            exc=FileExistsError,
        )
    if not overwrite:
        fail(
            "path",
            "not exist when overwrite=False",
            f"'{out}', which exists",
            "Pass overwrite=True to replace that index, or choose another path.",
            exc=FileExistsError,
        )
    extra = sorted(set(os.listdir(out)) - {INDEX_NAME, MANIFEST_NAME})
    if extra:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        fail(
            "path",
            f"be a new path or an index directory holding only {INDEX_NAME} and "
            f"{MANIFEST_NAME} (saving replaces the whole directory)",
            f"'{out}' holding {shown}",
            "Choose a new or empty directory for the index.",
            exc=FileExistsError,
        )
    return True


# --------------------------------------------------------------------------
# opening one consistent generation of an index directory
# --------------------------------------------------------------------------


class _Replaced(Exception):
    """The index directory was replaced while it was being opened."""


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _open_dir(p: Path) -> int | None:
    if os.open not in os.supports_dir_fd:  # pragma: no cover - e.g. Windows
        if not p.is_dir():
            _missing_dir(p)
        return None
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        return os.open(p, flags)
    except (FileNotFoundError, NotADirectoryError):
        _missing_dir(p)


def _open_in(dfd: int | None, p: Path, name: str) -> int:
    if dfd is None:  # pragma: no cover - platforms without dir_fd
        return os.open(p / name, os.O_RDONLY)
    return os.open(name, os.O_RDONLY, dir_fd=dfd)


def _vanished(p: Path, dfd: int | None, name: str) -> NoReturn:
    """A file is missing: raise ``_Replaced`` if the directory was swapped, else fail."""
    if dfd is not None:
        try:
            now = os.stat(p)
        except FileNotFoundError:
            raise _Replaced from None
        if not _same_file(now, os.fstat(dfd)):
            raise _Replaced
    _missing_file(p, name)


def _open_generation(p: Path) -> tuple[dict[str, Any], int]:
    """Manifest and an open ``index.faiss`` descriptor from one directory generation.

    The directory is opened once and both files are opened relative to it, so
    a rebuild that swaps ``p`` meanwhile cannot pair an old manifest with a
    new index file. The caller closes the returned descriptor.
    """
    dfd = _open_dir(p)
    try:
        try:
            mfd = _open_in(dfd, p, MANIFEST_NAME)
        except FileNotFoundError:
            _vanished(p, dfd, MANIFEST_NAME)
        with os.fdopen(mfd, "rb") as f:
            raw = f.read()
        manifest = _parse_manifest(raw, p / MANIFEST_NAME)
        try:
            fd = _open_in(dfd, p, INDEX_NAME)
        except FileNotFoundError:
            _vanished(p, dfd, INDEX_NAME)
        return manifest, fd
    finally:
        if dfd is not None:
            os.close(dfd)


def _check_index_file(fd: int, target: Path, manifest: dict[str, Any], verify: bool) -> None:
    rebuild = "The file is truncated, damaged or was replaced; rebuild the index."
    size = os.fstat(fd).st_size
    expected = manifest.get("index_bytes")
    if expected is not None and size != expected:
        fail(
            str(target),
            f"have the size its {MANIFEST_NAME} records ({expected} bytes)",
            f"size {size} bytes vs expected {expected}",
            rebuild,
        )
    if verify:
        digest = _sha256_fd(fd)
        want = manifest["index_sha256"].lower()
        if digest != want:
            fail(
                str(target),
                f"have the sha256 its {MANIFEST_NAME} records",
                f"a sha256 mismatch: {digest} vs expected {want}",
                rebuild,
            )


def _old_sibling(p: Path) -> bool:
    """Whether a fallback swap has moved an old copy of ``p`` next to it."""
    prefix = f".{p.name}.old-"
    try:
        return any(n.startswith(prefix) for n in os.listdir(p.parent))
    except OSError:
        return False


def _fd_path(fd: int) -> str | None:
    """A path that opens the very file behind ``fd`` (Linux), or None."""
    p = f"/proc/self/fd/{fd}"
    return p if os.path.exists(p) else None


def _mmap_flags(factory: str) -> int:
    import faiss

    read_only = faiss.IO_FLAG_READ_ONLY
    ifc = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    if "IVF" in factory or ifc is None:
        return faiss.IO_FLAG_MMAP | read_only
    return ifc | read_only


# --------------------------------------------------------------------------
# SourceIndex
# --------------------------------------------------------------------------


class SourceIndex:
    """A FAISS inner-product index over L2-normalised source embeddings.

    Build with :meth:`build`, persist with :meth:`save`, reopen with :meth:`load`.

    Parameters
    ----------
    index : faiss.Index
        Holds the normalised sources, ids ``0..S-1``.
    manifest : dict
        Description, see the module docstring.
    mmapped : bool
        True when ``index`` memory-maps its file (set by :meth:`load`). Such an
        index is read-only: never ``add`` to it.
    """

    def __init__(self, index: Any, manifest: dict[str, Any], mmapped: bool = False):
        self.index = index
        self.manifest = manifest
        self.mmapped = mmapped

    @property
    def is_exact(self) -> bool:
        """True for a flat index (exact search)."""
        return self.manifest["factory"] == "Flat"

    @property
    def ntotal(self) -> int:
        """Number of indexed sources ``S``."""
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        """Embedding width ``d``."""
        return int(self.index.d)

    @property
    def is_clusters(self) -> bool:
        """True for a cluster-aligned index (spec ``"clusters"``)."""
        return "clusters" in self.manifest

    @classmethod
    def build(
        cls,
        source_embeddings: Any,
        spec: str = "flat",
        *,
        source_cluster_ids: Any = None,
        centroid_embeddings: Any = None,
        memory_budget: int | str | None = None,
        train_size: int = 262144,
        seed: int = 1234,
    ) -> SourceIndex:
        """Build an index over ``source_embeddings``.

        Parameters
        ----------
        source_embeddings : array-like, float, shape [S, d]
            Raw embeddings; a normalised float32 copy is indexed.
        spec : str
            ``"flat"`` (exact); ``"clusters"``, ``"clusters,SQ8"`` or
            ``"clusters,fp16"`` (inverted lists that are exactly the user's
            clusters, see Notes); ``"auto"`` (chosen by size and
            ``memory_budget``, the reason recorded in the manifest); or a FAISS
            factory string such as ``"HNSW32"`` or ``"IVF1024,Flat"``
            (inner-product metric).
        source_cluster_ids : int [S], optional
            Cluster of each source; required by ``"clusters"``.
        centroid_embeddings : float [C, d], optional
            The cluster centroids; required by ``"clusters"``.
        memory_budget : int or str, optional
            Bytes the index may take in RAM, e.g. ``"8G"``; for ``"auto"``.
            Default: half the machine's memory.
        train_size : int
            At most this many sources train a trainable index.
        seed : int
            Seed of the training sample.

        Returns
        -------
        SourceIndex

        Notes
        -----
        A ``"clusters"`` index is a FAISS ``IndexIVFFlat`` (or
        ``IndexIVFScalarQuantizer``) whose coarse quantizer is a flat index
        over the normalised centroids and whose list ``c`` holds the sources
        of cluster ``c``, added with their own cluster as list number
        (``add_preassigned``) in ascending source id. Tier 3 then probes the
        ``nprobe`` clusters nearest to a question other than the pair's own,
        reading each list as one contiguous block (:mod:`negmine.probe`).
        Compressed lists (SQ8: 1 byte per value, fp16: 2) are decoded block
        by block and the candidates re-ranked exactly from the embeddings.
        """
        import faiss

        src = check_embeddings(source_embeddings, "source_embeddings")
        n, d = src.shape
        t0 = time.perf_counter()
        kind = spec.strip().lower() if isinstance(spec, str) else None
        if kind is None:
            fail("spec", "be a string ('flat', 'clusters', 'auto' or a FAISS factory string)",
                 repr(spec), exc=TypeError)  # fmt: skip
        from .specs import build_clusters, choose_spec, parse_bytes

        has_clusters = source_cluster_ids is not None and centroid_embeddings is not None
        auto = None
        if kind == "auto":
            budget = parse_bytes(memory_budget, "memory_budget")
            chosen, reason = choose_spec(n, d, has_clusters, budget)
            auto = {"chose": chosen, "reason": reason, "memory_budget": budget}
            logger.info("auto index: %s (%s)", chosen, reason)
            kind, spec_used = chosen.lower(), chosen
        else:
            spec_used = spec
        extra: dict[str, Any] = {}
        if kind.startswith("clusters"):
            index, factory, extra = build_clusters(src, kind, source_cluster_ids,
                                                    centroid_embeddings)  # fmt: skip
            fp = fingerprint(src)
        else:
            factory = "Flat" if kind == "flat" else spec_used
            try:
                index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as e:
                fail("spec", "be 'flat', 'clusters', 'auto' or a valid FAISS factory string",
                     repr(spec), str(e).strip())  # fmt: skip
            if not index.is_trained:
                rng = np.random.default_rng(seed)
                take = np.sort(rng.choice(n, size=min(n, train_size), replace=False))
                index.train(normalized_float32(src[take]))
            h = _fingerprint_start(n, d)
            for s in range(0, n, _FP_CHUNK):
                blk = normalized_float32(src[s : s + _FP_CHUNK])
                h.update(blk.data)
                index.add(blk)
                release_pages(src)
            fp = "sha256:" + h.hexdigest()
        manifest = {
            "format_version": FORMAT_VERSION,
            "factory": factory,
            "spec": spec_used,
            "metric": "inner_product",
            "normalized": True,
            "d": int(d),
            "ntotal": int(n),
            "fingerprint": fp,
            "build": {"train_size": int(train_size), "seed": int(seed)},
            "build_seconds": round(time.perf_counter() - t0, 3),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        if auto is not None:
            manifest["auto"] = auto
        return cls(index, manifest)

    def vectors(self) -> np.ndarray:
        """The stored normalised sources without a copy (flat indexes only).

        Returns
        -------
        numpy.ndarray, float32, shape [S, d]
            A read-only view of the index's storage (for a memory-mapped index
            a write would fault, for any other it would corrupt the index).

        Raises
        ------
        TypeError
            If the index is not flat.
        """
        import faiss

        if not self.is_exact:
            raise TypeError("vectors() needs a flat index; this one is " + self.manifest["factory"])
        flat = faiss.downcast_index(self.index)
        ptr = flat.get_xb()
        out = faiss.rev_swig_ptr(ptr, self.ntotal * self.d).reshape(self.ntotal, self.d)
        out.flags.writeable = False
        return out

    def check_clusters(
        self, source_cluster_ids: np.ndarray, centroids: np.ndarray, offsets: np.ndarray,
        order: np.ndarray,
    ) -> None:  # fmt: skip
        """Refuse a ``"clusters"`` index built from other clusters.

        Parameters
        ----------
        source_cluster_ids : int64 [S]
        centroids : float32 [C, d]
            L2-normalised centroids in use.
        offsets : int64 [C + 1]
            Layout offsets of the clusters in use.
        order : int64 [S]
            Source ids in layout order (by cluster, then id).

        Raises
        ------
        ValueError
            If the number of clusters, the assignment of sources to clusters,
            the centroids or the lists' contents differ from those in use.
        """
        import faiss

        from .specs import assignment_fingerprint

        info = self.manifest["clusters"]
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
        ivf = faiss.extract_index_ivf(self.index)
        lists = ivf.invlists
        for c in range(n_c):
            size = lists.list_size(c)
            lo, hi = int(offsets[c]), int(offsets[c + 1])
            ids = faiss.rev_swig_ptr(lists.get_ids(c), size) if size else np.zeros(0, np.int64)
            if size != hi - lo or not np.array_equal(ids, order[lo:hi]):
                fail(str(self.manifest.get("spec")), "hold each cluster's sources in its list",
                     f"list {c} holds {size} ids, cluster {c} has {hi - lo} sources",
                     "The file does not match its manifest; rebuild the index.")  # fmt: skip

    def cluster_lists(self, offsets: np.ndarray):
        """The lists of a ``"clusters"`` index as :class:`negmine.probe.ClusterLists`.

        Flat lists are views of the index's storage (memory-mapped when the
        index was loaded with ``mmap=True``), or, where the storage is not
        4-byte aligned (memory-mapped files are not), copies into one reused
        aligned buffer; SQ8 and fp16 lists are decoded to float32. Either way a
        block is valid until the next call. Call :meth:`check_clusters` first.
        """
        import faiss

        from .search.probe import ClusterLists

        ivf = faiss.downcast_index(faiss.extract_index_ivf(self.index))
        lists, d = ivf.invlists, self.d
        codec = self.manifest["clusters"]["codec"]
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

        return ClusterLists(block, offsets, d, rows)

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set FAISS search parameters of this index for the next searches.

        Parameters
        ----------
        nprobe : int, optional
            Inverted lists probed per query (IVF indexes).
        ef_search : int, optional
            Search depth of an HNSW graph (HNSW indexes, or an HNSW quantizer).
        """
        import faiss

        ps = faiss.ParameterSpace()
        for name, v in (("nprobe", nprobe), ("efSearch", ef_search)):
            if v is None:
                continue
            try:
                ps.set_index_parameter(self.index, name, int(v))
            except RuntimeError:
                fail("nprobe" if name == "nprobe" else "ef_search",
                     f"apply to the index ({self.manifest['factory']} has no {name})", repr(v),
                     "Drop it, or use an index type that has it.")  # fmt: skip

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN by inner product.

        Parameters
        ----------
        queries : numpy.ndarray, float32, shape [n, d]
            L2-normalised queries.
        k : int
            Neighbours per query.

        Returns
        -------
        scores : numpy.ndarray, float32, shape [n, k]
        ids : numpy.ndarray, int64, shape [n, k]
            ``-1`` where fewer than ``k`` neighbours were found.
        """
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def check_matches(self, fp: str, d: int, what: str = "source_embeddings") -> None:
        """Refuse use with embeddings other than those the index was built from.

        Parameters
        ----------
        fp : str
            :func:`fingerprint` of the sources in use.
        d : int
            Their width.
        what : str
            Name of those sources in error messages.

        Raises
        ------
        ValueError
            If the widths differ (both are named), the index does not use the
            inner-product metric, or the fingerprints differ (both are named).
        """
        import faiss

        m = self.manifest
        if m["d"] != d:
            fail(
                what,
                f"have width d={m['d']} like the index",
                f"d={d}",
                f"The index was built from d={m['d']} embeddings; pass those or rebuild the index.",
            )
        metric = getattr(self.index, "metric_type", faiss.METRIC_INNER_PRODUCT)
        if m.get("metric") != "inner_product" or metric != faiss.METRIC_INNER_PRODUCT:
            fail(
                "index",
                "use the inner-product metric over normalised sources",
                f"manifest metric {m.get('metric')!r}, FAISS metric_type {metric}",
                "Rebuild the index with SourceIndex.build.",
            )
        if m["fingerprint"] != fp:
            fail(
                "index",
                f"be built from the `{what}` in use",
                f"an index built from other embeddings (index built from sources with "
                f"fingerprint {m['fingerprint']}; the sources in use have fingerprint {fp})",
                "Rebuild the index from these embeddings, or pass the ones it was built from.",
            )

    def save(self, path: str | os.PathLike[str], overwrite: bool = True) -> Path:
        """Write the index directory ``path`` (``index.faiss`` + ``manifest.json``) atomically.

        Parameters
        ----------
        path : str or path-like
            The index directory. Missing parents are created. An existing
            ``path`` must be an index directory (only ``index.faiss`` and
            ``manifest.json`` inside); it is replaced as a whole.
        overwrite : bool
            If False, refuse (``FileExistsError``) when ``path`` exists.

        Returns
        -------
        pathlib.Path
            ``path``.

        Raises
        ------
        FileExistsError
            If ``path`` exists and ``overwrite`` is False, is a file or a
            symbolic link, or is a directory holding other files.

        Notes
        -----
        Both files are written and fsynced in a temporary sibling directory
        ``.<name>.tmp-<pid>-<random>``, which is then put in place: renamed to
        ``path`` if it does not exist, otherwise exchanged with the old
        directory in one step by Linux ``renameat2(RENAME_EXCHANGE)``, after
        which the old directory is removed. A concurrent :meth:`load` therefore
        sees the old complete index or the new one, and a reader that already
        opened the old files keeps using them. Where the exchange is not
        available (not Linux, an old kernel, some file systems) the old
        directory is first renamed to ``.<name>.old-<pid>-<random>`` and the
        new one renamed into place: for the moment between those two renames
        ``path`` does not exist, which :meth:`load` rides out by retrying.
        On any error the temporary directory is removed and ``path`` is left
        as it was. Run one writer per path at a time.
        """
        import faiss

        out = Path(path)
        if out.name in ("", ".", ".."):
            fail("path", "name a directory", repr(str(path)), "Pass e.g. indexes/<name>.")
        existing = _check_save_target(out, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            faiss.write_index(self.index, str(tmp / INDEX_NAME))
            size, digest = _hash_and_sync(tmp / INDEX_NAME)
            manifest = dict(self.manifest, index_sha256=digest, index_bytes=size)
            text = json.dumps(
                manifest, indent=2, sort_keys=True, allow_nan=False, default=_json_default
            )
            _write_synced(tmp / MANIFEST_NAME, (text + "\n").encode("utf-8"))
            fsync_dir(tmp)
            install_dir(tmp, out, existing)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest = manifest
        return out

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], mmap: bool = False, *, verify: bool = True
    ) -> SourceIndex:
        """Open an index directory written by :meth:`save`, checking it first.

        Parameters
        ----------
        path : str or path-like
            The index directory.
        mmap : bool
            Memory-map the index file instead of reading it into RAM, where
            the index type allows (see Notes). The loaded index is read-only.
        verify : bool
            Check the sha256 of ``index.faiss`` against the manifest before
            FAISS reads it. Pass False only when this file was just verified:
            the size check still runs, but a damaged file of the right size
            then reaches FAISS.

        Returns
        -------
        SourceIndex

        Raises
        ------
        ValueError
            If ``path`` is not an index directory; ``manifest.json`` is
            missing, not JSON, misses a required key, has another
            ``format_version`` or a metric other than ``inner_product``;
            ``index.faiss`` is missing, has another size or sha256 than the
            manifest records, is refused by FAISS, or holds an index whose
            ``ntotal``, ``d`` or metric differ from the manifest. Each message
            names the file and what failed.

        Notes
        -----
        Both files are opened relative to one open handle of the directory
        and FAISS reads the very file that was hashed, so a rebuild that
        replaces ``path`` during the load cannot mix two versions; a file
        that vanishes because of such a rebuild makes the load start over.

        Memory-mapping, measured with faiss 1.15.1 (anonymous RSS and
        ``/proc/self/maps`` after loading a 200000 x 64 index): with
        ``IO_FLAG_MMAP | IO_FLAG_READ_ONLY`` only IVF inverted lists are
        mapped (``IVF<n>,Flat``, ``IVF<n>,SQ8``, ``IVF<n>,PQ<m>``, also behind
        a ``PCA`` pre-transform); ``Flat``, ``HNSW``, ``SQ`` and ``PQ`` are
        still copied into RAM. Those are mapped only by
        ``IO_FLAG_MMAP_IFC | IO_FLAG_READ_ONLY`` (HNSW keeps its small level
        tables in RAM), which also maps IVF lists. So IVF indexes are opened
        with ``IO_FLAG_MMAP | IO_FLAG_READ_ONLY`` (an ``add`` then raises) and
        all others with ``IO_FLAG_MMAP_IFC | IO_FLAG_READ_ONLY`` when faiss
        has it (an ``add`` then aborts the process, so treat the index as
        read-only). Fast-scan indexes (``...x4fs``) are copied either way.
        :data:`MMAP_FACTORIES` lists the mapped families.
        """
        p = Path(path)
        for attempt in range(_LOAD_ATTEMPTS):
            try:
                return cls._load_once(p, mmap, verify)
            except _Replaced:
                continue
            except ValueError:
                # Between the two renames of the fallback swap ``p`` is missing
                # for a moment while its old copy sits next to it.
                if attempt + 1 == _LOAD_ATTEMPTS or p.exists() or not _old_sibling(p):
                    raise
                time.sleep(0.01)
        fail(
            "path",
            "stay in place while it is loaded",
            f"'{p}' replaced {_LOAD_ATTEMPTS} times during one load",
            "Retry once the rebuild is done.",
        )

    @classmethod
    def _load_once(cls, p: Path, mmap: bool, verify: bool) -> SourceIndex:
        import faiss

        target = p / INDEX_NAME
        manifest, fd = _open_generation(p)
        try:
            _check_index_file(fd, target, manifest, verify)
            flags = _mmap_flags(manifest["factory"]) if mmap else 0
            src = _fd_path(fd)
            try:
                index = faiss.read_index(src or str(target), flags)
            except (RuntimeError, MemoryError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                fail(
                    str(target),
                    "hold a FAISS index that this faiss can read",
                    f"a file faiss.read_index refuses ({first})",
                    "Rebuild the index, or install the faiss version that wrote it "
                    f"({manifest.get('versions', {}).get('faiss', 'unknown')}).",
                )
            if src is None and not _same_file(os.stat(target), os.fstat(fd)):
                raise _Replaced  # pragma: no cover - only without /proc
        finally:
            os.close(fd)
        metric = getattr(index, "metric_type", None)
        if (
            index.ntotal != manifest["ntotal"]
            or index.d != manifest["d"]
            or metric != faiss.METRIC_INNER_PRODUCT
        ):
            fail(
                str(target),
                f"hold an index matching its {MANIFEST_NAME}",
                f"ntotal={index.ntotal}, d={index.d}, metric_type={metric} "
                f"(manifest: ntotal={manifest['ntotal']}, d={manifest['d']}, inner product)",
                "Rebuild the index.",
            )
        return cls(index, manifest, mmapped=mmap)


def _versions() -> dict[str, str]:
    import faiss

    from ._version import __version__

    return {"negmine": __version__, "faiss": faiss.__version__, "numpy": np.__version__}
