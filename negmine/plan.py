"""A mining plan: settings, checked inputs, their layout and the tier-3 search.

:func:`make_plan` does every check and every one-off computation of a run
(positive sets, the cluster layout and adjacency, the index, the cluster-
ordered copy of the sources, the distinct tier-3 queries) and chooses the
tier-3 back-end once. The blocks of :mod:`negmine.blocks` are pure functions
of ``(plan, g)``; executors map them. A plan pickles (for Ray workers): its
arrays travel as arrays, an index as its serialised bytes, and the back-end
is rebuilt on the other side from the same data, so it searches the same way.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from typing import Any

import numpy as np

from ._checks import fail, normalized_float32, take_rows
from .assemble import RNG_BLOCK
from .config import MiningConfig
from .index import SourceIndex, fingerprint
from .index.lists import ClusterLists
from .index.reduce import DEFAULT_RERANK
from .inputs import MiningInputs
from .layout import ClusterLayout, PositiveSets, adjacent_clusters
from .search.backends import (
    ExactBackend,
    FaissBackend,
    ProbeBackend,
    SearchContext,
    Tier3Backend,
)
from .search.common import QUERY_BLOCK, max_depth
from .search.probe import INTEGER_BLOCK, PROBE_BLAS_THREADS
from .search.products import resolve_products
from .vectors import RowRange, SourceVectors

__all__ = ["CLUSTERS_NPROBE", "CODES_RERANK", "CODES_T3_BLOCK", "COMPRESSED_RERANK",
           "PAIR_BLOCK", "REDUCED_RERANK", "T3_BLOCK", "MiningPlan", "make_plan",
           "raw_cluster_lists"]  # fmt: skip

#: Exact references a plan remembers (:meth:`MiningPlan.exact_reference`).
REFERENCES_KEPT = 4
#: Tier-3 queries per block (a multiple of the search's query block); with an
#: integer candidate pass (8-bit cluster lists) blocks are :data:`CODES_T3_BLOCK`.
T3_BLOCK = 4 * QUERY_BLOCK
#: Tier-3 queries per block over 8-bit cluster lists: one probe-kernel block
#: (:data:`~negmine.search.probe.INTEGER_BLOCK`), where each cluster's fixed cost
#: is spread over sixteen times the queries of :data:`T3_BLOCK`.
CODES_T3_BLOCK = INTEGER_BLOCK
#: Pairs per block (a multiple of the random-stream block).
PAIR_BLOCK = 64 * RNG_BLOCK
#: Clusters probed per query by a ``"clusters"`` index when no ``nprobe`` is given.
CLUSTERS_NPROBE = 32
#: Re-rank factor of fp16 ``"clusters"`` lists when no ``rerank`` is given.
COMPRESSED_RERANK = 4
#: Re-rank factor of 8-bit ``"clusters,SQ8"`` lists (an integer candidate pass) when
#: no ``rerank`` is given: at 1M sources it recalled what float32 lists recall at the
#: same ``nprobe`` (docs/benchmarks.md).
CODES_RERANK = 2
#: Re-rank factor of reduced ``"clusters,PCA<m>"`` lists when no ``rerank`` is given.
REDUCED_RERANK = DEFAULT_RERANK

IndexArg = SourceIndex | str | os.PathLike | None


class MiningPlan:
    """Everything a block needs, computed once. Build with :func:`make_plan`.

    Attributes
    ----------
    config : MiningConfig
    inputs : MiningInputs
    positives : PositiveSets
    layout : ClusterLayout
    index : SourceIndex or None
        The user's index, checked against the inputs; None for the built-in search.
    sorted_sources : float32 [S, d] or None
        Unit sources in layout order, for the built-in search.
    t3_cluster, t3_question : int64 [M]
        The distinct tier-3 queries (the cluster each skips, its question),
        grouped by cluster.
    pair_query : int64 [P]
        Each pair's tier-3 query.
    pool : object or None
        A stored pool of tier-3 candidates to read instead of searching (see
        :class:`negmine.pool.StoredPool`); None: search.
    products : dict
        The library of the search's products: ``setting``, ``library`` and, for
        ``"auto"``, its ``calibration`` (``config.products`` is the library).
    """

    def __init__(self, config, inputs, positives, layout, index, sorted_sources, t3_key):
        self.config: MiningConfig = config
        self.inputs: MiningInputs = inputs
        self.positives: PositiveSets = positives
        self.layout: ClusterLayout = layout
        self.index: SourceIndex | None = index
        self.sorted_sources: np.ndarray | None = sorted_sources
        n_q = inputs.n_questions
        uniq, self.pair_query = np.unique(t3_key, return_inverse=True)
        self.t3_cluster = uniq // n_q
        self.t3_question = uniq - self.t3_cluster * n_q
        self.pool: Any = None
        self.products: dict[str, Any] = resolve_products(config.products)
        #: Exact references searched so far (:meth:`exact_reference`), shared
        #: with the plans :meth:`with_search` makes of this one.
        self.references: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------ blocks
    @property
    def n_tier3(self) -> int:
        return int(self.t3_cluster.size)

    @property
    def n_tier3_blocks(self) -> int:
        return -(-self.n_tier3 // self.t3_block)

    @property
    def integer_pass(self) -> bool:
        """Whether tier 3 searches 8-bit cluster lists (the integer candidate pass)."""
        index = self.index
        return bool(index is not None and index.is_clusters and index.reduction is None
                    and _codec(index) == "SQ8")  # fmt: skip

    @property
    def t3_block(self) -> int:
        """Tier-3 queries per block: :data:`CODES_T3_BLOCK` where the index's
        lists are 8-bit codes (the integer candidate pass, whose results do not
        depend on how queries are grouped), else :data:`T3_BLOCK`."""
        return CODES_T3_BLOCK if self.integer_pass else T3_BLOCK

    def tier3_range(self, g: int) -> tuple[int, int]:
        """Tier-3 queries ``[c0, c1)`` of block ``g``."""
        b = self.t3_block
        return g * b, min((g + 1) * b, self.n_tier3)

    @property
    def n_pair_blocks(self) -> int:
        return -(-self.inputs.n_pairs // PAIR_BLOCK)

    def pair_range(self, g: int) -> tuple[int, int]:
        """Pairs ``[p0, p1)`` of block ``g``."""
        return g * PAIR_BLOCK, min((g + 1) * PAIR_BLOCK, self.inputs.n_pairs)

    @property
    def t3_keys(self) -> np.ndarray:
        """int64 [M]: ``cluster * Q + question`` of each tier-3 query, ascending."""
        return self.t3_cluster * self.inputs.n_questions + self.t3_question

    @property
    def pool_width(self) -> int:
        """Candidates a pool keeps per tier-3 query (``pool_depth`` within the
        corpus and the depth cap of one search call); 0 without a pool."""
        depth = self.config.pool_depth
        if depth is None:
            return 0
        return int(min(depth, max_depth(self.inputs.n_sources)))

    # ------------------------------------------------------------ search
    @cached_property
    def backend(self) -> Tier3Backend:
        """The tier-3 back-end, built once (on each side of a pickle)."""
        return _make_backend(self)

    @cached_property
    def raw_vectors(self) -> SourceVectors:
        """Unit vectors gathered from the raw source embeddings."""
        return SourceVectors(self.inputs.sources, self.positives)

    @cached_property
    def vectors(self) -> SourceVectors:
        """Unit source vectors from the fastest exact store this run holds."""
        if self.sorted_sources is not None:
            return SourceVectors.from_rows(
                self.inputs.sources, self.positives, self.sorted_sources, self.layout.rank
            )
        index = self.index
        if index is not None and index.is_exact:
            return SourceVectors.from_rows(
                self.inputs.sources, self.positives, index.vectors(), None
            )
        if index is not None and index.is_clusters and _codec(index) == "Flat":
            lists, rank = self.backend.lists, self.layout.rank
            return SourceVectors(
                self.inputs.sources, self.positives, lambda ids, out: lists.take(rank[ids], out)
            )
        # Compressed or foreign index: exact vectors come from the embeddings.
        return self.raw_vectors

    def exact_reference(
        self, queries: np.ndarray, rows: np.ndarray, cluster: np.ndarray, question: np.ndarray,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The back-end's exact top-``k`` (:meth:`Tier3Backend.reference`), remembered.

        Tuning and the recall measurement search the same even sample of
        tier-3 queries: the second finds the first's result here instead of
        searching every source again. Same arguments as ``reference``; the
        arrays returned are copies.
        """
        key = (int(k), *(_digest(a) for a in (queries, rows, cluster, question)))
        if key not in self.references:
            if len(self.references) >= REFERENCES_KEPT:
                self.references.pop(next(iter(self.references)))
            self.references[key] = self.backend.reference(queries, rows, cluster, question, k)
        return tuple(a.copy() for a in self.references[key])  # type: ignore[return-value]

    def exact_lists(self) -> ClusterLists:
        """float32 lists of every cluster, for exact reference searches."""
        index = self.index
        if index is None:  # the plan holds the cluster-ordered copy
            return ClusterLists.from_sorted(self.sorted_sources, self.layout.offsets)
        if index.is_clusters and _codec(index) == "Flat":
            return self.backend.lists
        # No full copy beside an index: each cluster gathered when searched.
        return raw_cluster_lists(self.inputs.sources, self.layout)

    def exact_rows(self) -> RowRange | None:
        """Unit vectors of all sources in id order for the exact reference, where
        the run holds no float32 copy of them (8-bit, reduced or compressed
        lists, a FAISS index other than a flat one): streamed from the
        embeddings (a memory-mapped file is read in order, a slice at a time,
        once per block of queries), which costs far less than gathering every
        cluster's scattered rows. None where :meth:`exact_lists` holds them."""
        index = self.index
        if index is None or index.is_exact or (index.is_clusters and _codec(index) == "Flat"):
            return None
        return self.raw_vectors.row_range()

    def search_params(self) -> dict[str, int]:
        """The search settings in force: nprobe, ef_search, rerank."""
        cfg, index = self.config, self.index
        if index is not None and index.is_exact:
            return {}
        params = {"nprobe": cfg.nprobe, "ef_search": cfg.ef_search, "rerank": cfg.rerank}
        if index is not None and index.is_clusters:
            if cfg.nprobe is None:
                subs = index.sub_list_count
                top = max(1, self.inputs.n_clusters - 1) if subs is None else subs
                params["nprobe"] = min(CLUSTERS_NPROBE, top)
            if cfg.rerank is None and _codec(index) != "Flat":
                params["rerank"] = (
                    REDUCED_RERANK if index.reduction is not None
                    else CODES_RERANK if _codec(index) == "SQ8"
                    else COMPRESSED_RERANK
                )  # fmt: skip
        return {k: int(v) for k, v in params.items() if v is not None}

    def describe_search(self) -> dict[str, Any]:
        """What the manifest and the run key record about tier 3's search."""
        index, params = self.index, self.search_params()
        if index is not None:
            desc = {k: v for k, v in index.manifest.items() if k != "versions"}
            sub = desc.get("clusters", {}).get("sub_lists")
            if sub is not None:  # C counts: the index file's sha256 already pins them
                sub = {k: v for k, v in sub.items() if k != "per_cluster"}
                desc["clusters"] = dict(desc["clusters"], sub_lists=sub)
            return dict(desc, exact=index.is_exact, search_params=params)
        if self.config.nprobe is not None:
            return {"factory": "clusters", "exact": False, "search_params": params,
                    "nprobe": self.config.nprobe,
                    "built": "in memory, cluster-ordered"}  # fmt: skip
        return {"factory": "Flat", "exact": True, "built": "in memory, cluster-ordered"}

    @property
    def approximate(self) -> bool:
        return not self.backend.exact

    def with_search(self, **settings: Any) -> MiningPlan:
        """This plan at other search settings (``nprobe``, ``ef_search``,
        ``rerank``, ``target_recall``): the inputs, layout and index are shared,
        the back-end is built anew, of the same kind for an index."""
        new = object.__new__(MiningPlan)
        new.__dict__.update(
            {k: v for k, v in self.__dict__.items() if k not in ("backend", "vectors")}
        )
        new.config = self.config.replace(**settings)
        return new

    # ------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in _DERIVED}
        if self.index is not None:
            state["index"] = _IndexBytes(self.index)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("index"), _IndexBytes):
            state["index"] = state["index"].load()
        self.__dict__.update(state)
        self.references = {}


_DERIVED = ("backend", "raw_vectors", "vectors", "references")


class _IndexBytes:
    """A :class:`SourceIndex` as FAISS's serialised bytes plus its manifest."""

    def __init__(self, index: SourceIndex):
        import faiss

        self.data = faiss.serialize_index(index.index)
        self.manifest = index.manifest

    def load(self) -> SourceIndex:
        import faiss

        return SourceIndex(faiss.deserialize_index(self.data), self.manifest)


def _codec(index: SourceIndex) -> str:
    """What a ``"clusters"`` index's lists hold: ``Flat``, ``SQfp16``, ``SQ8`` or ``PCA<m>``."""
    return index.manifest["clusters"]["codec"]


def sorted_sources(raw: Any, layout: ClusterLayout) -> np.ndarray:
    """Unit sources in layout order, float32 [S, d]."""
    order = layout.order
    out = np.empty((order.size, raw.shape[1]), dtype=np.float32)
    step = 65536
    for a in range(0, order.size, step):
        rows = order[a : a + step]
        normalized_float32(take_rows(raw, rows), out=out[a : a + rows.size])
    return out


def raw_cluster_lists(raw: Any, layout: ClusterLayout) -> ClusterLists:
    """Cluster lists gathered from the raw embeddings one cluster at a time."""
    order, offsets = layout.order, layout.offsets

    def block(c: int) -> np.ndarray:
        return normalized_float32(take_rows(raw, order[offsets[c] : offsets[c + 1]]))

    return ClusterLists(block, offsets, raw.shape[1])


def _digest(a: np.ndarray) -> tuple[Any, ...]:
    """An array's dtype, shape and a hash of its bytes."""
    a = np.ascontiguousarray(a)
    return (a.dtype.str, a.shape, hashlib.blake2b(a.view(np.uint8).reshape(-1)).hexdigest())


def _make_backend(plan: MiningPlan) -> Tier3Backend:
    ctx = SearchContext(
        plan.layout,
        plan.positives,
        plan.inputs.centroids,
        plan.raw_vectors,
        plan.exact_lists,
        plan.exact_rows,
    )
    desc, params, index = plan.describe_search(), plan.search_params(), plan.index
    lib = plan.config.products
    if index is None:
        vecs = plan.sorted_sources
        if plan.config.nprobe is None:
            return ExactBackend(ctx, desc, vecs, cluster_sorted=True, products=lib)
        lists = ClusterLists.from_sorted(vecs, plan.layout.offsets)
        return ProbeBackend(ctx, desc, lists, plan.config.nprobe, None, products=lib)
    if index.is_exact:
        return ExactBackend(ctx, desc, index.vectors(), cluster_sorted=False, products=lib)
    if index.is_clusters:
        lists = index.cluster_lists(plan.layout.offsets)
        project = index.projection() if index.reduction is not None else None
        return ProbeBackend(ctx, desc, lists, params["nprobe"], params.get("rerank"), project,
                            products=lib)  # fmt: skip
    index.set_search_params(nprobe=plan.config.nprobe, ef_search=plan.config.ef_search)
    return FaissBackend(ctx, desc, index, params.get("rerank"))


def _check_feasible(positives: PositiveSets, n_sources: int, n_neg: int) -> None:
    n_pos = positives.counts()
    worst = int(np.argmax(n_pos))
    if n_sources - n_pos[worst] < n_neg:
        fail(
            "n_neg",
            "leave enough non-positive sources for every question "
            f"(S - positives >= n_neg; question {worst} has {int(n_pos[worst])} positives "
            f"among S = {n_sources} sources)",
            n_neg,
            f"Use n_neg <= {n_sources - int(n_pos[worst])}.",
        )


def open_index(
    index: IndexArg, config: MiningConfig, inputs: MiningInputs, layout: ClusterLayout
) -> SourceIndex | None:
    """The user's index, loaded and checked against the inputs and the settings."""
    if index is None:
        for name in ("ef_search", "rerank"):
            v = getattr(config, name)
            if v is not None:
                fail(name, "come with an approximate `index`", v,
                     "Without an index the vectors searched are exact; drop it.")  # fmt: skip
        return None
    idx = index if isinstance(index, SourceIndex) else SourceIndex.load(index, mmap=True)
    idx.check_matches(fingerprint(inputs.sources), inputs.dim)
    if idx.is_clusters:
        idx.check_clusters(layout.source_cluster, inputs.centroids, layout.offsets, layout.order)
        if config.ef_search is not None:
            fail("ef_search", "apply to the index (a 'clusters' index has no graph)",
                 config.ef_search, "Drop it; use nprobe.")  # fmt: skip
    elif idx.is_exact:
        for name in ("nprobe", "ef_search", "rerank"):
            v = getattr(config, name)
            if v is not None:
                fail(name, "apply to the index (a flat index searches exactly)", v,
                     "Drop it, or pass an approximate index.")  # fmt: skip
    return idx


def make_plan(config: MiningConfig, inputs: MiningInputs, index: IndexArg = None) -> MiningPlan:
    """Check the inputs against the settings and prepare everything blocks read.

    Parameters
    ----------
    config : MiningConfig
    inputs : MiningInputs
        From :func:`negmine.inputs.check_inputs`.
    index : SourceIndex or path, optional
        A prebuilt source index; default: the built-in search (exact, or over
        the user's clusters with ``config.nprobe``).

    Raises
    ------
    ValueError
        When ``n_neg`` cannot be met, or the index does not match the inputs or
        the search settings.
    """
    positives = PositiveSets.from_pairs(inputs.pair_indices(), inputs.n_questions)
    _check_feasible(positives, inputs.n_sources, config.n_neg)
    adjacent = adjacent_clusters(inputs.raw_centroids, config.adjacent_k)
    layout = ClusterLayout.build(inputs.source_cluster, inputs.n_clusters, adjacent)
    idx = open_index(index, config, inputs, layout)
    srt = sorted_sources(inputs.sources, layout) if idx is None else None
    key = inputs.pair_cluster * inputs.n_questions + inputs.pair_question
    # "auto" is resolved once, here: the plan (and every copy a worker unpickles)
    # names the library, and the run key and the manifest record it.
    probes = idx.is_clusters if idx is not None else config.nprobe is not None
    threads = PROBE_BLAS_THREADS if probes else None
    products = resolve_products(config.products, inputs.dim, threads)
    plan = MiningPlan(config.replace(products=products["library"]), inputs, positives, layout,
                      idx, srt, key)  # fmt: skip
    plan.products = products
    return plan
