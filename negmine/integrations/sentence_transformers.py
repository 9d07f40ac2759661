"""A drop-in for ``sentence_transformers.util.mine_hard_negatives``, mining in four tiers.

::

    from negmine.integrations.sentence_transformers import mine_hard_negatives

    train = mine_hard_negatives(dataset, model, num_negatives=4, output_format="n-tuple")

Texts in, a ``datasets.Dataset`` out, in the column layout sentence-transformers
gives for the same ``output_format`` and ``output_scores``. Between the two:
texts deduplicated into ids, embedded (optionally cached), clustered with
spherical k-means when the data have no clusters, and mined with
:class:`negmine.miner.NegativeMiner`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .._checks import fail
from ..export import ST_FORMATS, st_columns
from ..prepare import PairTexts, pairs_from_texts
from .cache import EmbeddingCache
from .encode import embed_texts

__all__ = ["REFUSED", "mine_hard_negatives"]

log = logging.getLogger(__name__)

#: sentence-transformers parameters negmine does not implement: name -> (the
#: value that means "unused", why it is refused).
REFUSED: dict[str, tuple[Any, str]] = {
    "cross_encoder": (
        None,
        "negmine scores candidates with the bi-encoder's cosine only; "
        "rescore the output with a CrossEncoder yourself",
    ),
    "min_score": (
        None,
        "negmine has no lower score bound; tier 4 draws random negatives on purpose",
    ),
    "include_positives": (False, "negmine never returns a positive as a negative"),
    "use_multi_process": (
        False,
        "encode with a multi-process pool yourself and pass the "
        "embeddings to negmine.prepare_arrays",
    ),
    "as_triplets": (None, "deprecated in sentence-transformers; use output_format"),
    "margin": (None, "deprecated in sentence-transformers; use absolute_margin or relative_margin"),
    "faiss_batch_size": (
        16384,
        "negmine searches in fixed query blocks of its own, so "
        "the output never depends on a batch size",
    ),
}


def _refuse(given: dict[str, Any]) -> None:
    for name, value in given.items():
        if name not in REFUSED:
            raise TypeError(f"mine_hard_negatives() got an unexpected keyword argument '{name}'")
        unused, why = REFUSED[name]
        if value is not unused and value != unused:
            fail(name, f"be left at {unused!r}: negmine does not implement it ({why})", repr(value))


def _columns(dataset: Any, anchor: str | None, positive: str | None) -> tuple[str, str]:
    cols = list(getattr(dataset, "column_names", None) or [])
    if not hasattr(dataset, "column_names"):
        fail("dataset", "be a datasets.Dataset", f"a {type(dataset).__name__}", exc=TypeError)
    for arg, name in (("anchor_column_name", anchor), ("positive_column_name", positive)):
        if name is not None and name not in cols:
            fail(arg, f"name a column of the dataset {cols}", repr(name))
    if anchor is None or positive is None:
        if len(cols) < 2:
            fail("dataset", "have two columns (anchor, positive) or name them", f"columns {cols}")
        anchor = cols[0] if anchor is None else anchor
        positive = next(c for c in cols if c != anchor) if positive is None else positive
    if anchor == positive:
        fail("positive_column_name", "differ from anchor_column_name", repr(positive))
    if len(dataset) == 0:
        fail("dataset", "hold at least one (anchor, positive) row", "an empty dataset")
    for name in (anchor, positive):
        feat = dataset.features[name]
        dtype = getattr(feat, "dtype", None)
        if dtype not in ("string", "large_string"):
            fail(
                f"dataset[{name!r}]",
                "be a column of texts (string)",
                f"a column of {feat}",
                exc=TypeError,
            )
    return anchor, positive


def _rank_window(range_min: int, range_max: int | None, num_negatives: int, sampling: str):
    if isinstance(range_min, bool) or not isinstance(range_min, int) or range_min < 0:
        fail("range_min", "be an integer >= 0", repr(range_min))
    if range_max is None:
        if range_min == 0 and sampling == "top":
            return None
        return (range_min, range_min + max(num_negatives, 1))
    if isinstance(range_max, bool) or not isinstance(range_max, int) or range_max <= range_min:
        fail("range_max", f"be an integer > range_min = {range_min}", repr(range_max))
    return (range_min, range_max)


def _mine(arrays: dict[str, np.ndarray], seed: int, **kw: Any) -> dict[str, Any]:
    """Run the array miner."""
    from ..miner import NegativeMiner

    miner = NegativeMiner(**arrays, seed=seed, **kw)
    res = miner.mine_all_negatives()
    res["stats"] = miner.last_stats or {}
    return res


def _inputs(texts: PairTexts, qry, src, key, cache, n_clusters, seed):
    from ..prepare import prepare_arrays

    hit = cache.get_clusters(key, n_clusters, seed) if cache is not None else None
    if hit is None:
        arrays, info = prepare_arrays(
            src, qry, texts.pair_indices, n_clusters=n_clusters, seed=seed
        )
        if cache is not None:
            cache.put_clusters(
                key,
                n_clusters,
                seed,
                arrays["centroid_embeddings"],
                arrays["source_cluster_ids"],
                info,
            )
        return arrays, info
    cen, scl, info = hit
    from ..clustering import pair_clusters

    arrays = {
        "source_embeddings": src,
        "question_embeddings": qry,
        "centroid_embeddings": cen,
        "pair_indices": texts.pair_indices,
        "pair_cluster_ids": pair_clusters(texts.pair_indices, scl),
        "source_cluster_ids": scl,
    }
    return arrays, info


def _index(index: Any, arrays, key, cache, n_clusters, seed):
    """A spec string is built (and cached); an index object or directory is passed on."""
    from pathlib import Path

    if not isinstance(index, str) or Path(index).is_dir():
        return index
    from ..index import SourceIndex

    def build() -> SourceIndex:
        return SourceIndex.build(
            arrays["source_embeddings"],
            index,
            source_cluster_ids=arrays["source_cluster_ids"],
            centroid_embeddings=arrays["centroid_embeddings"],
        )

    if cache is None:
        return build()
    return cache.get_or_build_index(key, n_clusters, seed, index, build)


def mine_hard_negatives(
    dataset: Any,
    model: Any,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: list[str] | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: str = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    output_format: str = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    use_faiss: bool = False,
    verbose: bool = True,
    cache_folder: str | None = None,
    *,
    tier_proportions: Any = None,
    adjacent_k: int = 3,
    n_clusters: int | str = "auto",
    near_duplicate_threshold: float | None = None,
    index: Any = None,
    nprobe: int | None = None,
    seed: int = 42,
    output_tiers: bool = False,
    return_info: bool = False,
    **st_only: Any,
) -> Any:
    """Add tiered hard negatives to a dataset of (anchor, positive) texts.

    Takes the arguments of ``sentence_transformers.util.mine_hard_negatives``
    (6.2) with the same names and returns the same column layout; the
    negatives come from negmine's four tiers (1: the pair's cluster, 2:
    adjacent clusters, 3: the most similar sources outside the cluster, 4:
    random sources outside the cluster and its neighbours).

    Parameters
    ----------
    dataset : datasets.Dataset
        (anchor, positive) texts. Repeated anchors are one question with several
        positives; repeated positive texts are one source; duplicate rows are
        one pair.
    model : sentence_transformers.SentenceTransformer
    anchor_column_name, positive_column_name : str, optional
        Default: the first column and the next one. A name that is not a column
        is an error (sentence-transformers falls back to the first columns).
    corpus : list of str, optional
        More passages to draw negatives from.
    range_min, range_max : int
        Tier 3 draws from ranks ``range_min <= rank < range_max`` of the
        eligible sources. Differs from sentence-transformers: ranks count only
        eligible sources (outside the pair's cluster, not a positive of the
        question, passing the filters), not every corpus text.
    max_score, absolute_margin, relative_margin : float, optional
        Tier-3 filters. The margins compare with the question's *lowest*
        positive cosine (as sentence-transformers does for several positives);
        ``relative_margin`` keeps sources at most ``(1 - m) * p``.
    num_negatives : int
        Negatives per pair (default 3 as in sentence-transformers). Every row
        gets all of them: a tier that runs short moves along negmine's
        fallback, so no row is dropped.
    sampling_strategy : {"top", "random"}
        Tier 3 takes the window's best ranks or draws from it.
    query_prompt_name, query_prompt, corpus_prompt_name, corpus_prompt : str, optional
        As in sentence-transformers (``*_prompt`` wins over ``*_prompt_name``).
    output_format : {"triplet", "n-tuple", "labeled-pair", "labeled-list"}
        See :mod:`negmine.export` for the columns of each.
    output_scores : bool
        Add the cosines (``scores``/``score``) as sentence-transformers does.
    batch_size : int
        Encoding batch size.
    use_faiss : bool
        Accepted for compatibility: negmine always searches with FAISS.
    verbose : bool
        Progress bars while encoding and mining; statistics go to logging.
    cache_folder : str, optional
        Embeddings, clusters and indexes are stored here, keyed by the model
        (name and weights), the prompts and the texts; any change is a miss.
    tier_proportions : four numbers, optional
        Counts or weights of tiers 1-4 (default ``num_negatives // 4`` each,
        the remainder to tiers 1, 2, 3).
    adjacent_k : int
        Adjacent clusters of each cluster (tier 2); at most the number of
        clusters minus one is used.
    n_clusters : int or "auto"
        Spherical k-means clusters (see :func:`negmine.clustering.default_n_clusters`).
    near_duplicate_threshold : float, optional
        Every tier skips sources above this cosine to one of the question's positives.
    index : str, path or SourceIndex, optional
        A spec (``"clusters"``, ``"clusters,SQ8"``, ``"HNSW32"``, ...) built over
        the sources (stored in ``cache_folder`` when given), an index directory,
        or an index. Default: exact search.
    nprobe : int, optional
        Approximate tier 3 (see :class:`negmine.miner.NegativeMiner`).
    seed : int
        Seed of k-means and of every random draw.
    output_tiers : bool
        Add the tier of each negative (``tier`` or ``tiers``).
    return_info : bool
        Return ``(dataset, info)`` with timings, clustering, cache hits and
        mining statistics.
    **st_only
        Parameters of sentence-transformers that negmine does not implement
        (``cross_encoder``, ``min_score``, ``include_positives``,
        ``use_multi_process``, ``as_triplets``, ``margin``,
        ``faiss_batch_size``): accepted only at their default, otherwise
        refused by name with the reason (:data:`REFUSED`).

    Returns
    -------
    datasets.Dataset, or (datasets.Dataset, dict) with ``return_info``
    """
    from datasets import Dataset

    _refuse(st_only)
    if output_format not in ST_FORMATS:
        fail("output_format", f"be one of {list(ST_FORMATS)}", repr(output_format))
    if sampling_strategy not in ("top", "random"):
        fail("sampling_strategy", "be 'top' or 'random'", repr(sampling_strategy))
    a, p = _columns(dataset, anchor_column_name, positive_column_name)
    t_start = time.perf_counter()
    texts = pairs_from_texts(dataset[a], dataset[p], corpus, (f"dataset[{a!r}]", f"dataset[{p!r}]"))
    n_pos = np.bincount(texts.pair_indices[:, 0])
    if len(texts.corpus) - int(n_pos.max()) < num_negatives:
        fail(
            "num_negatives",
            f"leave enough passages that are not positives ({len(texts.corpus)} "
            f"distinct passages, a query with {int(n_pos.max())} positives)",
            num_negatives,
            "Pass a larger corpus or fewer negatives.",
        )
    window = _rank_window(range_min, range_max, num_negatives, sampling_strategy)
    cache = EmbeddingCache(cache_folder) if cache_folder else None
    qry, src, key, timings = embed_texts(
        model,
        texts.queries,
        texts.corpus,
        query_prompt_name=query_prompt_name,
        query_prompt=query_prompt,
        corpus_prompt_name=corpus_prompt_name,
        corpus_prompt=corpus_prompt,
        batch_size=batch_size,
        show_progress=verbose,
        cache=cache,
    )
    t0 = time.perf_counter()
    arrays, cl_info = _inputs(texts, qry, src, key, cache, n_clusters, seed)
    idx = _index(index, arrays, key, cache, n_clusters, seed)
    timings["cluster"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = _mine(
        arrays,
        seed,
        n_neg=num_negatives,
        tier_proportions=tier_proportions,
        adjacent_k=min(adjacent_k, arrays["centroid_embeddings"].shape[0] - 1),
        index=idx,
        nprobe=nprobe,
        max_score=max_score,
        relative_margin=relative_margin,
        absolute_margin=absolute_margin,
        near_duplicate_threshold=near_duplicate_threshold,
        tier3_rank_window=window,
        tier3_sampling=sampling_strategy,
        show_progress=verbose,
    )
    timings["mine"] = time.perf_counter() - t0
    cols = st_columns(
        texts.queries,
        texts.corpus,
        texts.pair_indices,
        res["hard_negatives"].numpy(),
        res["negative_scores"].numpy(),
        res["positive_scores"].numpy(),
        res["negative_tiers"].numpy(),
        output_format=output_format,
        output_scores=output_scores,
        output_tiers=output_tiers,
        anchor_column_name=a,
        positive_column_name=p,
    )
    out = Dataset.from_dict(cols)
    timings["total"] = time.perf_counter() - t_start
    log.info(
        "mined %d negatives for %d pairs: %d rows (%s)",
        num_negatives,
        len(texts.pair_indices),
        len(out),
        output_format,
    )
    if not return_info:
        return out
    info = {
        "timings": timings,
        "clusters": cl_info,
        "cache_hits": list(cache.hits) if cache else [],
        "stats": res["stats"],
        "n_queries": len(texts.queries),
        "n_sources": len(texts.corpus),
        "n_pairs": len(texts.pair_indices),
        "n_duplicate_rows": texts.n_duplicate_rows,
    }
    return out, info
