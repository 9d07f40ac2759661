"""negmine._order.stable_order: numpy's stable argsort, the same permutation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from negmine._order import stable_order


def _check(keys: np.ndarray) -> np.ndarray:
    got = stable_order(keys)
    want = np.argsort(keys, kind="stable")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32, np.uint64, np.int16, np.uint8])
def test_many_ties_keep_their_positions_order(dtype):
    """Keys with many repeats (the case an unstable sort gets wrong), each width."""
    rng = np.random.default_rng(0)
    hi = min(50, np.iinfo(dtype).max)
    keys = rng.integers(0, hi, 20_000).astype(dtype)
    got = _check(keys)
    assert not np.array_equal(got, np.argsort(keys, kind="quicksort"))  # ties do matter here


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000])
def test_short_and_sorted_inputs(n):
    _check(np.arange(n, dtype=np.int64))
    _check(np.arange(n, dtype=np.int64)[::-1].copy())
    _check(np.zeros(n, dtype=np.int64))


def test_keys_at_the_packing_limit_and_past_it():
    """The widest keys that pack with their positions, one past them, and
    negative keys (both left to numpy) order as numpy's stable sort does."""
    n = 1000
    bits = (n - 1).bit_length()
    top = (1 << (63 - bits)) - 1
    rng = np.random.default_rng(1)
    for hi in (top, top + 1, np.iinfo(np.int64).max):
        keys = rng.integers(0, 4, n).astype(np.int64)
        keys[rng.integers(0, n, 40)] = hi
        keys[rng.integers(0, n, 40)] = hi - 1
        _check(keys)
    keys = rng.integers(-5, 5, n).astype(np.int64)
    _check(keys)


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.int64, st.integers(0, 400), elements=st.integers(0, 2**40)))
def test_any_keys(keys):
    _check(keys)
