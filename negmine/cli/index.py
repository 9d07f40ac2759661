"""``negmine index build|check|info|list``: the source indexes of tier 3."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from .options import HelpFormatter, Parser, add_command, deprecated_alias

__all__ = ["register"]

log = logging.getLogger("negmine")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``index`` and its four actions to the command parsers."""
    p = sub.add_parser(
        "index", help="build, check, describe or list source indexes",
        description="Build, check, describe or list the indexes tier 3 searches.",
        epilog="example:\n  negmine index build data/ --out indexes/w1m --spec clusters,SQ8\n"
        "  negmine index check indexes/w1m --data data/ --nprobe 16 --min-recall 0.95",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", parser_class=Parser)
    isub.required = True
    _register_build(isub, common)
    _register_check(isub, common)
    i = add_command(isub, common, "info", help="print an index's manifest as JSON",
                    example="negmine index info indexes/w1m")  # fmt: skip
    i.add_argument("path", type=Path, metavar="INDEX_DIR", help="an index directory")
    i.set_defaults(func=_info)
    ls = add_command(isub, common, "list", help="list the indexes in a store directory",
                     example="negmine index list indexes/")  # fmt: skip
    ls.add_argument("store", type=Path, nargs="?", default=Path("indexes"), metavar="STORE",
                    help="store directory (default: indexes)")  # fmt: skip
    ls.set_defaults(func=_list)


def _register_build(isub: Any, common: argparse.ArgumentParser) -> None:
    b = add_command(isub, common, "build", help="build an index and save it as a directory",
                    example="negmine index build data/ --out indexes/w1m "
                    "--spec clusters,SQ8")  # fmt: skip
    b.add_argument("sources", type=Path, metavar="SOURCES",
                   help="the source embeddings: a .npy/.pt file or a data directory")  # fmt: skip
    b.add_argument("--out", type=Path, required=True, metavar="INDEX_DIR",
                   help="the index directory to write")  # fmt: skip
    b.add_argument(
        "--spec", default="flat",
        help="'flat' (exact, default), 'clusters' (lists = the data's clusters; "
        "'clusters,SQ8' stores them as 8-bit codes searched with integer products and "
        "re-ranked exactly; 'clusters,fast', the recommended storage, also splits each "
        "cluster into sub-lists of about 192 KiB of codes, 512 sources at d=384 (nprobe "
        "then counts sub-lists; "
        "'clusters,SQ8,sub<n>' sets their size); 'clusters,PCA96' / 'clusters,PCA' "
        "reduce them, 'clusters,fp16' halves them), 'auto' (by size and "
        "--memory-budget) "
        "or a FAISS factory string such as 'HNSW32' or 'IVF4096,Flat'",
    )  # fmt: skip
    b.add_argument("--overwrite", action="store_true",
                   help="replace an index already at INDEX_DIR (refused otherwise)")  # fmt: skip
    b.add_argument("--clusters", type=Path, default=None, metavar="FILE",
                   help="cluster of each source (.npy/.pt); default: the data dir's")  # fmt: skip
    b.add_argument("--centroids", type=Path, default=None, metavar="FILE",
                   help="cluster centroids (.npy/.pt); default: from a data dir")  # fmt: skip
    b.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="RAM the index may use, e.g. 8G (for 'auto'; default: half)")  # fmt: skip
    b.add_argument("--seed", type=int, default=1234,
                   help="seed of the training of trained indexes "
                   "(IVF, PQ; default 1234)")  # fmt: skip
    b.set_defaults(func=_build)


def _register_check(isub: Any, common: argparse.ArgumentParser) -> None:
    ck = add_command(
        isub, common, "check", help="measure an index's tier-3 recall against exact search",
        example="negmine index check indexes/w1m --data data/ --nprobe 16 --min-recall 0.95",
        description="Measure an index's tier-3 recall@k against exact search on a sample of "
        "the data's tier-3 queries. With --min-recall, exit 1 when the recall is lower.",
    )  # fmt: skip
    ck.add_argument("path", type=Path, metavar="INDEX_DIR", help="an index directory")
    ck.add_argument("--data", type=Path, required=True, metavar="DATA_DIR",
                    help="the inputs the index is searched for "
                    "(as negmine mine reads them)")  # fmt: skip
    ck.add_argument("--recall-sample", type=int, default=2000, metavar="N",
                    help="tier-3 queries checked (default 2000)")  # fmt: skip
    deprecated_alias(ck, "--sample", "--recall-sample", "recall_sample", type=int)
    ck.add_argument("--k", type=int, default=3, help="recall@k (default 3)")
    ck.add_argument("--min-recall", type=float, default=None, metavar="R",
                    help="exit 1 when the measured recall is below R (0 < R <= 1)")  # fmt: skip
    ck.add_argument("--nprobe", type=int, default=None, metavar="N",
                    help="clusters probed besides the pair's own (probe indexes)")  # fmt: skip
    ck.add_argument("--ef-search", type=int, default=None, metavar="N",
                    help="efSearch of an HNSW index (or quantizer)")  # fmt: skip
    ck.add_argument("--rerank", type=int, default=None, metavar="N",
                    help="fetch N times the candidates and keep the best "
                    "by exact cosine")  # fmt: skip
    ck.add_argument("--target-recall", type=float, default=None, metavar="R",
                    help="first tune --nprobe, --ef-search or --rerank to the cheapest "
                    "settings reaching recall@k >= R (an approximate index given no "
                    "settings is tuned to 0.95)")  # fmt: skip
    ck.add_argument("--held-out", action="store_true",
                    help="check queries outside the sample a tuning searches (by default "
                         "the check measures that sample, where a tuned search is above its "
                         "target by construction)")  # fmt: skip
    ck.add_argument("--adjacent-k", type=int, default=3, help=argparse.SUPPRESS)
    ck.set_defaults(func=_check)


def _load_matrix(path: Path) -> Any:
    import numpy as np

    if path.is_dir():
        from ..io.datasets import load_dataset

        return load_dataset(path).arrays["source_embeddings"]
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    if path.suffix == ".pt":
        from ..io import load_pt_tensor

        return load_pt_tensor(path)
    raise ValueError(f"`SOURCES` must be a .npy or .pt file or a data directory; got '{path}'.")


def _build_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """Sources, cluster ids and centroids for ``index build``."""
    scl = _load_matrix(args.clusters) if args.clusters else None
    cen = _load_matrix(args.centroids) if args.centroids else None
    if args.sources.is_dir():
        from ..io.datasets import load_dataset

        arrays = load_dataset(args.sources).arrays
        src = arrays["source_embeddings"]
        scl = arrays["source_cluster_ids"] if scl is None else scl
        cen = arrays["centroid_embeddings"] if cen is None else cen
    else:
        src = _load_matrix(args.sources)
    if args.spec.strip().lower().startswith("clusters") and (scl is None or cen is None):
        raise ValueError(
            "`--spec clusters` needs the clusters: pass a data directory as SOURCES, or "
            "--clusters FILE and --centroids FILE."
        )
    return src, scl, cen


def _build(args: argparse.Namespace) -> int:
    from ..index import SourceIndex

    t0 = time.perf_counter()
    src, scl, cen = _build_inputs(args)
    idx = SourceIndex.build(src, args.spec, source_cluster_ids=scl, centroid_embeddings=cen,
                            memory_budget=args.memory_budget, seed=args.seed)  # fmt: skip
    if "auto" in idx.manifest:
        log.info("auto: %s (%s)", idx.manifest["auto"]["chose"], idx.manifest["auto"]["reason"])
    idx.save(args.out, overwrite=args.overwrite)
    log.info("built %s over %d sources in %.1f s", idx.manifest["factory"], idx.ntotal,
             time.perf_counter() - t0)  # fmt: skip
    print(args.out)
    return 0


def _check(args: argparse.Namespace) -> int:
    from ..io.datasets import load_dataset
    from ..miner import NegativeMiner
    from .mine import tuning_line

    if args.min_recall is not None and not 0 < args.min_recall <= 1:
        raise ValueError(f"`--min-recall` must lie in (0, 1]; got {args.min_recall}.")
    ds = load_dataset(args.data)
    # The same sample size as the check: tuning then measures on the very queries checked.
    miner = NegativeMiner(**ds.arrays, n_neg=max(args.k, 1), tier_proportions=[0, 0, 1, 0],
                          adjacent_k=args.adjacent_k, index=args.path, nprobe=args.nprobe,
                          ef_search=args.ef_search, rerank=args.rerank, validate=False,
                          target_recall=args.target_recall,
                          recall_sample=max(args.recall_sample, 0))  # fmt: skip
    rep = miner.check_recall(sample=args.recall_sample, k=args.k, held_out=args.held_out)
    desc = rep["index"]
    params = ", ".join(f"{k}={v}" for k, v in desc.get("search_params", {}).items()) or "none"
    kind = "exact" if desc.get("exact") else "approximate"
    print(f"index      {args.path} ({desc.get('spec', desc.get('factory'))}: "
          f"{desc.get('factory')}, {kind})")  # fmt: skip
    print(f"search     {params}")
    if miner.tuning:
        print(f"tuned      {tuning_line(miner.tuning)}")
    which = "held-out tier-3 queries" if rep["held_out"] else "tier-3 queries"
    print(f"recall@{rep['k']:<3} {rep['recall']:.4f} on {rep['sample']} {which} "
          f"(pair's cluster and the question's positives excluded)")  # fmt: skip
    print(f"time       {rep['seconds_search']:.3f} s searching, {rep['seconds_exact']:.3f} s exact")
    if args.min_recall is not None and rep["recall"] < args.min_recall:
        print(f"failed: recall@{rep['k']} {rep['recall']:.4f} is below --min-recall "
              f"{args.min_recall}; raise --nprobe, --ef-search or --rerank")  # fmt: skip
        return 1
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..index import read_manifest

    print(json.dumps(read_manifest(args.path), indent=2, sort_keys=True))
    return 0


def _list(args: argparse.Namespace) -> int:
    from ..index import list_indexes

    entries = list_indexes(args.store)
    print(f"{'name':<24}{'spec':<16}{'factory':<16}{'ntotal':>10}{'d':>6}{'MB':>9}  created")
    for e in entries:
        m = e.manifest
        if m is None:
            print(f"{e.name:<24}unreadable: {e.error}")
            continue
        mb = m.get("index_bytes", 0) / 2**20
        spec = str(m.get("spec", m["factory"]))
        print(f"{e.name:<24}{spec:<16}{m['factory']:<16}{m['ntotal']:>10}{m['d']:>6}"
              f"{mb:>9.1f}  {m.get('created', '?')}")  # fmt: skip
    return 0
