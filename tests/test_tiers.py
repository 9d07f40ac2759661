"""The samplers: exact uniformity over the allowed set, exclusions honoured."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from negmine.tiers import complement_domain, floyd_sample, sample_domain, union_domain


def test_floyd_distinct_in_range_and_uniform():
    rng = np.random.default_rng(0)
    rows = 20000
    n = np.full(rows, 10)
    k = np.full(rows, 3)
    out = floyd_sample(n, k, rng.random((rows, 3)))
    assert ((out >= 0) & (out < 10)).all()
    assert (np.sort(out, axis=1)[:, 1:] != np.sort(out, axis=1)[:, :-1]).all()
    # Every 3-subset of 10 is equally likely: 120 subsets.
    code = np.sort(out, axis=1) @ np.array([100, 10, 1])
    counts = np.unique(code, return_counts=True)[1]
    assert len(counts) == 120
    expected = rows / 120
    assert ((counts - expected) ** 2 / expected).sum() < 190  # 119 dof, p ~ 1e-4


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 6), min_size=1, max_size=6),
    data=st.data(),
)
def test_sample_domain_matches_enumeration(sizes, data):
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_src = int(offsets[-1])
    n_c = len(sizes)
    picked = data.draw(st.lists(st.integers(0, n_c - 1), unique=True, max_size=n_c))
    use_complement = data.draw(st.booleans())
    clusters = np.array([[*picked, -1]], dtype=np.int64)
    if use_complement:
        starts, lens = complement_domain(offsets, clusters, n_src)
        allowed = {p for p in range(n_src) if not any(
            offsets[c] <= p < offsets[c + 1] for c in picked)}  # fmt: skip
    else:
        starts, lens = union_domain(offsets, clusters)
        allowed = {p for c in picked for p in range(offsets[c], offsets[c + 1])}
    excluded = data.draw(st.lists(st.integers(0, max(n_src - 1, 0)), max_size=5)) if n_src else []
    k_want = data.draw(st.integers(0, 6))
    reps = 3000
    starts = np.repeat(starts, reps, axis=0)
    lens = np.repeat(lens, reps, axis=0)
    ex_rows = np.repeat(np.arange(reps), len(excluded))
    ex_pos = np.tile(np.array(excluded, dtype=np.int64), reps)
    u = np.random.default_rng(1).random((reps, max(k_want, 1)))
    pos, got = sample_domain(starts, lens, np.full(reps, k_want), ex_rows, ex_pos, u)
    avail = allowed - set(excluded)
    assert (got == min(k_want, len(avail))).all()
    seen = pos[pos >= 0]
    assert set(seen.tolist()) <= avail
    for row in pos[:50]:
        vals = row[row >= 0]
        assert len(set(vals.tolist())) == len(vals)
    if avail and got[0]:
        counts = np.array([np.sum(seen == p) for p in sorted(avail)])
        expected = reps * got[0] / len(avail)
        # Each allowed position is drawn with equal probability.
        assert np.abs(counts - expected).max() < 6 * np.sqrt(expected) + 3
