"""``negmine bench --store``: index storages side by side on a memory-mapped dataset.

One run builds each storage once (float32 cluster lists, reduced lists, ...),
then, each step in a child process of its own (its own peak RSS, read from
``VmHWM``):

* mines every pair with the search tuned to a recall target (the tuning timed
  apart from the mining, the recall measured on the mined ids of the queries
  tuning measured, and again, after the peak RSS is read, on as many queries
  tuning never searched: see :func:`negmine.recall.held_out_sample`);
* with ``curve``, searches an even sample of tier-3 queries at each ``nprobe``
  of a ladder: recall@3 and seconds, scaled to all queries;
* times exact tier 3 on an even sample, before and after, and scales the faster.

The dataset is saved as ``.npy`` files and memory-mapped, as a user's would be.
Children run without ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` (see
:mod:`negmine.bench`). The synthetic corpus's spectrum follows real sentence
embeddings unless ``corpus="latent"`` (see :func:`negmine.synth.make_corpus`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

from ._process import return_freed_blocks
from .bench import _make_work_dir, _peak_rss_mb, _spawn_module
from .bench_floor import products_floor

__all__ = ["STORE_WORKLOADS", "run_store"]

#: name -> (sources, pairs, clusters, d)
STORE_WORKLOADS = {
    "20k": (20_000, 10_000, 50, 384),
    "100k": (100_000, 100_000, 300, 384),
    "1m": (1_000_000, 1_000_000, 1000, 384),
    "10m": (10_000_000, 10_000_000, 4096, 128),
}
_PROPORTIONS = [3, 4, 3, 2]
_MINE = {"n_neg": 12, "tier_proportions": _PROPORTIONS, "adjacent_k": 3}
_RECALL_SAMPLE = 2000


def _spawn(arg: str) -> dict[str, Any]:
    return _spawn_module("negmine.bench_store", arg)


def _dataset(work: str) -> dict[str, np.ndarray]:
    from .io.datasets import load_dataset

    return load_dataset(os.path.join(work, "data")).arrays


def _child_prepare(name: str, corpus: str, work: str) -> dict[str, Any]:
    from .io.datasets import save_dataset
    from .synth import make_corpus

    n_src, n_pairs, n_c, d = STORE_WORKLOADS[name]
    spectrum = None if corpus == "latent" else corpus
    t0 = time.perf_counter()
    data = make_corpus(n_src, n_c, n_pairs, d, seed=0, spectrum=spectrum)
    gen = time.perf_counter() - t0
    save_dataset(os.path.join(work, "data"), data)
    return {
        "generate_s": round(gen, 1),
        "questions": len(data["question_embeddings"]),
        "source_bytes": int(data["source_embeddings"].nbytes),
    }


def _child_build(work: str, spec: str) -> dict[str, Any]:
    from .index import SourceIndex

    a = _dataset(work)
    t0 = time.perf_counter()
    idx = SourceIndex.build(
        a["source_embeddings"],
        spec,
        source_cluster_ids=a["source_cluster_ids"],
        centroid_embeddings=a["centroid_embeddings"],
    )
    build = time.perf_counter() - t0
    idx.save(os.path.join(work, _slug(spec)))
    return {
        "spec": spec,
        "build_s": round(build, 1),
        "index_bytes": idx.manifest["index_bytes"],
        "factory": idx.manifest["factory"],
        "reduction": idx.reduction,
        "build_peak_rss_mb": round(_peak_rss_mb()),
    }


def _child_mine(work: str, spec: str, target: float, pairs: int = 0) -> dict[str, Any]:
    from .index import SourceIndex
    from .miner import NegativeMiner

    idx = SourceIndex.load(os.path.join(work, _slug(spec)), mmap=True)
    a = dict(_dataset(work))
    n_all = len(a["pair_indices"])
    if 0 < pairs < n_all:  # every pair of an even sample of clusters, the time scaled to all
        take = _cluster_sample(np.asarray(a["pair_cluster_ids"]), pairs)
        a["pair_indices"] = np.asarray(a["pair_indices"][take])
        a["pair_cluster_ids"] = np.asarray(a["pair_cluster_ids"][take])
    t0 = time.perf_counter()
    m = NegativeMiner(**a, **_MINE, index=idx, target_recall=target, recall_sample=_RECALL_SAMPLE)
    setup = time.perf_counter() - t0
    tun = m.tuning or {}
    t0 = time.perf_counter()
    m.mine_arrays()
    st = m.last_stats or {}
    rec = st.get("tier3_recall") or {}
    secs = time.perf_counter() - t0 - rec.get("seconds", 0.0)  # the check is not mining
    tm = st.get("timings_seconds", {})
    cpu = st.get("cpu_seconds", {})
    scale = n_all / len(a["pair_indices"])
    peak = round(_peak_rss_mb())
    held = m.check_recall(sample=_RECALL_SAMPLE, k=3, held_out=True)
    floor = products_floor(m.plan, m.plan.config.nprobe) if m.plan.config.nprobe else None
    if floor is not None:
        floor["floor_s"] = round(floor["floor_s"] * scale, 2)
        floor["ops_per_s"] = round(floor["ops_per_s"])
    return {
        "spec": spec,
        "pairs_mined": len(a["pair_indices"]),
        "scale": round(scale, 3),
        "settings": tun.get("settings"),
        "tuning_s": tun.get("seconds"),
        "tuning_recall": tun.get("recall"),
        "setup_s": round(setup - (tun.get("seconds") or 0.0), 2),
        "mine_s": round(secs * scale, 2),
        "recall": rec.get("recall"),
        "recall_held_out": held["recall"],
        "held_out_sample": held["sample"],
        "tier3_s": round(tm.get("tier3_search", 0.0) * scale, 2),
        # CPU seconds of the process's threads, the recall check left out as above
        "cpu_s": round((cpu.get("total", 0.0) - cpu.get("tier3_recall", 0.0)) * scale, 2),
        "tier3_cpu_s": round(cpu.get("tier3_search", 0.0) * scale, 2),
        "tier3_queries": st.get("tier3_queries"),
        "peak_rss_mb": peak,
        "products_floor": floor,
        "compiled": st.get("compiled"),
    }


def _cluster_sample(pair_cluster: np.ndarray, pairs: int) -> np.ndarray:
    """Rows of every pair of an even sample of clusters, about ``pairs`` of them.

    The tier-3 search works on the queries of one cluster together, so a
    sample that keeps each chosen cluster's queries whole costs per pair what
    the full run does; an even sample of single pairs would leave a few
    queries per cluster and cost several times more per pair.
    """
    counts = np.bincount(pair_cluster)
    busy = np.flatnonzero(counts)
    n = len(busy)
    for m in range(1, n + 1):  # the fewest evenly spaced clusters holding enough pairs
        chosen = busy[np.unique(np.linspace(0, n - 1, m).round().astype(np.int64))]
        if counts[chosen].sum() >= pairs:
            break
    return np.flatnonzero(np.isin(pair_cluster, chosen))


def _tier3_sample(plan: Any, sample: int) -> tuple[np.ndarray, ...]:
    from .vectors import question_vectors

    pick = np.unique(np.linspace(0, plan.n_tier3 - 1, min(sample, plan.n_tier3)).astype(np.int64))
    cl, qq = plan.t3_cluster[pick], plan.t3_question[pick]
    qvec, rows = question_vectors(plan.inputs.questions, qq)
    return pick, qvec, rows, cl, qq


def _child_curve(work: str, spec: str, nprobes: str) -> dict[str, Any]:
    from .index import SourceIndex
    from .miner import NegativeMiner
    from .search.probe import recall_at_k

    idx = SourceIndex.load(os.path.join(work, _slug(spec)), mmap=True)
    a = _dataset(work)
    plan = NegativeMiner(**a, **_MINE, index=idx, nprobe=1).plan
    pick, qvec, rows, cl, qq = _tier3_sample(plan, 8192)
    _, exact = plan.backend.reference(qvec, rows, cl, qq, 3)
    points = []
    settings = [int(x) for x in nprobes.split(",")]
    # One untimed search first: what happens once per run (converting 8-bit codes,
    # reading the mapped index in) must not be scaled to all queries.
    plan.with_search(nprobe=settings[0]).backend.search(qvec, rows, cl, qq, 3)
    for p in settings:
        cand = plan.with_search(nprobe=p)
        backend = cand.backend
        t0 = time.perf_counter()
        _, got = backend.search(qvec, rows, cl, qq, 3)
        secs = time.perf_counter() - t0
        points.append({
            "nprobe": p, "rerank": cand.search_params().get("rerank"),
            "recall": round(float(recall_at_k(got, exact)), 4),
            "tier3_scaled_s": round(secs * plan.n_tier3 / pick.size, 1),
        })  # fmt: skip
    return {"spec": spec, "sample": int(pick.size), "points": points}


def _child_exact(work: str, sample: int) -> dict[str, Any]:
    from .miner import NegativeMiner

    a = _dataset(work)
    t0 = time.perf_counter()
    plan = NegativeMiner(**a, **_MINE).plan
    prep = time.perf_counter() - t0  # the plan: layout and the cluster-sorted copy
    pick, qvec, rows, cl, qq = _tier3_sample(plan, sample)
    t0 = time.perf_counter()
    plan.backend.search(qvec, rows, cl, qq, _PROPORTIONS[2])
    secs = time.perf_counter() - t0
    return {
        "sample": int(pick.size),
        "queries": int(plan.n_tier3),
        "sample_s": round(secs, 2),
        "scaled_s": round(secs * plan.n_tier3 / pick.size, 1),
        "prepare_s": round(prep, 2),
    }


def _print_run(spec: str, r: dict[str, Any], target: float) -> None:
    """The lines of one storage's mining run (and its products floor)."""
    print(f"[{spec}] tuned to recall@3 >= {target} in {r['tuning_s']} s: "
          f"{r['settings']}; mining {r['mine_s']} s (tier 3 {r['tier3_s']} s), "
          f"recall@3 {r['recall']} (held out: {r['recall_held_out']} on "
          f"{r['held_out_sample']} other queries); tuning = "
          f"{r['tuning_s'] / r['mine_s']:.1%} of "
          f"mining; peak RSS {r['peak_rss_mb']:,} MB = {r['rss_ratio']}x the sources"
          + (f"; compiled kernels (numba {r['compiled']})" if r.get("compiled") else ""),
          flush=True)  # fmt: skip
    if r.get("cpu_s"):
        rest, rest_s = r["cpu_s"] - r["tier3_cpu_s"], r["mine_s"] - r["tier3_s"]

        def busy(cpu: float, wall: float) -> str:
            return f"{cpu:,.1f} s on {cpu / wall:.2f} cores" if wall > 0 else f"{cpu:,.1f} s"

        print(f"[{spec}] CPU of all threads {busy(r['cpu_s'], r['mine_s'])}: tier 3 "
              f"{busy(r['tier3_cpu_s'], r['tier3_s'])}, the rest {busy(rest, rest_s)}",
              flush=True)  # fmt: skip
    if r["products_floor"]:
        print(f"[{spec}] {_floor_text(r)}", flush=True)


def _floor_text(r: dict[str, Any]) -> str:
    """One line on a run's products floor (:mod:`negmine.bench_floor`)."""
    f = r["products_floor"]
    unit = "GOP/s" if f["kind"] == "int8" else "GFLOP/s"
    chosen = f.get("choice_per_query", 0)
    also = f" (+ {chosen:,} sub-list centroids)" if chosen else ""
    return (f"products floor {f['floor_s']:,.1f} s: {f['scanned_per_query']:,.0f} sources{also} "
            f"scanned per tier-3 query, {f['kind']} products [{f['shape'][0]} x {f['width']}] @ "
            f"[{f['width']} x {f['shape'][1]}] at {f['ops_per_s'] / 1e9:,.0f} {unit} here; "
            f"mining = {r['mine_s'] / f['floor_s']:.1f}x the floor")  # fmt: skip


def _slug(spec: str) -> str:
    return "index-" + spec.replace(",", "-").lower()


def run_store(
    name: str,
    specs: list[str],
    target: float = 0.95,
    *,
    corpus: str = "minilm",
    curve: list[int] | None = None,
    exact_sample: int = 8192,
    work_dir: str | None = None,
    pairs_sample: int = 0,
) -> dict[str, Any]:
    """Build each storage of ``specs`` once and mine workload ``name`` with each at
    recall ``target``; print the comparison and return the figures.

    ``pairs_sample``: mine every pair of an even sample of clusters holding about
    that many pairs instead of all of them and scale the mining seconds to all
    (said in the output); for workloads whose full run would take hours on the
    machine at hand.
    """
    if name not in STORE_WORKLOADS:
        raise ValueError(f"`--store` must name among {sorted(STORE_WORKLOADS)}; got '{name}'.")
    n_src, n_pairs, n_c, d = STORE_WORKLOADS[name]
    work = _make_work_dir(work_dir)
    try:
        prep = _spawn(f"--prepare={name}:{corpus}:{work}")
        src_mb = prep["source_bytes"] / 2**20
        print(f"{name}: {n_src:,} sources, {n_pairs:,} pairs, {n_c} clusters, d={d}, corpus "
              f"'{corpus}' (source embeddings {src_mb:,.0f} MiB; generated in "
              f"{prep['generate_s']} s)", flush=True)  # fmt: skip
        ex = [] if not exact_sample else [_spawn(f"--exact={work}:{exact_sample}")]
        builds, runs, curves = [], [], []
        failed: list[dict[str, str]] = []
        for spec in specs:
            b = _spawn(f"--build={work}:{spec}")
            builds.append(b)
            red = b["reduction"]
            print(f"[{spec}] {b['factory']}: built in {b['build_s']} s, "
                  f"{b['index_bytes'] / 2**20:,.0f} MiB"
                  + (f", {red['dims']} dims keep {red['energy']:.0%} of the energy" if red else "")
                  + f"; build peak RSS {b['build_peak_rss_mb']:,} MB", flush=True)  # fmt: skip
            try:
                r = _spawn(f"--mine={work}:{spec}:{target}:{pairs_sample}")
            except RuntimeError as e:  # e.g. a target this storage cannot reach
                why = str(e).strip().splitlines()[-1]
                print(f"[{spec}] not mined: {why}", flush=True)
                failed.append({"spec": spec, "error": why})
                continue
            r["rss_ratio"] = round(r["peak_rss_mb"] / src_mb, 2)
            runs.append(r)
            _print_run(spec, r, target)
            if curve:
                cv = _spawn(f"--curve={work}:{spec}:{','.join(map(str, curve))}")
                curves.append(cv)
                pts = "; ".join(
                    f"nprobe {p['nprobe']}: {p['recall']} in ~{p['tier3_scaled_s']} s"
                    for p in cv["points"]
                )
                print(f"[{spec}] recall@3 / tier-3 seconds (all queries, scaled from "
                      f"{cv['sample']}): {pts}", flush=True)  # fmt: skip
        if exact_sample:
            ex.append(_spawn(f"--exact={work}:{exact_sample}"))
            # The faster of the two: a slow one was disturbed (the first often pays
            # for the freshly written files), and a slower exact would flatter the ratios.
            t3 = min(ex[0]["scaled_s"], ex[1]["scaled_s"])
            print(
                f"exact tier 3: {ex[0]['sample']} queries in {ex[0]['sample_s']} / "
                f"{ex[1]['sample_s']} s -> {ex[0]['queries']:,} queries ~ {t3:,.0f} s "
                f"(the faster)"
            )
            for r in runs:
                est = t3 + ex[0]["prepare_s"] + r["mine_s"] - (r["tier3_s"] or 0)
                r["exact_mine_est_s"] = round(est, 1)
                r["speedup_vs_exact"] = round(est / r["mine_s"], 1)
        base = runs[0]
        if pairs_sample and pairs_sample < n_pairs:
            print(f"(mining timed on every pair of an even sample of clusters, "
                  f"{base['pairs_mined']:,} of the {n_pairs:,} pairs, scaled to all)")  # fmt: skip
        print(f"side by side at recall@3 >= {target}:")
        for r in runs:
            vs = f"{base['mine_s'] / r['mine_s']:.1f}x {specs[0]}"
            ex_txt = f", {r['speedup_vs_exact']}x exact" if "speedup_vs_exact" in r else ""
            if r["products_floor"]:
                floor = r["products_floor"]["floor_s"]
                ex_txt += f", {r['mine_s'] / floor:.1f}x its products floor"
            print(f"  {r['spec']:<16} mining {r['mine_s']:>7.1f} s  ({vs}{ex_txt}); recall@3 "
                  f"{r['recall']} (held out {r['recall_held_out']}); peak RSS "
                  f"{r['rss_ratio']}x the sources")  # fmt: skip
        for f in failed:
            print(f"  {f['spec']:<16} not mined (see above)")
        return {"workload": name, "corpus": corpus, "prepare": prep, "builds": builds,
                "runs": runs, "failed": failed, "curves": curves, "exact": ex}  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    return_freed_blocks()  # as the negmine command does
    arg = sys.argv[1] if len(sys.argv) > 1 else ""
    flag, _, rest = arg.partition("=")
    if flag == "--prepare":
        name, corpus, work = rest.split(":", 2)
        res = _child_prepare(name, corpus, work)
    elif flag == "--exact":
        work, _, value = rest.rpartition(":")
        res = _child_exact(work, int(value))
    elif flag in ("--build", "--mine", "--curve"):
        parts = rest.split(":")
        if flag == "--build":
            res = _child_build(":".join(parts[:-1]), parts[-1])
        elif flag == "--mine":
            res = _child_mine(":".join(parts[:-3]), parts[-3], float(parts[-2]), int(parts[-1]))
        else:
            res = _child_curve(":".join(parts[:-2]), parts[-2], parts[-1])
    else:
        print("usage: negmine bench --store (this module runs its own children)", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(res))
