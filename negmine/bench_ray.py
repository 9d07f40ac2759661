"""``negmine bench --executors``: the Ray executor against the in-process one.

Each workload runs in a fresh child process with ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` removed from its environment (see :mod:`negmine.bench`).
The child starts a local Ray instance with the machine's CPUs first (a cluster
is normally up before mining starts; its start-up is reported apart), then
mines the same plan in-process, on Ray, and in-process again, exact and at
``nprobe``; the overhead is Ray's time over the mean of the two in-process
runs around it. The per-block compute times, the plan's size in the object
store and the time to put it there are reported for the scale-out estimate
of ``docs/scaling.md``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

__all__ = ["run_executors"]


def _mine(corpus: dict[str, Any], executor: str, nprobe: int | None) -> dict[str, Any]:
    from .miner import NegativeMiner

    t0 = time.perf_counter()
    miner = NegativeMiner(**corpus, n_neg=12, tier_proportions=[3, 4, 3, 2], adjacent_k=3,
                          nprobe=nprobe, executor=executor)  # fmt: skip
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, _, _, stats = miner.mine_arrays()
    ex = stats["executor"]
    return {"plan_s": plan_s, "mine_s": time.perf_counter() - t0, "ids": ids,
            "timings": stats["timings_seconds"], "executor": ex}  # fmt: skip


def _plan_bytes(corpus: dict[str, Any], nprobe: int | None) -> int:
    import pickle

    from .miner import NegativeMiner

    miner = NegativeMiner(**corpus, n_neg=12, nprobe=nprobe)
    return len(pickle.dumps(miner.plan, protocol=5))


def _child(name: str, nprobe: int) -> dict[str, Any]:
    import numpy as np
    import ray

    from .bench import _DIM, WORKLOADS
    from .executor import cpu_count
    from .synth import make_corpus

    n_src, n_pairs, n_c = WORKLOADS[name]
    corpus = make_corpus(n_src, n_c, n_pairs, _DIM, seed=0)
    t0 = time.perf_counter()
    ray.init(num_cpus=cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", _system_config={"worker_niceness": 0})  # fmt: skip
    start_s = time.perf_counter() - t0
    rows = []
    searches = [(f"nprobe {nprobe}", nprobe)]
    if name != "1m":  # exact at a million pairs takes over an hour per run here
        searches.insert(0, ("exact", None))
    for label, probe in searches:
        a = _mine(corpus, "local", probe)
        r = _mine(corpus, "ray", probe)
        b = _mine(corpus, "local", probe)
        same = bool(np.array_equal(a["ids"], r["ids"]) and np.array_equal(a["ids"], b["ids"]))
        local = (a["mine_s"] + b["mine_s"]) / 2
        secs = r["executor"]["block_seconds"]
        rows.append({
            "search": label, "local_s": [round(a["mine_s"], 2), round(b["mine_s"], 2)],
            "ray_s": round(r["mine_s"], 2), "overhead": round(r["mine_s"] / local - 1, 4),
            "identical": same, "plan_s": round(a["plan_s"], 2),
            "put_s": r["executor"].get("plan_put_seconds"),
            "plan_bytes": _plan_bytes(corpus, probe),
            "tier3_blocks": len(secs["tier3"]), "tier3_block_s": _summary(secs["tier3"]),
            "pair_blocks": len(secs["pairs"]), "pair_block_s": _summary(secs["pairs"]),
            "validate_s": a["timings"].get("validate"),
        })  # fmt: skip
    ray.shutdown()
    return {"workload": name, "sources": n_src, "pairs": n_pairs, "clusters": n_c,
            "cpus": cpu_count(), "ray_start_s": round(start_s, 2), "rows": rows}  # fmt: skip


def _summary(xs: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(xs or [0.0])
    return {"mean": round(float(a.mean()), 3), "max": round(float(a.max()), 3),
            "total": round(float(a.sum()), 2)}  # fmt: skip


def run_executors(workloads: list[str], nprobe: int = 16) -> list[dict[str, Any]]:
    """Run the executor comparison on each workload and print it; returns the figures."""
    from .bench import WORKLOADS, _spawn_module

    for name in workloads:
        if name not in WORKLOADS:
            raise ValueError(f"`--workloads` must name among {sorted(WORKLOADS)}; got '{name}'.")
    out = []
    for name in workloads:
        r = _spawn_module("negmine.bench_ray", f"--child={name}:{nprobe}")
        out.append(r)
        print(f"{name}: {r['sources']:,} sources, {r['pairs']:,} pairs, {r['clusters']} "
              f"clusters, {r['cpus']} CPUs; local Ray instance started in "
              f"{r['ray_start_s']} s")  # fmt: skip
        print("target: Ray overhead <= 10 % of in-process mining, same bytes")
        for row in r["rows"]:
            print(f"  {row['search']:<10} in-process {row['local_s']} s, Ray {row['ray_s']} s: "
                  f"overhead {100 * row['overhead']:+.1f} %, identical ids: {row['identical']}; "
                  f"plan {row['plan_bytes'] / 2**20:,.0f} MiB put in {row['put_s']} s; "
                  f"{row['tier3_blocks']} tier-3 blocks {row['tier3_block_s']} s, "
                  f"{row['pair_blocks']} pair blocks {row['pair_block_s']} s",
                  flush=True)  # fmt: skip
    return out


if __name__ == "__main__":
    arg = sys.argv[1] if len(sys.argv) > 1 else ""
    if not arg.startswith("--child="):
        print("usage: negmine bench --executors (this module runs its own children)",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    name, _, probe = arg.split("=", 1)[1].partition(":")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    print(json.dumps(_child(name, int(probe))))
