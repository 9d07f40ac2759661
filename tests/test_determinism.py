"""The output does not depend on the number of BLAS and FAISS threads.

Each run is a fresh interpreter whose thread counts are fixed the way users fix
them, through ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` (read when the libraries load). The child checks that the
setting took: FAISS's OpenMP thread count and, when threadpoolctl is
installed, every BLAS library it finds. Two threads need no second core to
change the arithmetic: the partition of a product between threads depends on
the thread count, not on the cores.

The corpus is one where a tier-3 near-tie (two cosines 1.1e-7 apart in
float64, below float32 round-off) sits at a rank that the output shows: with
``nprobe`` the two swap places between one and two threads (row 8146; recorded
on x86-64 with numpy's OpenBLAS wheel and the faiss-cpu wheel).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from negmine.synth import make_corpus

ROOT = Path(__file__).resolve().parents[1]

CORPUS = {"n_sources": 6000, "n_clusters": 24, "n_pairs": 9000, "d": 64, "seed": 3}
CASES = {"exact": {}, "nprobe": {"nprobe": 4}}

CHILD = """
import hashlib, json, sys
import faiss
import numpy as np
from negmine import mine_negatives

n = int(sys.argv[1])
args = json.loads(sys.argv[2])
threads = {"faiss": faiss.omp_get_max_threads()}
try:
    from threadpoolctl import threadpool_info
except ImportError:
    pass
else:
    for lib in threadpool_info():
        if lib["user_api"] == "blas":
            threads[lib["filepath"]] = lib["num_threads"]
corpus = {k: np.load(f"{args['dir']}/{k}.npy") for k in args["keys"]}
res = mine_negatives(
    **corpus, n_neg=12, tier_proportions=[3, 4, 3, 2], seed=7, **args["mine"]
)
digests = {}
for name in ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores"):
    a = np.ascontiguousarray(res[name].numpy())
    digests[name] = hashlib.sha256(a.tobytes()).hexdigest()
ids = res["hard_negatives"].numpy()
print(json.dumps({"threads": threads, "digests": digests, "ids": ids.tolist()}))
"""


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """The corpus, made once here: ``make_corpus`` multiplies matrices too, and
    its bytes may follow this process's BLAS threads; the children only mine."""
    d = tmp_path_factory.mktemp("corpus")
    for k, v in make_corpus(**CORPUS).items():
        np.save(d / f"{k}.npy", v)
    return d


def _mine_with_threads(n: int, case: str, corpus_dir: Path) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(n)
    keys = sorted(p.stem for p in corpus_dir.glob("*.npy"))
    args = json.dumps({"dir": str(corpus_dir), "keys": keys, "mine": CASES[case]})
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert set(out["threads"].values()) == {n}, out["threads"]
    return out


@pytest.mark.parametrize(
    "case",
    [
        "exact",
        "nprobe",
    ],
)
def test_one_and_two_threads_give_the_same_bytes(case, corpus_dir):
    one = _mine_with_threads(1, case, corpus_dir)
    two = _mine_with_threads(2, case, corpus_dir)
    rows = [r for r, (a, b) in enumerate(zip(one["ids"], two["ids"], strict=True)) if a != b]
    assert rows == [], f"{len(rows)} rows differ, first {rows[:5]}"
    assert one["digests"] == two["digests"]
