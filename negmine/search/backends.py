"""Tier-3 back-ends: one search interface, chosen once per run.

A back-end answers "the ``k`` sources most similar to each query outside the
cluster it skips, its question's positives excluded" and nothing else:

* :class:`ExactBackend` — exact blocked products over all sources
  (cluster-ordered in memory, or a flat index's storage);
* :class:`ProbeBackend` — the ``nprobe`` nearest clusters' lists (float32 or
  8-bit codes searched with integer products, decoded fp16, or reduced),
  re-ranked exactly where the candidate pass's scores are not cosines;
* :class:`FaissBackend` — any other FAISS index: over-fetch, drop excluded
  hits, search again, optionally re-ranked exactly.

Every back-end also offers :meth:`Tier3Backend.reference`, the exact search
with the same exclusions, which recall is measured against (over many sources
without float32 lists, filtered through 8-bit codes and proven exact:
:mod:`negmine.search.refine`).
Which back-end a run uses is decided by :func:`negmine.plan.make_plan`, never
by the miner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..index.lists import ClusterLists
from ..layout import ClusterLayout, PositiveSets
from ..vectors import SourceVectors
from .exact import exact_outside_cluster, workspace_for
from .overfetch import overfetch_outside_cluster
from .probe import probe_outside_cluster
from .refine import REFINE_MIN_SOURCES, refined_outside_cluster

__all__ = ["ExactBackend", "FaissBackend", "ProbeBackend", "SearchContext", "Tier3Backend"]

ScoreCut = tuple[np.ndarray, np.ndarray]


class SearchContext:
    """What every back-end needs besides its own storage.

    Parameters
    ----------
    layout : ClusterLayout
    positives : PositiveSets
    centroids : float32 [C, d]
        L2-normalised centroids.
    raw_vectors : SourceVectors
        Exact unit vectors from the raw embeddings, for re-ranking.
    exact_lists : callable ``() -> ClusterLists``
        float32 lists of every cluster, for the exact reference search.
    exact_rows : callable ``() -> array or None``, optional
        Unit vectors of all sources in id order that the exact kernel slices
        (a :class:`~negmine.vectors.RowRange`), for the exact reference where
        the run holds no float32 lists: the reference then reads the
        embeddings in file order instead of gathering cluster by cluster.
        None (or returning None): the reference searches ``exact_lists``.
    """

    def __init__(
        self,
        layout: ClusterLayout,
        positives: PositiveSets,
        centroids: np.ndarray,
        raw_vectors: SourceVectors,
        exact_lists: Callable[[], ClusterLists],
        exact_rows: Callable[[], Any] | None = None,
    ):
        self.layout = layout
        self.positives = positives
        self.centroids = centroids
        self.raw_vectors = raw_vectors
        self.exact_lists = exact_lists
        self.exact_rows = exact_rows

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])


class Tier3Backend:
    """The search interface of tier 3.

    ``search(queries, rows, cluster, question, k, score_cut)`` takes L2-normalised
    question vectors ``queries`` float32 [Q', d], the row of each of the M queries
    in it (int64 [M]), the cluster each skips and its question id (int64 [M]),
    and returns ``(scores float32 [M, k], ids int64 [M, k])``, descending, ``-1``
    ids (``-inf`` scores) where a row ran short.
    """

    #: Whether :meth:`search` is exact.
    exact: bool = False

    def __init__(self, ctx: SearchContext, description: dict[str, Any]):
        self.ctx = ctx
        self.description = description

    def search(
        self, queries: np.ndarray, rows: np.ndarray, cluster: np.ndarray, question: np.ndarray,
        k: int, score_cut: ScoreCut | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Top-``k`` outside each query's cluster; ``score_cut`` as in
        :func:`negmine.search.exact.exact_outside_cluster` (a back-end that does
        not apply it leaves its counts negative)."""
        raise NotImplementedError

    def reference(
        self, queries: np.ndarray, rows: np.ndarray, cluster: np.ndarray, question: np.ndarray,
        k: int,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """The exact top-``k`` with the same exclusions (every other cluster probed).

        Without float32 lists in memory (8-bit, reduced or compressed lists, a
        FAISS index) the embeddings are read in id order: from
        :data:`~negmine.search.refine.REFINE_MIN_SOURCES` sources on through
        8-bit codes with a proof of exactness
        (:func:`~negmine.search.refine.refined_outside_cluster`, through
        torch's integer products: 8-bit lists mine with them too, other
        back-ends load torch for it, about 190 MB), below through the exact
        kernel. Float32 lists and the built-in probing keep the float32
        kernels: they read no embeddings file for it, and loading torch for
        the reference alone raised their peak RSS from 1.59x to 1.77x the
        sources at 1M.
        """
        ctx = self.ctx
        common = (queries, rows, cluster, question, ctx.layout, ctx.positives, k)
        rows_in_order = None if ctx.exact_rows is None else ctx.exact_rows()
        if rows_in_order is not None:
            if rows_in_order.shape[0] >= REFINE_MIN_SOURCES:  # integer filter, exact proof
                return refined_outside_cluster(rows_in_order, ctx.raw_vectors, *common)
            return exact_outside_cluster(rows_in_order, *common)
        return probe_outside_cluster(
            ctx.exact_lists(), ctx.centroids, queries, rows, cluster, question, ctx.layout,
            ctx.positives, k, nprobe=ctx.n_clusters,
        )  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What the manifest and the run key record about this search."""
        return dict(self.description)

    def release(self) -> None:
        """Free what the search keeps between calls (rebuilt when it searches again)."""

    def _args(self, queries, rows, cluster, question):
        return (queries, rows, cluster, question, self.ctx.layout, self.ctx.positives)


class ExactBackend(Tier3Backend):
    """Exact blocked products over ``vectors`` float32 [S, d] (layout order when
    ``cluster_sorted``, else source-id order)."""

    exact = True

    def __init__(self, ctx, description, vectors: np.ndarray, cluster_sorted: bool,
                 products: str = "numpy"):  # fmt: skip
        super().__init__(ctx, description)
        self.vectors = vectors
        self.cluster_sorted = cluster_sorted
        self.products = products
        self._workspace: np.ndarray | None = None

    def search(self, queries, rows, cluster, question, k, score_cut=None):
        if self._workspace is None:
            self._workspace = workspace_for(self.vectors.shape[0])
        return exact_outside_cluster(
            self.vectors, *self._args(queries, rows, cluster, question), k,
            cluster_sorted=self.cluster_sorted, workspace=self._workspace, score_cut=score_cut,
            products=self.products,
        )  # fmt: skip


class _Reranked(Tier3Backend):
    """A back-end that fetches ``rerank * k`` candidates and keeps the best ``k``
    by exact cosine (always, when its own scores are not cosines)."""

    #: Whether the candidate pass's scores are exact cosines.
    exact_scores: bool = True

    def __init__(self, ctx, description, rerank: int | None):
        super().__init__(ctx, description)
        self.rerank = rerank

    def search(self, queries, rows, cluster, question, k, score_cut=None):
        r = self.rerank or 1
        d, i = self._candidates(queries, rows, cluster, question, k * r)
        if r > 1 or not self.exact_scores:
            d, i = self._rescore(queries, rows, i, k)
        return d, i

    def _candidates(self, queries, rows, cluster, question, k):
        raise NotImplementedError

    def _rescore(
        self, queries: np.ndarray, rows: np.ndarray, ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep the ``k`` best of candidates ``ids`` [M, k'] by exact cosine to
        ``queries[rows]``, descending, ties by lower id.

        The cosines come from the raw embeddings
        (:meth:`~negmine.vectors.SourceVectors.to_queries`): memory-mapped ones
        are read in file order a window at a time, so the resident set grows by
        a window, not by the pages the candidates touch.
        """
        sc = self.ctx.raw_vectors.to_queries(queries, rows, ids)
        id_key = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
        order = np.lexsort((id_key, -sc), axis=-1)[:, :k]
        return np.take_along_axis(sc, order, 1), np.take_along_axis(ids, order, 1)


class ProbeBackend(_Reranked):
    """The ``nprobe`` nearest clusters other than each query's own, over ``lists``
    (reduced to the axes ``project`` [m, d] when given: then every candidate is
    re-scored exactly)."""

    def __init__(
        self, ctx, description, lists: ClusterLists, nprobe: int, rerank: int | None,
        project: np.ndarray | None = None, products: str = "numpy",
    ):  # fmt: skip
        super().__init__(ctx, description, rerank)
        self.lists = lists
        self.nprobe = nprobe
        self.project = project
        # Reduced rows and 8-bit codes rank candidates; only a re-rank gives cosines.
        self.exact_scores = project is None and lists.codes is None
        self.products = products

    def release(self) -> None:
        self.lists.release()

    def _candidates(self, queries, rows, cluster, question, k):
        return probe_outside_cluster(
            self.lists, self.ctx.centroids, queries, rows, cluster, question, self.ctx.layout,
            self.ctx.positives, k, nprobe=self.nprobe, project=self.project,
            products=self.products,
        )  # fmt: skip


class FaissBackend(_Reranked):
    """Any FAISS index, at the search parameters already set on it."""

    def __init__(self, ctx, description, index: Any, rerank: int | None):
        super().__init__(ctx, description, rerank)
        self.index = index

    def _candidates(self, queries, rows, cluster, question, k):
        return overfetch_outside_cluster(
            self.index.search, self.index.ntotal, *self._args(queries, rows, cluster, question), k
        )
