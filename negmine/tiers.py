"""Vectorised samplers for the random tiers (1, 2 and 4).

A sampling *domain* is, per row, a union of disjoint intervals of layout
positions (``ClusterLayout.order`` indices): one cluster's range for tier 1, the
adjacent clusters' ranges for tier 2, the gaps between excluded ranges for tier 4.
Sampling draws distinct ranks among the domain's non-excluded positions with a
row-vectorised Floyd algorithm, maps each rank past the sorted excluded positions
with one ``searchsorted`` over flat (row, position) keys, then maps the domain's
virtual coordinate back to a layout position. Every row's draw is exactly uniform
over the non-excluded part of its domain, without replacement.

Pure functions: arrays and uniforms in, arrays out.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "complement_domain",
    "floyd_sample",
    "sample_domain",
    "union_domain",
]


def floyd_sample(n: np.ndarray, k: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draw ``k[r]`` distinct integers from ``[0, n[r])`` for every row ``r``.

    Parameters
    ----------
    n : int64 [R]
        Population sizes.
    k : int64 [R]
        Draws per row, ``0 <= k <= n``.
    u : float64 [R, K], ``K >= max(k)``
        Uniforms in [0, 1); draw ``i`` of row ``r`` uses ``u[r, i]`` only, so a
        row's result depends on its own uniforms and nothing else.

    Returns
    -------
    int64 [R, max(k)]
        The draws, ``-1`` beyond ``k[r]``.
    """
    rows = n.size
    kmax = int(k.max()) if rows else 0
    out = np.full((rows, kmax), -1, dtype=np.int64)
    for i in range(kmax):
        active = i < k
        j = n - k + i
        t = np.minimum((u[:, i] * (j + 1)).astype(np.int64), j)
        if i:
            t = np.where((out[:, :i] == t[:, None]).any(axis=1), j, t)
        out[:, i] = np.where(active, t, -1)
    return out


def union_domain(offsets: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Domain made of the listed clusters' ranges.

    Parameters
    ----------
    offsets : int64 [C + 1]
        Layout offsets.
    clusters : int64 [R, m]
        Clusters per row, ``-1`` for none. A cluster must not repeat in a row.

    Returns
    -------
    starts, lens : int64 [R, m]
        Interval starts and lengths (0 for padding).
    """
    safe = np.where(clusters >= 0, clusters, 0)
    starts = offsets[safe]
    lens = np.where(clusters >= 0, offsets[safe + 1] - starts, 0)
    return starts, lens


def complement_domain(
    offsets: np.ndarray, clusters: np.ndarray, n_sources: int
) -> tuple[np.ndarray, np.ndarray]:
    """Domain of every layout position outside the listed clusters.

    Parameters
    ----------
    offsets : int64 [C + 1]
    clusters : int64 [R, m]
        Excluded clusters per row, ``-1`` for none; no repeats within a row.
    n_sources : int

    Returns
    -------
    starts, lens : int64 [R, m + 1]
        The gaps between the excluded ranges.
    """
    starts, lens = union_domain(offsets, clusters)
    # Sort the ranges by start (one packed key); empty ranges sort to the end
    # so they cannot split a gap.
    key = np.where(lens > 0, starts, n_sources) * (1 << 32) + lens
    key.sort(axis=1)
    s = key >> 32
    e = s + (key & 0xFFFFFFFF)
    rows = clusters.shape[0]
    gap_start = np.concatenate([np.zeros((rows, 1), np.int64), e], axis=1)
    gap_end = np.concatenate([s, np.full((rows, 1), n_sources, np.int64)], axis=1)
    return gap_start, np.maximum(gap_end - gap_start, 0)


def sample_domain(
    starts: np.ndarray,
    lens: np.ndarray,
    k: np.ndarray,
    excl_rows: np.ndarray,
    excl_pos: np.ndarray,
    u: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample distinct layout positions uniformly from each row's domain.

    Parameters
    ----------
    starts, lens : int64 [R, m]
        The domain: disjoint intervals of layout positions per row.
    k : int64 [R]
        Wanted per row.
    excl_rows, excl_pos : int64 [E]
        Excluded (row, layout position) points; any order, duplicates and
        points outside the domain allowed.
    u : float64 [R, K], ``K >= max(k)``
        The rows' uniforms (see :func:`floyd_sample`).

    Returns
    -------
    pos : int64 [R, K]
        Sampled layout positions, ``-1`` padded; row ``r`` holds ``got[r]``.
    got : int64 [R]
        ``min(k, available)``; ``k - got`` is the row's shortfall.
    """
    n_rows, m = starts.shape
    virt_start = np.cumsum(lens, axis=1) - lens
    size = virt_start[:, -1] + lens[:, -1] if m else np.zeros(n_rows, np.int64)
    big = int(size.max()) + 2 if n_rows else 2

    # Excluded points that fall inside the domain, in virtual coordinates.
    v = np.full(excl_pos.shape, -1, dtype=np.int64)
    for j in range(m):
        s_j = starts[excl_rows, j]
        d = excl_pos - s_j
        v = np.where((d >= 0) & (d < lens[excl_rows, j]), virt_start[excl_rows, j] + d, v)
    hit = v >= 0
    keys = np.sort(excl_rows[hit] * big + v[hit])
    if keys.size:
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    k_rows = keys // big
    n_excl = np.bincount(k_rows, minlength=n_rows)
    got = np.minimum(k, size - n_excl)
    ranks = floyd_sample(size - n_excl, got, u)

    # Rank among non-excluded -> virtual position: add the excluded points p_i
    # (sorted, i-th in its row) with p_i - i <= rank.
    vpos = ranks.copy()
    if keys.size:
        first = np.cumsum(n_excl) - n_excl
        i_in_row = np.arange(keys.size) - first[k_rows]
        shifted = keys - k_rows * big - i_in_row
        width = int(n_excl.max())
        if width <= 8:
            pad = np.full((n_rows, width), big, dtype=np.int64)
            pad[k_rows, i_in_row] = shifted
            for c in range(width):
                vpos += pad[:, c : c + 1] <= ranks
        else:
            row_of = np.arange(n_rows, dtype=np.int64)[:, None]
            flat = k_rows * big + shifted
            vpos += np.searchsorted(flat, row_of * big + ranks, side="right") - first[:, None]

    # Virtual position -> layout position.
    delta = starts - virt_start
    out = vpos + delta[:, :1]
    for j in range(1, m):
        out = np.where(vpos >= virt_start[:, j : j + 1], vpos + delta[:, j : j + 1], out)
    return np.where(ranks >= 0, out, -1), got
