"""float16 and float64 embeddings give the bytes of the same values cast to float32.

What holds, and what the docs may say: negmine casts embeddings to float32
before it normalises them, so an input in float16 or float64 (numpy or torch)
mines exactly like ``x.astype(np.float32)``. It does not mine like a float32
corpus the float16 values were rounded from: the rounding moves cosines by up
to ~1e-3, enough to change ids (checked below, so the equality is no accident).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import small_corpus

from negmine import mine_negatives

EMBEDDINGS = ("source_embeddings", "question_embeddings", "centroid_embeddings")
OUTPUTS = ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores")
SETTINGS = {
    "exact": {},
    "nprobe": {"nprobe": 3},
    "filters": {"near_duplicate_threshold": 0.95, "relative_margin": 0.05},
}


@pytest.fixture(scope="module")
def corpus():
    return small_corpus(n_sources=900, n_clusters=10, n_questions=1500, seed=4)


def _mine(corpus, **kw):
    return mine_negatives(**corpus, n_neg=8, tier_proportions=[2, 2, 2, 2], seed=1, **kw)


def _with(corpus, convert):
    return {k: convert(v) if k in EMBEDDINGS else v for k, v in corpus.items()}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("kind", ["float16", "torch.float16", "float64"])
def test_other_float_dtypes_mine_like_their_float32_cast(corpus, kind, setting):
    dtype = np.float64 if kind == "float64" else np.float16
    values = _with(corpus, lambda v: v.astype(dtype))
    given = _with(values, torch.from_numpy) if kind.startswith("torch") else values
    cast = _with(values, lambda v: v.astype(np.float32))
    got = _mine(given, **SETTINGS[setting])
    want = _mine(cast, **SETTINGS[setting])
    for key in OUTPUTS:
        assert torch.equal(got[key], want[key]), key


def test_float16_rounding_is_visible_in_the_output(corpus):
    rounded = _mine(_with(corpus, lambda v: v.astype(np.float16)))
    original = _mine(corpus)
    changed = (rounded["hard_negatives"] != original["hard_negatives"]).any(dim=1)
    assert int(changed.sum()) > 0
    gap = (rounded["positive_scores"] - original["positive_scores"]).abs().max().item()
    assert 0 < gap < 5e-3
