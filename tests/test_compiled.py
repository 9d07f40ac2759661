"""The compiled push of the 8-bit scan (the ``numba`` extra) against FAISS's push.

The compiled kernel must change speed only: the same heaps, ids and order as
FAISS's ``addn`` on scores full of ties, and the same mining bytes with it
turned on and off (``NEGMINE_COMPILED``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import build_index
from reference import small_corpus

from negmine import mine_negatives
from negmine.search import compiled
from negmine.search.scan import _INT_EMPTY, _admit_int

pytest.importorskip("numba")


def test_compiled_push_keeps_faiss_heaps_ids_and_order_through_ties(monkeypatch):
    """Scores drawn from seven values (ties everywhere), heaps of 1 to 8, rows of
    1 to 40 scores, six pushes into the same heaps: after each push the compiled
    heaps equal those FAISS's ``addn`` keeps, slot for slot, ids included."""
    monkeypatch.delenv("NEGMINE_COMPILED", raising=False)
    push = compiled.int_push()
    assert push is not None
    rng = np.random.default_rng(5)
    n_heaps = 30
    for _ in range(300):
        k = int(rng.integers(1, 9))
        w = int(rng.integers(1, 41))
        ref_d = np.full((n_heaps, k), _INT_EMPTY, dtype=np.int32)
        ref_i = np.full((n_heaps, k), -1, dtype=np.int64)
        got_d, got_i = ref_d.copy(), ref_i.copy()
        for _ in range(6):
            rows = rng.choice(n_heaps, size=int(rng.integers(1, 20)), replace=False)
            scores = rng.integers(-3, 4, size=(rows.size, w)).astype(np.int32)
            scores[rng.random(scores.shape) < 0.05] = _INT_EMPTY  # left-out positives
            lo = int(rng.integers(0, 1000))
            d, i = ref_d[rows], ref_i[rows]
            _admit_int(scores, d, i, lo)  # FAISS's int_minheap_array_t.addn
            ref_d[rows], ref_i[rows] = d, i
            push(scores, rows.astype(np.int64), got_d, got_i, lo)
            np.testing.assert_array_equal(got_d, ref_d)
            np.testing.assert_array_equal(got_i, ref_i)
    assert (ref_i >= 0).any() and (ref_d > _INT_EMPTY).any()


def _digest(res) -> str:
    h = hashlib.sha256()
    for name in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
        h.update(np.ascontiguousarray(res[name].numpy()).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("spec", ["clusters,SQ8", "clusters,fast"])
def test_mining_bytes_are_the_same_with_the_compiled_push_on_and_off(spec, monkeypatch):
    """Whole mining runs over 8-bit lists, on a corpus whose duplicated sources
    tie in every score: ids, tiers and every float bit agree on and off."""
    corpus = small_corpus(n_sources=900, n_clusters=6, n_questions=300, d=24, seed=4)
    src = corpus["source_embeddings"]
    src[450:] = src[:450]  # every source twice: exact ties in the integer scores
    idx = build_index(corpus, spec)
    kw = {"n_neg": 6, "tier_proportions": [1, 1, 3, 1], "adjacent_k": 2, "seed": 9}
    digests, versions = {}, {}
    for flag in ("0", "1"):
        monkeypatch.setenv("NEGMINE_COMPILED", flag)
        versions[flag] = compiled.compiled_version()
        digests[flag] = _digest(mine_negatives(**corpus, **kw, index=idx, nprobe=3, rerank=1))
    assert versions["0"] is None and versions["1"] is not None
    assert digests["0"] == digests["1"]


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("NEGMINE_COMPILED", "0")
    assert compiled.int_push() is None and compiled.compiled_version() is None
    monkeypatch.setenv("NEGMINE_COMPILED", "1")
    assert compiled.int_push() is not None


def test_import_negmine_does_not_import_numba():
    code = "import sys, negmine; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_numba_the_push_is_faiss_s():
    """Where numba cannot be imported, the kernels are off (FAISS's push runs)."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from negmine.search import compiled\n"
        "print(compiled.int_push() is None, compiled.compiled_version() is None)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_numba_with_its_jit_disabled_leaves_the_push_to_faiss():
    """``NUMBA_DISABLE_JIT=1`` would run the kernels as Python: they stay off."""
    code = "from negmine.search import compiled; print(compiled.int_push() is None)"
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "True"
