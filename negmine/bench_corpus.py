"""How much a corpus resembles real sentence embeddings, and what that does to a PCA search.

``python -m negmine.bench_corpus [--real DIR]`` draws the synthetic corpus of
:func:`negmine.synth.make_corpus` twice, with its default (nearly flat)
spectrum and with ``spectrum="minilm"``, optionally loads a real corpus from an
npy dataset directory (e.g. the ``data/`` directory that
``examples/real_corpus/run.py`` writes), and prints one row per corpus: the
covariance energy a PCA keeps, the common mean's norm, cluster sizes, the
share of a question's exact top-3 inside its own cluster, and the recall@3 of
a PCA-reduced candidate pass re-ranked exactly (see :func:`compare_corpora`).

Everything is exact numpy (float32 products, float64 statistics); nothing
here depends on FAISS. The measuring functions are public so other
benchmarks can report the same figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._checks import fail

__all__ = [
    "Spectrum",
    "compare_corpora",
    "covariance_spectrum",
    "describe_corpus",
    "energy_kept",
    "fit_power_law",
    "format_table",
    "main",
    "pca_candidate_recall",
]

_ROWS = 16384  # rows per chunk when accumulating statistics
_QUERY_ROWS = 256  # queries per block of the searches (a [256, S] score tile)
_TIE = 1e-6  # scores this close to the k-th best count as ties


class Spectrum(NamedTuple):
    """Eigen-decomposition of a covariance matrix.

    Attributes
    ----------
    eigenvalues : float64 [d]
        Decreasing, clipped at 0.
    axes : float64 [d, d]
        Column ``i`` is the principal axis of ``eigenvalues[i]``.
    mean : float64 [d]
        Mean of the rows the covariance was taken around.
    """

    eigenvalues: np.ndarray
    axes: np.ndarray
    mean: np.ndarray


def covariance_spectrum(x: np.ndarray, sample: int | None = None, seed: int = 0) -> Spectrum:
    """Eigenvalues and axes of the covariance of the rows of ``x`` (mean-centred).

    Parameters
    ----------
    x : array [n, d]
        Rows, used as given (pass unit rows for cosine geometry); any float
        dtype, memory-mapped arrays are read in chunks.
    sample : int, optional
        Use this many rows drawn without replacement (all rows when ``None``
        or when ``x`` has fewer).
    seed : int, default 0
        Seed of the row sample.

    Returns
    -------
    Spectrum
        The population covariance (divided by ``n``), in float64.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] < 2:
        fail("x", "be a 2-D array with at least 2 rows", f"shape {x.shape}")
    rows = np.arange(x.shape[0])
    if sample is not None and sample < x.shape[0]:
        rows = np.sort(np.random.default_rng(seed).choice(x.shape[0], sample, replace=False))
    d = x.shape[1]
    total, gram = np.zeros(d), np.zeros((d, d))
    for i in range(0, rows.size, _ROWS):
        blk = np.asarray(x[rows[i : i + _ROWS]], dtype=np.float64)
        total += blk.sum(axis=0)
        gram += blk.T @ blk
    mean = total / rows.size
    cov = gram / rows.size - np.outer(mean, mean)
    vals, vecs = np.linalg.eigh(cov)
    return Spectrum(np.maximum(vals[::-1], 0.0), vecs[:, ::-1].copy(), mean)


def energy_kept(eigenvalues: np.ndarray, dims: Sequence[int]) -> dict[int, float]:
    """Share of the total variance on the first ``k`` principal axes, per ``k`` in ``dims``.

    Parameters
    ----------
    eigenvalues : float array [d]
        Decreasing.
    dims : sequence of int
        Numbers of axes, each in [1, d].

    Returns
    -------
    dict of int to float
        ``k -> sum(eigenvalues[:k]) / sum(eigenvalues)``.
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    cum = np.cumsum(ev) / ev.sum()
    for k in dims:
        if not 1 <= int(k) <= ev.size:
            fail("dims", f"hold numbers of axes in [1, {ev.size}]", repr(k))
    return {int(k): float(cum[int(k) - 1]) for k in dims}


def fit_power_law(eigenvalues: np.ndarray, max_shift: int = 60) -> dict[str, float]:
    """Fit the decay of ``eigenvalues`` with power laws.

    Two fits: a plain ``lambda_i ~ c * i ** -power`` by least squares on
    log-log over the ranks up to ``min(200, d)`` (the usual figure), and a
    shifted ``lambda_i ~ (i + shift) ** -power`` chosen on a grid (shift in
    steps of 1 up to ``max_shift``, power in steps of 0.01 up to 4) to
    minimise the squared error of the cumulative energy curve, which is what
    a PCA keeps.

    Parameters
    ----------
    eigenvalues : float array [d]
        Decreasing, with positive leading values.
    max_shift : int, default 60
        Largest shift tried.

    Returns
    -------
    dict of str to float
        ``power`` and ``coefficient`` (plain fit, ``coefficient`` as a share
        of the total variance), ``shifted_power`` and ``shift`` (shifted fit)
        and ``shifted_rms`` (RMS error of its cumulative energy curve).
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    ev = ev / ev.sum()
    ranks = np.arange(1, ev.size + 1, dtype=np.float64)
    top = min(200, int(np.count_nonzero(ev > 0)))
    slope, icpt = np.polyfit(np.log(ranks[:top]), np.log(ev[:top]), 1)
    target = np.cumsum(ev)
    powers = np.arange(0.5, 4.0, 0.01)
    best = (np.inf, 0.0, 0.0)
    for shift in range(max_shift + 1):
        law = np.exp(-powers[:, None] * np.log(ranks + shift)[None, :])
        cum = np.cumsum(law, axis=1)
        cum /= cum[:, -1:]
        err = np.sqrt(((cum - target) ** 2).mean(axis=1))
        j = int(err.argmin())
        if err[j] < best[0]:
            best = (float(err[j]), float(shift), float(powers[j]))
    return {
        "power": float(-slope),
        "coefficient": float(np.exp(icpt)),
        "shifted_power": round(best[2], 2),
        "shift": best[1],
        "shifted_rms": best[0],
    }


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices int64 [b, k] of each row's ``k`` largest scores, best first."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(scores, part, axis=1)
    return np.take_along_axis(part, np.argsort(-vals, axis=1, kind="stable"), axis=1)


def pca_candidate_recall(
    sources: np.ndarray,
    source_cluster_ids: np.ndarray,
    queries: np.ndarray,
    query_cluster_ids: np.ndarray,
    query_positive_ids: np.ndarray,
    axes: np.ndarray,
    rerank: Sequence[int] = (30, 100),
    k: int = 3,
) -> dict[str, Any]:
    """Recall@k of a PCA-reduced candidate pass followed by an exact re-rank.

    Each query searches the sources outside its cluster, its positive
    excluded (what tier 3 of the miner searches). The reference is the exact
    top-``k`` by inner product; a returned source counts as found when it
    scores at least the ``k``-th of them (so a duplicate of a top source is
    as good as the source). The candidate pass ranks the same sources by
    the inner product of their projections on ``axes`` and keeps the best
    ``R``; those are re-scored exactly and the top ``k`` kept, for each ``R``
    in ``rerank``. Projections are not centred: subtracting the mean from
    the sources changes all scores of a query by the same amount, and from
    the queries would add a per-source bias.

    Parameters
    ----------
    sources : float32 [S, d]
    source_cluster_ids : int [S]
    queries : float32 [n, d]
    query_cluster_ids : int [n]
        Cluster whose sources a query does not search.
    query_positive_ids : int [n]
        Source excluded from a query's search (its positive).
    axes : float [d, m]
        Projection, e.g. the first ``m`` columns of :attr:`Spectrum.axes`.
    rerank : sequence of int, default (30, 100)
        Candidates re-ranked exactly, each >= ``k``.
    k : int, default 3

    Returns
    -------
    dict
        ``recall`` : dict of int to float
            Mean share of the exact top-``k`` found, per ``R``.
        ``own_cluster_top_k`` : float
            Share of the queries' exact top-``k`` over all sources that lie in
            the query's cluster (how well clusters separate the neighbours).
    """
    src = np.ascontiguousarray(sources, dtype=np.float32)
    scl = np.asarray(source_cluster_ids)
    depth = max(rerank)
    if min(rerank) < k or depth > src.shape[0]:
        fail("rerank", f"hold counts in [{k}, {src.shape[0]}]", repr(tuple(rerank)))
    proj_axes = np.asarray(axes, dtype=np.float32)
    src_low = src @ proj_axes
    found = {int(r): 0.0 for r in rerank}
    own = 0
    n = queries.shape[0]
    for i0 in range(0, n, _QUERY_ROWS):
        q = np.asarray(queries[i0 : i0 + _QUERY_ROWS], dtype=np.float32)
        qc = np.asarray(query_cluster_ids[i0 : i0 + _QUERY_ROWS])
        rows = np.arange(q.shape[0])
        exact = q @ src.T
        own += int((scl[_top(exact, k)] == qc[:, None]).sum())
        outside = scl[None, :] == qc[:, None]
        outside[rows, np.asarray(query_positive_ids[i0 : i0 + _QUERY_ROWS])] = True
        exact[outside] = -np.inf
        kth = np.take_along_axis(exact, _top(exact, k)[:, -1:], axis=1)[:, 0]
        low = (q @ proj_axes) @ src_low.T
        low[outside] = -np.inf
        cand = _top(low, depth)
        for r in found:
            rescored = np.take_along_axis(exact, cand[:, :r], axis=1)
            best = np.take_along_axis(rescored, _top(rescored, k), axis=1)
            # a source tied with the k-th best (a duplicate text) counts as found
            found[r] += float((best >= kth[:, None] - _TIE).sum())
    return {
        "recall": {r: v / (n * k) for r, v in found.items()},
        "own_cluster_top_k": own / (n * k),
    }


def _query_sample(corpus: Mapping[str, Any], n: int, seed: int) -> np.ndarray:
    """Rows of ``pair_indices`` used as queries: ``n`` drawn without replacement, sorted."""
    n_pairs = np.asarray(corpus["pair_indices"]).shape[0]
    if n >= n_pairs:
        return np.arange(n_pairs)
    return np.sort(np.random.default_rng(seed).choice(n_pairs, n, replace=False))


def describe_corpus(
    corpus: Mapping[str, Any],
    dims: Sequence[int] = (64, 96, 128),
    pca_dim: int = 96,
    rerank: Sequence[int] = (30, 100),
    n_queries: int = 2000,
    fit_sample: int = 20000,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of :func:`compare_corpora` for one corpus (see there)."""
    src = np.asarray(corpus["source_embeddings"])
    scl = np.asarray(corpus["source_cluster_ids"])
    if pca_dim not in range(1, src.shape[1] + 1):
        fail("pca_dim", f"be in [1, {src.shape[1]}]", repr(pca_dim))
    spec = covariance_spectrum(src, sample=fit_sample, seed=seed)
    rows = _query_sample(corpus, n_queries, seed)
    pairs = np.asarray(corpus["pair_indices"])[rows]
    search = pca_candidate_recall(
        src,
        scl,
        np.asarray(corpus["question_embeddings"])[pairs[:, 0]],
        np.asarray(corpus["pair_cluster_ids"])[rows],
        pairs[:, 1],
        spec.axes[:, :pca_dim],
        rerank,
    )
    sizes = np.bincount(scl)
    sizes = sizes[sizes > 0]
    return {
        "sources": int(src.shape[0]),
        "clusters": int(sizes.size),
        "largest_over_median_cluster": float(sizes.max() / np.median(sizes)),
        "mean_norm": float(np.linalg.norm(spec.mean)),
        "energy": energy_kept(spec.eigenvalues, dims),
        "power_law": fit_power_law(spec.eigenvalues),
        "queries": int(rows.size),
        "pca_dim": int(pca_dim),
        "own_cluster_top3": search["own_cluster_top_k"],
        "recall_at_3": search["recall"],
    }


def compare_corpora(
    corpora: Mapping[str, Mapping[str, Any]],
    dims: Sequence[int] = (64, 96, 128),
    pca_dim: int = 96,
    rerank: Sequence[int] = (30, 100),
    n_queries: int = 2000,
    fit_sample: int = 20000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Spectrum, cluster figures and PCA search recall of several corpora.

    For each corpus: the covariance of ``fit_sample`` sampled sources (all
    when fewer) around their mean, the energy its first ``k`` principal axes
    keep for ``k`` in ``dims``, the mean's norm and power-law fits of the
    eigenvalues (:func:`fit_power_law`); then, for ``n_queries`` sampled pairs,
    the recall@3 of a search over the sources outside the pair's cluster,
    positive excluded, with candidates ranked on the first ``pca_dim`` axes and
    the best ``R`` re-ranked exactly, ``R`` in ``rerank``
    (:func:`pca_candidate_recall`).

    Parameters
    ----------
    corpora : mapping of str to mapping
        Name to mining inputs, as :func:`negmine.synth.make_corpus` returns
        them or :func:`negmine.io.load_dataset` loads them (the keys
        ``source_embeddings`` [S, d], ``question_embeddings`` [Q, d],
        ``pair_indices`` int [P, 2], ``pair_cluster_ids`` int [P] and
        ``source_cluster_ids`` int [S] are read; unit rows).
    dims : sequence of int, default (64, 96, 128)
    pca_dim : int, default 96
    rerank : sequence of int, default (30, 100)
    n_queries : int, default 2000
        Pairs used as queries (drawn without replacement; all when fewer).
    fit_sample : int, default 20000
        Sources the PCA is fitted on.
    seed : int, default 0
        Seed of the samples.

    Returns
    -------
    dict of str to dict
        Per corpus name: ``sources``, ``clusters``,
        ``largest_over_median_cluster``, ``mean_norm``, ``energy`` (dict of
        dims to share), ``power_law`` (dict), ``queries``, ``pca_dim``,
        ``own_cluster_top3`` (share of the exact top-3 over all sources in
        the pair's cluster) and ``recall_at_3`` (dict of ``R`` to recall).
    """
    kw = {"dims": dims, "pca_dim": pca_dim, "rerank": rerank, "n_queries": n_queries}
    return {
        name: describe_corpus(c, fit_sample=fit_sample, seed=seed, **kw)
        for name, c in corpora.items()
    }


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The rows of :func:`compare_corpora` as a markdown table."""
    first = next(iter(results.values()))
    dims, reranks = list(first["energy"]), list(first["recall_at_3"])
    head = ["corpus", "sources", "clusters", "largest/median", "mean norm"]
    head += [f"energy {k}" for k in dims] + ["power", "top-3 in own cluster"]
    head += [f"PCA{first['pca_dim']} recall@3, re-rank {r}" for r in reranks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        cells = [name, f"{r['sources']:,}", str(r["clusters"])]
        cells += [f"{r['largest_over_median_cluster']:.1f}", f"{r['mean_norm']:.3f}"]
        cells += [f"{r['energy'][k]:.3f}" for k in dims]
        cells += [f"{r['power_law']['power']:.2f}", f"{r['own_cluster_top3']:.3f}"]
        cells += [f"{r['recall_at_3'][k]:.3f}" for k in reranks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m negmine.bench_corpus``: print the table of :func:`compare_corpora`."""
    from .synth import make_corpus

    ap = argparse.ArgumentParser(prog="python -m negmine.bench_corpus", description=__doc__)
    ap.add_argument("--sources", type=int, default=100_000, help="synthetic sources")
    ap.add_argument("--clusters", type=int, default=300, help="synthetic clusters")
    ap.add_argument("--pairs", type=int, default=20_000, help="synthetic pairs")
    ap.add_argument("--real", metavar="DIR", help="an npy dataset directory of real embeddings")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--pca-dim", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    corpora: dict[str, Any] = {}
    secs: dict[str, float] = {}
    for label, spectrum in (("synthetic, flat", None), ("synthetic, minilm", "minilm")):
        t0 = time.perf_counter()
        corpora[label] = make_corpus(
            args.sources, args.clusters, args.pairs, seed=args.seed, spectrum=spectrum
        )
        secs[label] = time.perf_counter() - t0
    if args.real:
        from .io import load_dataset

        corpora["real"] = load_dataset(args.real).arrays
    results = compare_corpora(corpora, pca_dim=args.pca_dim, n_queries=args.queries, seed=args.seed)
    print(format_table(results))
    print("generation: " + ", ".join(f"{k} {v:.1f} s" for k, v in secs.items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
