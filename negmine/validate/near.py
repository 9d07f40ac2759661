"""Near-duplicates of a question's positives, recomputed from the source embeddings."""

from __future__ import annotations

import numpy as np

from .._checks import normalized_float32, take_rows
from ..layout import csr_expand

__all__ = ["NEAR_TOLERANCE", "NearDuplicates"]

#: Cosine round-off allowed around ``near_duplicate_threshold``.
NEAR_TOLERANCE = 1e-6
_ROWS = 16384


class NearDuplicates:
    """Cosines of sources to the positives of questions (dense question ranks)."""

    def __init__(
        self, sources: np.ndarray, threshold: float, offsets: np.ndarray, pos_sources: np.ndarray
    ):
        self.sources = sources
        self.threshold = threshold
        self.offsets = offsets
        self.pos_sources = pos_sources

    def _vecs(self, ids: np.ndarray) -> np.ndarray:
        return normalized_float32(take_rows(self.sources, ids))

    def row_max(self, ids: np.ndarray, qd: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Largest cosine of ``ids[r, j]`` [R, K] (valid source ids) to a positive of
        row r's question ``qd[r]``, where ``mask``; -inf elsewhere. Each id and
        positive is gathered once per row block."""
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        for r0 in range(0, ids.shape[0], _ROWS):
            r1 = min(r0 + _ROWS, ids.shape[0])
            starts = self.offsets[qd[r0:r1]]
            counts = self.offsets[qd[r0:r1] + 1] - starts
            slots = [
                (rows, self._vecs(self.pos_sources[starts[rows] + j]))
                for j in range(int(counts.max(initial=0)))
                for rows in [np.flatnonzero(counts > j)]
            ]
            for c in range(ids.shape[1]):
                vec = self._vecs(ids[r0:r1, c])
                best = out[r0:r1, c]
                for rows, pvec in slots:
                    cos = np.einsum("ij,ij->i", vec[rows] if rows.size < r1 - r0 else vec, pvec)
                    best[rows] = np.maximum(best[rows], cos)
        out[~mask] = -np.inf
        return out

    def near_counts(
        self, qd: np.ndarray, clusters: np.ndarray, src_cluster: np.ndarray, adj: np.ndarray
    ) -> np.ndarray:
        """Per row: sources of the distant clusters of ``clusters[r]`` whose cosine to
        a positive of question ``qd[r]`` is above ``threshold - NEAR_TOLERANCE``
        (a positive counts too: its cosine to itself is 1). One product of the
        distant sources with the rows' positives per cluster, not per row."""
        out = np.zeros(qd.size, dtype=np.int64)
        cut = self.threshold - NEAR_TOLERANCE
        for c in np.unique(clusters).tolist():
            sel = np.flatnonzero(clusters == c)
            skip = adj[c][adj[c] >= 0]
            far = np.flatnonzero((src_cluster != c) & ~np.isin(src_cluster, skip))
            uq, inv = np.unique(qd[sel], return_inverse=True)
            owner, at = csr_expand(self.offsets, uq)
            pvec = self._vecs(self.pos_sources[at])
            first = np.flatnonzero(np.concatenate([[True], owner[1:] != owner[:-1]]))
            per_q = np.zeros(uq.size, dtype=np.int64)
            for s0 in range(0, far.size, _ROWS):
                sims = self._vecs(far[s0 : s0 + _ROWS]) @ pvec.T
                hit = np.logical_or.reduceat(sims > cut, first, axis=1)
                per_q[owner[first]] += hit.sum(axis=0)
            out[sel] = per_q[inv]
        return out
