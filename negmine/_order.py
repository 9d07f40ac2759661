"""Orderings shared by the samplers, the scans and the row readers."""

from __future__ import annotations

import numpy as np

__all__ = ["stable_order"]


def stable_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` of integer keys, the same permutation.

    Parameters
    ----------
    keys : int array [n]

    Returns
    -------
    int64 [n]
        Positions of ``keys`` in ascending order, ties in order of position.

    Notes
    -----
    numpy's stable sort of wide integers is a merge sort (about 80 ns an entry
    at 200k). When each key shifted past the bits of a position still fits in
    63 bits, the keys are packed with their positions into one int64 each and
    sorted as plain numbers (numpy's fastest sort, about 8 ns an entry): distinct
    packed values, so the order is the stable one. Other keys (negative, too wide,
    16 bits or less, which numpy sorts by radix already) go to numpy.
    """
    keys = np.asarray(keys)
    n = keys.size
    if n < 2 or keys.ndim != 1 or keys.dtype.kind not in "iu" or keys.dtype.itemsize <= 2:
        return np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    bits = (n - 1).bit_length()
    lo, hi = int(keys.min()), int(keys.max())
    if lo < 0 or hi >= 1 << (63 - bits):
        return np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    packed = keys.astype(np.int64) << bits
    packed |= np.arange(n, dtype=np.int64)
    packed.sort()
    packed &= (1 << bits) - 1
    return packed
