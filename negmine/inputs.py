"""The six input arrays of a mining run, checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import as_numpy, check_embeddings, check_ids, fail, normalized_float32

__all__ = ["MiningInputs", "check_inputs"]


@dataclass(frozen=True, eq=False)
class MiningInputs:
    """Checked inputs of a mining run.

    Attributes
    ----------
    sources : array [S, d]
        The source embeddings as given (numpy array or memmap, any float dtype);
        normalised copies are made where needed, never in place.
    questions : array [Q, d]
        The question embeddings as given.
    centroids : float32 [C, d]
        L2-normalised centroids.
    raw_centroids : array [C, d]
        The centroids as given (the adjacency search normalises its own copy).
    pair_question, pair_source, pair_cluster : int64 [P]
        The question, source and cluster of each pair.
    source_cluster : int64 [S]
        The cluster of each source.
    """

    sources: Any
    questions: Any
    centroids: np.ndarray
    raw_centroids: Any
    pair_question: np.ndarray
    pair_source: np.ndarray
    pair_cluster: np.ndarray
    source_cluster: np.ndarray

    @property
    def n_sources(self) -> int:
        return int(self.sources.shape[0])

    @property
    def n_questions(self) -> int:
        return int(self.questions.shape[0])

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_pairs(self) -> int:
        return int(self.pair_question.shape[0])

    @property
    def dim(self) -> int:
        return int(self.sources.shape[1])

    def pair_indices(self) -> np.ndarray:
        """int64 [P, 2]: (question, source) of each pair."""
        return np.stack([self.pair_question, self.pair_source], axis=1)


def _check_pairs(pair_indices: Any, n_q: int, n_s: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = as_numpy(pair_indices, "pair_indices")
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        fail("pair_indices", "have shape [P, 2] (question, source)", f"shape {list(pairs.shape)}")
    if pairs.shape[0] == 0:
        fail("pair_indices", "hold at least one pair", "shape [0, 2]")
    q_ids = check_ids(pairs[:, 0], "pair_indices[:, 0]", ndim=1, upper=n_q,
                      upper_what="Q = len(question_embeddings)")  # fmt: skip
    s_ids = check_ids(pairs[:, 1], "pair_indices[:, 1]", ndim=1, upper=n_s,
                      upper_what="S = len(source_embeddings)")  # fmt: skip
    return q_ids, s_ids


def _check_cluster_ids(x: Any, name: str, n: int, n_c: int, what: str) -> np.ndarray:
    ids = check_ids(x, name, ndim=1, upper=n_c, upper_what="C = len(centroid_embeddings)")
    if ids.shape[0] != n:
        fail(name, f"have one entry per {what}", f"length {ids.shape[0]}")
    return ids


def check_inputs(
    source_embeddings: Any,
    question_embeddings: Any,
    centroid_embeddings: Any,
    pair_indices: Any,
    pair_cluster_ids: Any,
    source_cluster_ids: Any,
) -> MiningInputs:
    """Check the six arrays of a mining run and return them as :class:`MiningInputs`.

    Parameters
    ----------
    source_embeddings : float [S, d]
        numpy array, memmap or torch tensor.
    question_embeddings : float [Q, d]
    centroid_embeddings : float [C, d]
    pair_indices : int [P, 2]
        (question index, source index) of each positive pair.
    pair_cluster_ids : int [P]
        Cluster of each pair, in ``[0, C)``.
    source_cluster_ids : int [S]
        Cluster of each source, in ``[0, C)``.

    Raises
    ------
    ValueError, TypeError
        Naming the argument, the bad value and the fix.
    """
    src = check_embeddings(source_embeddings, "source_embeddings")
    n_s, d = src.shape
    qry = check_embeddings(question_embeddings, "question_embeddings", d, "source_embeddings")
    cen = check_embeddings(centroid_embeddings, "centroid_embeddings", d, "source_embeddings")
    q_ids, s_ids = _check_pairs(pair_indices, qry.shape[0], n_s)
    n_p, n_c = q_ids.shape[0], cen.shape[0]
    pcl = _check_cluster_ids(pair_cluster_ids, "pair_cluster_ids", n_p, n_c, f"pair (P = {n_p})")
    scl = _check_cluster_ids(
        source_cluster_ids, "source_cluster_ids", n_s, n_c, f"source (S = {n_s})"
    )
    return MiningInputs(src, qry, normalized_float32(cen), cen, q_ids, s_ids, pcl, scl)
