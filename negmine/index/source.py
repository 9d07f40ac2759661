"""``SourceIndex``: a FAISS index over the L2-normalised sources.

Build with :meth:`SourceIndex.build`, persist with :meth:`SourceIndex.save`,
reopen with :meth:`SourceIndex.load`. The manifest format is described in
:mod:`negmine.index.manifest`, the on-disk guarantees in :mod:`negmine.index.store`.
:meth:`SourceIndex.check_matches` refuses an index built from other
embeddings, naming both fingerprints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import fail
from .build import build_index
from .lists import ClusterLists, check_cluster_lists, ivf_cluster_lists, sub_lists
from .store import load_index, save_index

__all__ = ["MMAP_FACTORIES", "SourceIndex"]

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
        # Signed codes of 8-bit lists, converted once for every plan over this index.
        self._codes: dict[bytes, Any] = {}
        # Sub-lists as searches read them, read once for every plan over this index.
        self._sub: Any = None

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

    @property
    def sub_list_count(self) -> int | None:
        """Number of sub-lists of an 8-bit ``"clusters"`` index built with them
        (``"clusters,fast"``; ``nprobe`` then counts sub-lists), else None."""
        sub = self.manifest.get("clusters", {}).get("sub_lists")
        return None if sub is None else int(sub["count"])

    @property
    def reduction(self) -> dict[str, Any] | None:
        """The manifest's record of reduced lists (``"clusters,PCA<m>"``), or None."""
        return self.manifest.get("clusters", {}).get("reduction")

    def projection(self) -> np.ndarray:
        """The axes float32 [m, d] questions are projected on for reduced lists.

        Raises
        ------
        TypeError
            If the lists are not reduced.
        """
        if self.reduction is None:
            raise TypeError("projection() needs reduced lists; this index is "
                            + self.manifest["factory"])  # fmt: skip
        from .reduce import projection

        return projection(self.index)[0]

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
            ``"flat"`` (exact); ``"clusters"``, ``"clusters,fast"``,
            ``"clusters,SQ8"``, ``"clusters,SQ8,sub<n>"``, ``"clusters,fp16"``,
            ``"clusters,PCA<m>"`` or ``"clusters,PCA"``
            (inverted lists that are exactly the user's clusters, see Notes);
            ``"auto"`` (chosen by size and ``memory_budget``, the reason
            recorded in the manifest); or a FAISS
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
        8-bit lists (``"clusters,SQ8"``: 1 byte per value) are searched with
        integer products of quantized queries and the codes, fp16 lists (2
        bytes) decoded block by block; either way the candidates are re-ranked
        exactly from the embeddings. ``"clusters,fast"``, the recommended
        storage, is 8-bit lists with each cluster split by its own k-means into
        sub-lists of about 192 KiB of codes, 512 sources at d = 384
        (``"clusters,SQ8,sub<n>"``: about ``n``;
        :mod:`negmine.index.sublists`): the index's lists are then the
        sub-lists, cluster by cluster, its quantizer their centroids, and
        ``nprobe`` counts the sub-lists probed. Reduced lists (``"clusters,PCA<m>"``;
        ``"clusters,PCA"`` chooses ``m`` by the spectrum) hold each source
        centred and projected on the ``m``
        leading principal axes: the candidate pass multiplies ``m``-wide rows,
        and every candidate is re-scored exactly from the embeddings
        (:mod:`negmine.index.reduce`).
        """
        index, manifest = build_index(
            source_embeddings, spec, source_cluster_ids, centroid_embeddings, memory_budget,
            train_size, seed,
        )  # fmt: skip
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
        check_cluster_lists(self.index, self.manifest, source_cluster_ids, centroids, offsets,
                            order)  # fmt: skip

    def cluster_lists(self, offsets: np.ndarray) -> ClusterLists:
        """The lists of a ``"clusters"`` index as :class:`negmine.index.ClusterLists`.

        Flat lists are views of the index's storage (memory-mapped when the
        index was loaded with ``mmap=True``), or, where the storage is not
        4-byte aligned (memory-mapped files are not), copies into one reused
        aligned buffer; SQ8 and fp16 lists are decoded to float32. Either way a
        block is valid until the next call. 8-bit lists also offer their codes
        (``ClusterLists.codes``, converted once per list as searched and
        shared by every call with the same ``offsets``). Call
        :meth:`check_clusters` first.
        """
        if self._sub is None and self.sub_list_count is not None:
            self._sub = sub_lists(self.index, self.manifest)
        return ivf_cluster_lists(self.index, self.manifest, offsets, self._codes, self._sub)

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

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Write the index directory ``path`` (``index.faiss`` + ``manifest.json``) atomically.

        Parameters
        ----------
        path : str or path-like
            The index directory. Missing parents are created. An existing
            ``path`` must be an index directory (only ``index.faiss`` and
            ``manifest.json`` inside); it is replaced as a whole.
        overwrite : bool
            Replace an existing index at ``path``. By default an existing
            ``path`` is refused (``FileExistsError`` naming it), like mining
            outputs.

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
        ``path`` does not exist, which :meth:`load` rides out by waiting. A
        writer killed there leaves the complete old copy, which the next
        :meth:`save` or :meth:`load` of ``path`` (or a listing of its store)
        renames back. Temporary and set-aside directories of writers that
        no longer run are removed by the next :meth:`save`. On any error the
        temporary directory is removed and ``path`` is left as it was. Run
        one writer per path at a time.
        """
        self.manifest = save_index(self.index, self.manifest, Path(path), overwrite)
        return Path(path)

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
            FAISS reads it, unless ``verified.json`` records this very file
            unchanged since it last passed (same device, inode, size,
            modification and status-change times; see
            :mod:`negmine.index.verify`). Pass False only when this file was
            just verified: the size check still runs, but a damaged file of
            the right size then reaches FAISS.

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
        index, manifest = load_index(Path(path), mmap, verify)
        return cls(index, manifest, mmapped=mmap)
