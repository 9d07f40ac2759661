"""``negmine prepare``: texts (or embeddings) in, a data directory for ``negmine mine`` out."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["register", "run"]

log = logging.getLogger("negmine")

EXAMPLE = """example:
  negmine prepare pairs.jsonl --model sentence-transformers/all-MiniLM-L6-v2 --out data/
  negmine mine data/ --out run/ && negmine export run/ --data data/ --format triplet --out train/

  negmine prepare pairs.npy --embeddings-only --questions q.npy --sources s.npy --out data/
"""


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the ``prepare`` command to the sub-parsers ``sub``."""
    p = sub.add_parser(
        "prepare",
        parents=[common],
        help="texts to a data directory: dedupe, embed, cluster",
        description="Dedupe (question, passage) texts into ids, embed them with a "
        "sentence-transformers model, cluster the passages (spherical k-means) and write "
        "DATA_DIR for `negmine mine`, with the texts for `negmine export`.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "pairs",
        type=Path,
        metavar="PAIRS",
        help=".jsonl, .parquet or saved HF dataset directory of (question, passage) "
        "rows; with --embeddings-only an int .npy [P, 2] of (question, source) ids",
    )
    p.add_argument("--out", type=Path, required=True, metavar="DATA_DIR",
                   help="the data directory to write (negmine mine input, plus texts)")  # fmt: skip
    p.add_argument(
        "--model",
        default=None,
        metavar="NAME_OR_PATH",
        help="sentence-transformers model (name or local directory)",
    )
    p.add_argument("--anchor-column", default=None, help="question column (default: the first)")
    p.add_argument("--positive-column", default=None, help="passage column (default: the next)")
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="FILE",
        help="more passages (.txt lines, or .jsonl/.parquet with a 'text' column)",
    )
    p.add_argument(
        "--n-clusters",
        default="auto",
        metavar="auto|N",
        help="k-means clusters (default auto: about one per 64 passages)",
    )
    p.add_argument("--seed", type=int, default=42, help="k-means seed (default 42)")
    p.add_argument("--query-prompt", default=None, help="text put before every question")
    p.add_argument("--query-prompt-name", default=None,
                   help="a prompt of the model's own, by name, for the questions")  # fmt: skip
    p.add_argument("--corpus-prompt", default=None, help="text put before every passage")
    p.add_argument("--corpus-prompt-name", default=None,
                   help="a prompt of the model's own, by name, for the passages")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default 32)")
    p.add_argument("--device", default=None, help="model device (default: the model's choice)")
    p.add_argument(
        "--cache-folder",
        type=Path,
        default=None,
        help="reuse embeddings across runs with the same model, prompts and texts",
    )
    e = p.add_argument_group("embeddings instead of a model")
    e.add_argument(
        "--embeddings-only",
        action="store_true",
        help="PAIRS is a .npy of (question, source) ids; cluster given embeddings",
    )
    e.add_argument("--questions", type=Path, default=None, metavar="Q.npy",
                   help="with --embeddings-only: question embeddings [Q, d]")  # fmt: skip
    e.add_argument("--sources", type=Path, default=None, metavar="S.npy",
                   help="with --embeddings-only: source embeddings [S, d]")  # fmt: skip
    p.set_defaults(func=run)


def _column(cols: dict[str, list[Any]], name: str | None, other: str | None, what: str) -> str:
    names = list(cols)
    if name is not None:
        if name not in cols:
            raise ValueError(
                f"`--{what}-column` must name a column of PAIRS {names}; got {name!r}."
            )
        return name
    rest = [c for c in names if c != other]
    if len(names) < 2 or not rest:
        raise ValueError(f"`PAIRS` must have two columns (question, passage); got {names}.")
    return rest[0]


def _corpus(path: Path | None) -> list[str] | None:
    from ..prepare import read_table

    if path is None:
        return None
    cols = read_table(path)
    if "text" in cols:
        return cols["text"]
    if len(cols) == 1:
        return next(iter(cols.values()))
    raise ValueError(f"`--corpus` must have a 'text' column or a single column; got {list(cols)}.")


def _run_embeddings(args: argparse.Namespace) -> int:
    from ..io.datasets import save_dataset
    from ..prepare import prepare_arrays

    if args.questions is None or args.sources is None:
        raise ValueError("`--embeddings-only` needs --questions Q.npy and --sources S.npy.")
    if args.model is not None:
        raise ValueError("`--model` and `--embeddings-only` exclude each other; drop one.")
    for name, path in (("PAIRS", args.pairs), ("--questions", args.questions),
                       ("--sources", args.sources)):  # fmt: skip
        if path.suffix != ".npy":
            raise ValueError(f"`{name}` must be a .npy file with --embeddings-only; got '{path}'.")
    load = {"allow_pickle": False}
    pairs = np.load(args.pairs, **load)
    arrays, info = prepare_arrays(
        np.load(args.sources, **load),
        np.load(args.questions, **load),
        pairs,
        n_clusters=args.n_clusters,
        seed=args.seed,
    )
    save_dataset(args.out, arrays)
    log.info("%d sources in %d clusters", len(arrays["source_embeddings"]), info["n_clusters"])
    print(args.out)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``negmine prepare``; returns the exit code."""
    if args.embeddings_only:
        return _run_embeddings(args)
    if args.model is None:
        raise ValueError("`--model` is required (or pass --embeddings-only with .npy inputs).")
    from ..integrations.cache import EmbeddingCache
    from ..integrations.encode import embed_texts, model_identity
    from ..prepare import check_texts, pairs_from_texts, prepare_arrays, read_table, save_prepared

    cols = read_table(args.pairs)
    a = _column(cols, args.anchor_column, None, "anchor")
    p = _column(cols, args.positive_column, a, "positive")
    texts = pairs_from_texts(
        check_texts(cols[a], f"PAIRS[{a!r}]"),
        check_texts(cols[p], f"PAIRS[{p!r}]"),
        _corpus(args.corpus),
    )
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device=args.device)
    t0 = time.perf_counter()
    cache = EmbeddingCache(args.cache_folder) if args.cache_folder else None
    qry, src, _key, _t = embed_texts(
        model,
        texts.queries,
        texts.corpus,
        query_prompt_name=args.query_prompt_name,
        query_prompt=args.query_prompt,
        corpus_prompt_name=args.corpus_prompt_name,
        corpus_prompt=args.corpus_prompt,
        batch_size=args.batch_size,
        show_progress=not args.quiet,
        cache=cache,
    )
    arrays, info = prepare_arrays(
        src, qry, texts.pair_indices, n_clusters=args.n_clusters, seed=args.seed
    )
    info.update(
        anchor_column_name=a,
        positive_column_name=p,
        model=model_identity(model),
        query_prompt=args.query_prompt,
        query_prompt_name=args.query_prompt_name,
        corpus_prompt=args.corpus_prompt,
        corpus_prompt_name=args.corpus_prompt_name,
    )
    save_prepared(args.out, arrays, texts, info)
    log.info(
        "%d questions, %d passages, %d pairs (%d duplicate rows), %d clusters in %.1f s",
        len(texts.queries),
        len(texts.corpus),
        len(texts.pair_indices),
        texts.n_duplicate_rows,
        info["n_clusters"],
        time.perf_counter() - t0,
    )
    print(args.out)
    return 0
