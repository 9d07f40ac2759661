"""The mining outputs of fixed corpora, pinned byte for byte.

These digests were recorded before mining was reshaped into plan, back-ends,
blocks and executors; the reshaped code must reproduce them exactly. They
complement the brute-force tests (which check that the values are right) by
checking that nothing moved at all: ids, labels and every float bit.

Assumption: scores come from float32 products through numpy's BLAS and FAISS.
The digests were recorded on x86-64 with the OpenBLAS that numpy's wheel
ships and the faiss-cpu wheel, once for each family of OpenBLAS kernels seen on
the machines here (OpenBLAS picks one from the CPU, or ``OPENBLAS_CORETYPE``
names it): the synthetic corpus itself rounds differently from one to another.
Elsewhere another near-tie may legitimately flip and change a digest (the
brute-force tests still hold there), so a machine whose kernels have no
digests skips this test.
They were recorded with 2 BLAS threads, which the test pins (through
threadpoolctl) for both the synthetic corpus and the mining: the corpus
generator's products, and the probe kernel's small ones, round differently
with another thread count. Set ``NEGMINE_PRINT_DIGESTS=1`` to print the
digests this machine computes.
"""

from __future__ import annotations

import hashlib
import os
import platform

import numpy as np
import pytest
from helpers import blas_kernel
from threadpoolctl import threadpool_limits

from negmine import mine_negatives
from negmine.index import SourceIndex
from negmine.synth import make_corpus

# Crosses tier-3 and pair block boundaries (4096 queries, 65536 pairs are the
# blocks; 9000 pairs give three tier-3 blocks).
CORPUS = {"n_sources": 6000, "n_clusters": 24, "n_pairs": 9000, "d": 32, "seed": 11}
FILTERS = {
    "relative_margin": 0.05,
    "near_duplicate_threshold": 0.97,
    "tier3_rank_window": (2, 30),
    "tier3_sampling": "random",
}

CASES = {
    "exact": {},
    "exact_filters": dict(FILTERS),
    "exact_max_score": {"max_score": 0.8, "absolute_margin": 0.02},
    "probe": {"nprobe": 4},
    "probe_filters": {"nprobe": 4, **FILTERS},
    "flat_index": {"index": "flat"},
    "clusters_index": {"index": "clusters", "nprobe": 6},
    # 8-bit lists at the re-rank depth the digest was recorded with (4; the default is
    # now 2): integer candidates, re-ranked exactly, give the float32 lists' bytes.
    "clusters_sq8": {"index": "clusters,SQ8", "nprobe": 6, "rerank": 4},
    "ivf_index": {"index": "IVF16,Flat", "nprobe": 4},
    "ivf_filters": {"index": "IVF16,Flat", "nprobe": 4, **FILTERS},
}

#: Digests with numpy's OpenBLAS on its ``Haswell`` kernels (``OPENBLAS_CORETYPE=Zen`` too).
HASWELL = {
    "clusters_index": "60f86f09b261c19271363a43093627b3f426580bdceb185c55d3d798a06ddf20",
    "clusters_sq8": "60f86f09b261c19271363a43093627b3f426580bdceb185c55d3d798a06ddf20",
    "exact": "b94215d92fd2f58b5e82547af58073850e8f3f8977888c11ebb6955af00217cc",
    "exact_filters": "dcf43c285bb00dc0aa96b5102a35240260b5cba95ca802f80b0d0d1818ef59cb",
    "exact_max_score": "86faa46d87e5665c013b175543531f1006c8c7fe3ed7761fdc4002da93fa4ddc",
    "flat_index": "b94215d92fd2f58b5e82547af58073850e8f3f8977888c11ebb6955af00217cc",
    # FAISS scores IVF lists with its AVX-512 kernels where the CPU has them
    # (recorded on an AMD EPYC): other rounding, another near-tie at the window.
    "ivf_filters": (
        "b8c9ecc09b5ae2fe59d9d1b5887f8c377156591a0f0a52248ac356ebe549c9e8",
        "29cd5300cff01e0ffeaabba1abb39ec3d233a76812566da6d212edd8e1ccc837",
    ),
    "ivf_index": "159ef1cee8598897f03a4a99fa8c0a4b7ca11c8b8fe6d0b4531c0a01183eccbe",
    "probe": "88488db2f2fd6069a14e8cc7c61ea7c690038207c70dee290bbb48960ce166e7",
    "probe_filters": "a20e09a3e612647d7e277668e9b7d495c2b42025736e456411690dd1fc7f55b0",
}

#: Digests with numpy's OpenBLAS on its AVX-512 (``SkylakeX``) kernels: what it picks on an
#: AMD EPYC with AVX-512 when ``OPENBLAS_CORETYPE`` is not set. (FAISS's own OpenBLAS, whatever
#: its kernels, changed no digest.)
SKYLAKEX = {
    "clusters_index": "2c1a6e885430961bf7c891739d35769b4924eda26f18a4fc39a60bd587220a15",
    "clusters_sq8": "2c1a6e885430961bf7c891739d35769b4924eda26f18a4fc39a60bd587220a15",
    "exact": "6bc05d12625be2ee7fd1d5be66e1ad499af00d3972174a267f04656559c0db2c",
    "exact_filters": "279d7172895eadb6d46ea97ae9cf33bd01da2a71e32dbb79eb332c74fe1bfbaa",
    "exact_max_score": "25dd3b1463e6dac5b6e996e6dc2edc00347b70482a1ce1e04e72e6e080420c98",
    "flat_index": "6bc05d12625be2ee7fd1d5be66e1ad499af00d3972174a267f04656559c0db2c",
    "ivf_filters": "69cf596a8af702aeadf690621e6a579acd45476bb0777fec333d697a52d923f6",
    "ivf_index": "adddd3d26274878891ab51a709e70bb3572e6f695f7659426357afa0dd6af9b0",
    "probe": "e60e49957a3332568fecc7b7af0ae10a9b29196bb5d8f128c30fd9863a1a34ff",
    "probe_filters": "dd3685f92f89f3d2c5dbbf200ed38ccedbd33a52bb8e93c9238c9e84a649a553",
}

#: numpy's OpenBLAS kernels -> the digests recorded with them.
EXPECTED = {"Haswell": HASWELL, "SkylakeX": SKYLAKEX}


#: BLAS threads the digests were recorded with.
BLAS_THREADS = 2


@pytest.fixture(scope="module")
def corpus():
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        return make_corpus(**CORPUS)


def _digest(res) -> str:
    h = hashlib.sha256()
    for name in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
        a = res[name].numpy()
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _run(corpus, case):
    kw = dict(CASES[case])
    spec = kw.pop("index", None)
    if spec is not None:
        kw["index"] = SourceIndex.build(
            corpus["source_embeddings"],
            spec,
            source_cluster_ids=corpus["source_cluster_ids"],
            centroid_embeddings=corpus["centroid_embeddings"],
        )
    return mine_negatives(
        **corpus, n_neg=12, tier_proportions=[3, 4, 3, 2], adjacent_k=3, seed=7, **kw
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_recorded_reference(corpus, case):
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        got = _digest(_run(corpus, case))
    if os.environ.get("NEGMINE_PRINT_DIGESTS"):
        print(f'\n    "{case}": "{got}",')
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"digests recorded on x86-64; this is {platform.machine()}")
    kernel = blas_kernel()
    if kernel not in EXPECTED:
        pytest.skip(
            f"digests recorded with numpy's OpenBLAS kernels {sorted(EXPECTED)}; this machine "
            f"runs {kernel} (NEGMINE_PRINT_DIGESTS=1 prints its digests)"
        )
    want = EXPECTED[kernel][case]
    allowed = want if isinstance(want, tuple) else (want,)
    assert got in allowed, f"{case}: the output bytes changed"
