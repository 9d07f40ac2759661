"""Benchmark of pools: what keeping one costs, and what re-mining from it saves.

``python -m negmine.bench_pool [WORKLOADS] [DEPTH]`` (default ``100k 32``):
for each workload of :data:`negmine.bench.WORKLOADS`, mine to disk without a
pool and with one, then re-mine from the pool with a new seed, with a relative
margin, and with a rank window (10, 30) sampled at random; each re-mine is
given as a fraction of the first pooled run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["run_pool"]

_REMINES = {
    "new seed": {"seed": 1},
    "relative margin 0.05": {"relative_margin": 0.05},
    "window (10, 30), random": {"tier3_rank_window": (10, 30), "tier3_sampling": "random"},
}


def _dir_bytes(d: Path, names: tuple[str, ...] | None = None) -> int:
    return sum(p.stat().st_size for p in d.iterdir() if names is None or p.name in names)


def _workload(name: str, depth: int, work: Path) -> dict[str, Any]:
    from .bench import _DIM, _PROPORTIONS, WORKLOADS
    from .miner import mine_negatives
    from .remine import remine
    from .synth import make_corpus

    n_src, n_pairs, n_c = WORKLOADS[name]
    # Warm up (imports, thread pools) so the first timed run is not charged for it.
    mine_negatives(**make_corpus(2000, 10, 2000, _DIM, seed=1), n_neg=4)
    corpus = make_corpus(n_src, n_c, n_pairs, _DIM, seed=0)
    kw = {"n_neg": 12, "tier_proportions": _PROPORTIONS, "adjacent_k": 3}
    t0 = time.perf_counter()
    mine_negatives(**corpus, output_dir=work / "plain", **kw)
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mine_negatives(**corpus, output_dir=work / "pooled", pool_depth=depth, **kw)
    pooled_s = time.perf_counter() - t0
    pool_files = ("pool_keys.npy", "pool_ids.npy", "pool_scores.npy")
    out: dict[str, Any] = {
        "workload": name, "pairs": n_pairs, "sources": n_src, "depth": depth,
        "mine_s": round(plain_s, 2), "mine_pool_s": round(pooled_s, 2),
        "pool_extra_s": round(pooled_s - plain_s, 2),
        "outputs_bytes": _dir_bytes(work / "plain"),
        "pool_bytes": _dir_bytes(work / "pooled", pool_files), "remines": [],
    }  # fmt: skip
    for label, settings in _REMINES.items():
        t0 = time.perf_counter()
        res = remine(work / "pooled", corpus, work / "re", overwrite=True, **settings)
        secs = time.perf_counter() - t0
        out["remines"].append({
            "remine": label, "seconds": round(secs, 2),
            "fraction_of_first_run": round(secs / pooled_s, 4),
            "rows_searched_again": res["stats"]["pool"]["rows_searched_again"],
            "tier3_queries": res["stats"]["tier3_queries"],
            "mining_s": res["stats"]["timings_seconds"],
        })  # fmt: skip
    return out


def run_pool(workloads: list[str], depth: int = 32) -> list[dict[str, Any]]:
    """Time mining with and without a pool and three re-mines; print the figures.

    Parameters
    ----------
    workloads : list of str
        Names in :data:`negmine.bench.WORKLOADS` (``"20k"``, ``"100k"``, ``"1m"``).
    depth : int
        ``pool_depth``.

    Returns
    -------
    list of dict
        One per workload: times of the first runs, the pool's bytes and, per
        re-mine, seconds, fraction of the first pooled run and rows searched
        again.
    """
    results = []
    for name in workloads:
        work = Path(tempfile.mkdtemp(prefix=f"negmine-pool-{name}-"))
        try:
            r = _workload(name, depth, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results.append(r)
        print(f"{name}: {r['pairs']} pairs, {r['sources']} sources, pool depth {depth}")
        print(f"  mine without a pool {r['mine_s']:.2f} s, with one {r['mine_pool_s']:.2f} s "
              f"(+{r['pool_extra_s']:.2f} s); outputs {r['outputs_bytes'] / 2**20:.1f} MiB, "
              f"pool {r['pool_bytes'] / 2**20:.1f} MiB")  # fmt: skip
        for m in r["remines"]:
            print(f"  remine, {m['remine']:<26} {m['seconds']:7.2f} s = "
                  f"{100 * m['fraction_of_first_run']:5.1f} % of the first run; "
                  f"{m['rows_searched_again']} of {m['tier3_queries']} tier-3 rows "
                  "searched again")  # fmt: skip
            print(f"    of which mining {m['mining_s']}")
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    names = [w for w in (args[0] if args else "100k").split(",") if w]
    run_pool(names, int(args[1]) if len(args) > 1 else 32)
