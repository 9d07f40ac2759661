"""``negmine bench``: mining time against the bare matrix product, measured side by side.

Each workload runs in a fresh child process (so its peak RSS is its own) with
``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed from the child's
environment: where they are set they pin numpy's BLAS to a slower kernel, and
both the miner and the reference product should run on the fastest one. Ratios
are what to read: both figures come from the same process, minutes apart.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._process import return_freed_blocks

__all__ = ["WORKLOADS", "bare_product_seconds", "run"]

#: name -> (sources, pairs, clusters)
WORKLOADS = {
    "20k": (20_000, 10_000, 50),
    "100k": (100_000, 100_000, 300),
    "1m": (1_000_000, 1_000_000, 1000),
}
_DIM = 384
_PROPORTIONS = [3, 4, 3, 2]


def bare_product_seconds(queries: np.ndarray, sources: np.ndarray, library: str = "numpy") -> float:
    """Seconds for ``queries @ sources.T`` in the miner's blocks, results discarded.

    Parameters
    ----------
    queries : float32 [M, d]
    sources : float32 [S, d]
    library : {"numpy", "torch"}
        Library of the products, as mining's ``products`` (see
        :mod:`negmine.search.products`).
    """
    from .search import QUERY_BLOCK, SOURCE_CHUNK
    from .search.products import matmul_into, product_threads

    chunk = min(SOURCE_CHUNK, sources.shape[0])
    buf = np.empty(QUERY_BLOCK * chunk, dtype=np.float32)
    t0 = time.perf_counter()
    with product_threads(library):
        for b0 in range(0, queries.shape[0], QUERY_BLOCK):
            xq = queries[b0 : b0 + QUERY_BLOCK]
            for s0 in range(0, sources.shape[0], chunk):
                xs = sources[s0 : s0 + chunk]
                out = buf[: len(xq) * len(xs)].reshape(len(xq), len(xs))
                matmul_into(xq, xs, out, library)
    return time.perf_counter() - t0


def _peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB.

    Read from ``VmHWM`` in ``/proc/self/status`` where it exists: ``ru_maxrss``
    of a child started by ``vfork`` + ``exec`` (as :mod:`subprocess` does) also
    carries its parent's peak, since the parent's memory was the child's until
    the exec.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child_workload(name: str, nprobes: list[int]) -> dict[str, Any]:
    from ._checks import normalized_float32
    from .miner import NegativeMiner
    from .synth import make_corpus

    n_src, n_pairs, n_c = WORKLOADS[name]
    t0 = time.perf_counter()
    corpus = make_corpus(n_src, n_c, n_pairs, _DIM, seed=0)
    gen_s = time.perf_counter() - t0
    used = np.unique(corpus["pair_indices"][:, 0])

    def product() -> float:
        qn = normalized_float32(corpus["question_embeddings"][used])
        sn = normalized_float32(corpus["source_embeddings"])
        return bare_product_seconds(qn, sn)

    # Alternate product and mining; each mining run is compared with the mean
    # of the products just before and after it (the machine's speed drifts).
    products = [product()]
    rounds = 3 if products[0] < 5.0 else 1
    mines = []
    for _ in range(rounds):
        miner = NegativeMiner(**corpus, n_neg=12, tier_proportions=_PROPORTIONS, adjacent_k=3)
        t0 = time.perf_counter()
        miner.mine_arrays()
        mines.append(time.perf_counter() - t0)
        products.append(product())
    ratios = [m / ((products[i] + products[i + 1]) / 2) for i, m in enumerate(mines)]
    pick = int(np.argsort(ratios)[len(ratios) // 2])
    mine_s = mines[pick]
    gemm = (products[pick] + products[pick + 1]) / 2
    stats = miner.last_stats or {}
    approx = []
    for nprobe in nprobes:
        m = NegativeMiner(**corpus, n_neg=12, tier_proportions=_PROPORTIONS, adjacent_k=3,
                          nprobe=nprobe, recall_sample=2000)  # fmt: skip
        t0 = time.perf_counter()
        m.mine_arrays()
        rec = (m.last_stats or {}).get("tier3_recall") or {}
        secs = time.perf_counter() - t0 - rec.get("seconds", 0.0)  # the check is not mining
        row = {"nprobe": nprobe, "mine_s": round(secs, 3), "speedup": round(mine_s / secs, 2)}
        approx.append({**row, "recall": rec.get("recall")})
    return {
        "workload": name,
        "sources": n_src,
        "pairs": n_pairs,
        "clusters": n_c,
        "questions": len(corpus["question_embeddings"]),
        "generate_s": round(gen_s, 2),
        "bare_product_s": round(gemm, 3),
        "bare_product_runs_s": [round(x, 3) for x in products],
        "mine_runs_s": [round(x, 3) for x in mines],
        "mine_s": round(mine_s, 3),
        "ratio": round(ratios[pick], 3),
        "pairs_per_s": round(n_pairs / mine_s),
        "peak_rss_mb": round(_peak_rss_mb()),
        "breakdown_s": stats.get("timings_seconds", {}),
        "approximate": approx,
    }


def _child_tiers(n_pairs: int) -> dict[str, Any]:
    from .assemble import block_uniforms, fill_rows
    from .layout import ClusterLayout, PositiveSets, adjacent_clusters
    from .synth import make_corpus

    corpus = make_corpus(200_000, 1000, n_pairs, 16, seed=1)
    scl = corpus["source_cluster_ids"]
    layout = ClusterLayout.build(scl, 1000, adjacent_clusters(corpus["centroid_embeddings"], 3))
    pairs = corpus["pair_indices"]
    positives = PositiveSets.from_pairs(pairs, len(corpus["question_embeddings"]))
    cl = corpus["pair_cluster_ids"]
    # Tier-3 stand-ins: the first sources after the pair's cluster in layout order.
    after = layout.offsets[cl + 1][:, None] + np.arange(_PROPORTIONS[2])
    t3 = layout.order[after % layout.n_sources]
    step = 16384  # the miner's default batch_size
    counts = tuple(_PROPORTIONS)
    runs = []
    for _ in range(3):  # noise only ever adds time: report the fastest of three
        t0 = time.perf_counter()
        for p0 in range(0, n_pairs, step):
            p1 = min(p0 + step, n_pairs)
            uniforms = block_uniforms(0, p0, p1, counts)
            fill_rows(layout, positives, pairs[p0:p1, 0], cl[p0:p1], t3[p0:p1], counts, uniforms)
        runs.append(time.perf_counter() - t0)
    return {
        "tiers_pairs": n_pairs,
        "tiers_124_s": round(min(runs), 3),
        "tiers_runs_s": [round(x, 3) for x in runs],
    }


def _make_work_dir(work_dir: str | None) -> str:
    """A fresh directory for the store workload, inside ``work_dir`` (created
    with its parents when missing) or the system's temporary directory."""
    import tempfile

    if work_dir is None:
        return tempfile.mkdtemp(prefix="negmine-bench-")
    try:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        return tempfile.mkdtemp(prefix="negmine-bench-", dir=work_dir)
    except OSError as e:
        raise ValueError(
            f"`--work-dir` must be a directory negmine can create and write in; got "
            f"'{work_dir}' ({e.strerror or e}: '{e.filename or work_dir}')."
        ) from e


def _spawn(arg: str) -> dict[str, Any]:
    return _spawn_module("negmine.bench", arg)


def _spawn_module(module: str, arg: str) -> dict[str, Any]:
    """Run ``python -m module arg`` without the BLAS-pinning variables; its last line's JSON."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    proc = subprocess.run(
        [sys.executable, "-m", module, arg],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child '{arg}' failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    workloads: list[str], tiers_pairs: int = 1_000_000, nprobes: list[int] | None = None
) -> dict[str, Any]:
    """Run the workloads (and the tier timing) and print a table; returns the figures.

    ``nprobes``: also mine each workload with the approximate tier 3 at these
    ``nprobe`` values, reporting time, speed-up over exact mining (same run)
    and tier-3 recall@3 against exact on 2000 queries.
    """
    for name in workloads:
        if name not in WORKLOADS:
            raise ValueError(f"`--workloads` must name among {sorted(WORKLOADS)}; got '{name}'.")
    unset = [k for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ]
    note = f"; unset for the children: {', '.join(unset)}" if unset else ""
    print(f"negmine bench: d={_DIM}, n_neg 12, tiers {_PROPORTIONS}, exact index, "
          f"{os.cpu_count()} cpus{note}")  # fmt: skip
    print("target: mining <= 1.3 x the bare product; tiers 1, 2, 4 for 1M pairs <= 2 s")
    head = (f"{'workload':<9}{'sources':>9}{'pairs':>9}{'clust':>6}{'product s':>11}"
            f"{'mine s':>9}{'ratio':>7}{'pairs/s':>10}{'peak MB':>9}")  # fmt: skip
    print(head)
    rows = []
    for name in workloads:
        r = _spawn(f"--child={name}:{','.join(str(p) for p in nprobes or [])}")
        rows.append(r)
        print(f"{name:<9}{r['sources']:>9}{r['pairs']:>9}{r['clusters']:>6}"
              f"{r['bare_product_s']:>11.2f}{r['mine_s']:>9.2f}{r['ratio']:>7.2f}"
              f"{r['pairs_per_s']:>10,}{r['peak_rss_mb']:>9}")  # fmt: skip
        print(f"{'':<9}runs: product {r['bare_product_runs_s']}, mining {r['mine_runs_s']} "
              "(median ratio shown)")  # fmt: skip
        print(f"{'':<9}breakdown: {r['breakdown_s']}", flush=True)
        for a in r["approximate"]:
            print(f"{'':<9}nprobe {a['nprobe']:>3}: mining {a['mine_s']:.2f} s, "
                  f"{a['speedup']:.1f}x faster than exact, "
                  f"tier-3 recall@3 {a['recall']}")  # fmt: skip
    tiers = _spawn(f"--tiers={tiers_pairs}") if tiers_pairs else None
    if tiers:
        print(f"tiers 1, 2, 4 for {tiers['tiers_pairs']:,} pairs: {tiers['tiers_124_s']:.2f} s "
              f"(fastest of {tiers['tiers_runs_s']})")  # fmt: skip
    return {"workloads": rows, "tiers": tiers}


if __name__ == "__main__":
    return_freed_blocks()  # as the negmine command does
    arg = sys.argv[1] if len(sys.argv) > 1 else ""
    if arg.startswith("--child="):
        name, _, probes = arg.split("=", 1)[1].partition(":")
        print(json.dumps(_child_workload(name, [int(p) for p in probes.split(",") if p])))
    elif arg.startswith("--tiers="):
        print(json.dumps(_child_tiers(int(arg.split("=", 1)[1]))))
    else:
        print("usage: negmine bench (this module runs its own children)", file=sys.stderr)
        sys.exit(2)
