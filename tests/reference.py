"""Slow, obviously-correct references the tests compare negmine against."""

from __future__ import annotations

import numpy as np


def small_corpus(
    n_sources: int = 400,
    n_clusters: int = 8,
    n_questions: int = 120,
    d: int = 16,
    seed: int = 0,
    spread: float = 0.6,
    extra_positive: float = 0.3,
    mismatch: float = 0.1,
) -> dict[str, np.ndarray]:
    """A random clustered corpus with multi-positive questions and a few pairs
    whose cluster is not their source's."""
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((n_clusters, d)).astype(np.float32)
    scl = rng.integers(0, n_clusters, n_sources)
    scl[:n_clusters] = np.arange(n_clusters)  # no empty cluster
    src = (cent[scl] + spread * rng.standard_normal((n_sources, d))).astype(np.float32)
    first = rng.integers(0, n_sources, n_questions)
    qe = (src[first] + 0.5 * rng.standard_normal((n_questions, d))).astype(np.float32)
    pairs = [(q, int(s)) for q, s in enumerate(first)]
    for q in range(n_questions):
        if rng.random() < extra_positive:
            pairs.append((q, int(rng.integers(0, n_sources))))
    pairs_arr = np.array(pairs, dtype=np.int64)
    pcl = scl[pairs_arr[:, 1]].copy()
    flip = rng.random(len(pcl)) < mismatch
    pcl[flip] = rng.integers(0, n_clusters, int(flip.sum()))
    return {
        "source_embeddings": src,
        "question_embeddings": qe,
        "centroid_embeddings": cent,
        "pair_indices": pairs_arr,
        "pair_cluster_ids": pcl,
        "source_cluster_ids": scl.astype(np.int64),
    }


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def adjacent_reference(centroids: np.ndarray, k: int) -> list[set[int]]:
    """Adjacent sets by brute-force cosine (ties make the k-th member ambiguous;
    callers use centroids without ties)."""
    c = unit(centroids)
    sim = c @ c.T
    out = []
    for i in range(len(c)):
        others = [j for j in np.argsort(-sim[i], kind="stable") if j != i]
        out.append(set(int(j) for j in others[:k]))
    return out


def positives_of(pairs: np.ndarray) -> dict[int, set[int]]:
    pos: dict[int, set[int]] = {}
    for q, s in pairs:
        pos.setdefault(int(q), set()).add(int(s))
    return pos


def outside_cluster_brute(
    corpus: dict, questions: np.ndarray, clusters: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """float64 brute force per (question, skipped cluster): ids int64 [n, k] and
    scores [n, k] of the k most similar sources outside the cluster, positives
    left out (ties by lower id)."""
    src = unit(corpus["source_embeddings"])
    qry = unit(corpus["question_embeddings"])
    scl = corpus["source_cluster_ids"]
    pos = positives_of(corpus["pair_indices"])
    sims = qry[questions] @ src.T
    sims[scl[None, :] == np.asarray(clusters)[:, None]] = -np.inf
    for r, q in enumerate(np.asarray(questions).tolist()):
        sims[r, list(pos.get(q, ()))] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, 1)


def tier3_reference(corpus: dict, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per pair: (ids, scores) of the k most similar eligible sources, brute force."""
    src = unit(corpus["source_embeddings"])
    qry = unit(corpus["question_embeddings"])
    scl = corpus["source_cluster_ids"]
    pos = positives_of(corpus["pair_indices"])
    out = []
    for (q, _s), c in zip(corpus["pair_indices"], corpus["pair_cluster_ids"], strict=True):
        sims = src @ qry[q]
        ok = scl != c
        ok[list(pos[int(q)])] = False
        cand = np.flatnonzero(ok)
        order = cand[np.argsort(-sims[cand], kind="stable")][:k]
        out.append((order, sims[order]))
    return out


def check_rows(res: dict, corpus: dict, adjacent_k: int) -> None:
    """Assert every hard rule and tier rule row by row (loops: a reference)."""
    ids = np.asarray(res["hard_negatives"])
    tiers = np.asarray(res["negative_tiers"])
    scl = corpus["source_cluster_ids"]
    n_src = len(scl)
    adj = adjacent_reference(corpus["centroid_embeddings"], adjacent_k)
    pos = positives_of(corpus["pair_indices"])
    pairs, pcl = corpus["pair_indices"], corpus["pair_cluster_ids"]
    for r, ((q, _s), c) in enumerate(zip(pairs, pcl, strict=True)):
        row = [int(x) for x in ids[r]]
        assert len(set(row)) == len(row), f"row {r} repeats an id: {row}"
        assert all(0 <= x < n_src for x in row), f"row {r} out of range: {row}"
        assert not set(row) & pos[int(q)], f"row {r} holds a positive"
        near = adj[int(c)]
        distant_left = [
            x
            for x in range(n_src)
            if scl[x] != c and scl[x] not in near and x not in pos[int(q)] and x not in row
        ]
        for x, t in zip(row, tiers[r], strict=True):
            cx = int(scl[x])
            if t == 1:
                assert cx == c, (r, x, t)
            elif t == 2:
                assert cx in near, (r, x, t)
            elif t == 3:
                assert cx != c, (r, x, t)
            elif t == 4:
                assert cx != c, (r, x, t)
                if cx in near:
                    assert not distant_left, f"row {r}: tier 4 took adjacent id {x} early"
            else:
                raise AssertionError(f"bad label {t} in row {r}")


SCORE_FILTERS = ("max_score", "relative_margin", "absolute_margin")
CANDIDATE_FILTERS = (*SCORE_FILTERS, "near_duplicate_threshold")


def filtered_tier3_reference(
    corpus: dict,
    n3: int,
    max_score: float | None = None,
    relative_margin: float | None = None,
    absolute_margin: float | None = None,
    near_duplicate_threshold: float | None = None,
    window: tuple[int, int] | None = None,
) -> list[dict]:
    """Per pair, by brute force in float64: the eligible sources best first, the
    tier-3 choice of the "top" mode, and what each filter removed and cost.

    ``removed[f]``: among the ``hi`` best sources outside the cluster that are
    not positives, those whose first rejecting filter (in CANDIDATE_FILTERS
    order) is ``f``; the window counts the eligible sources it skips.
    ``short[f]``: tier-3 slots lost when ``f`` is added to the filters before it.
    ``margin``: the smallest distance of any score to any threshold (the test
    needs it well above float32 round-off).
    """
    src = unit(corpus["source_embeddings"])
    qry = unit(corpus["question_embeddings"])
    scl = corpus["source_cluster_ids"]
    pos = positives_of(corpus["pair_indices"])
    lo, hi = window or (0, n3)
    settings = {
        "max_score": max_score,
        "relative_margin": relative_margin,
        "absolute_margin": absolute_margin,
        "near_duplicate_threshold": near_duplicate_threshold,
    }
    active = [f for f in CANDIDATE_FILTERS if settings[f] is not None]
    out = []
    for (q, _s), c in zip(corpus["pair_indices"], corpus["pair_cluster_ids"], strict=True):
        q = int(q)
        sims = src @ qry[q]
        p_ids = sorted(pos[q])
        floor = min(sims[p] for p in p_ids)
        thr = {}
        if max_score is not None:
            thr["max_score"] = max_score
        if relative_margin is not None:
            thr["relative_margin"] = (1 - relative_margin) * floor
        if absolute_margin is not None:
            thr["absolute_margin"] = floor - absolute_margin
        near = (src @ src[p_ids].T).max(axis=1)
        base = [int(x) for x in np.argsort(-sims, kind="stable") if scl[x] != c and x not in pos[q]]

        def first_reject(x: int, thr=thr, sims=sims, near=near) -> str | None:
            for name in SCORE_FILTERS:
                if name in thr and sims[x] > thr[name]:
                    return name
            if near_duplicate_threshold is not None and near[x] > near_duplicate_threshold:
                return "near_duplicate_threshold"
            return None

        rej = {x: first_reject(x) for x in base}
        elig = [x for x in base if rej[x] is None]
        removed = {f: sum(1 for x in base[:hi] if rej[x] == f) for f in CANDIDATE_FILTERS}
        removed["tier3_rank_window"] = min(lo, len(elig))
        short = dict.fromkeys((*CANDIDATE_FILTERS, "tier3_rank_window"), 0)
        got = min(n3, len(base))
        for k, name in enumerate(active):
            size = sum(1 for x in base if rej[x] not in active[: k + 1])
            short[name] = got - min(n3, size)
            got = min(n3, size)
        short["tier3_rank_window"] = got - max(0, min(n3, len(elig) - lo))
        gaps = [abs(sims[x] - t) for x in base for t in thr.values()]
        if near_duplicate_threshold is not None:
            gaps += [abs(near[x] - near_duplicate_threshold) for x in base]
        out.append(
            {
                "eligible": elig,
                "chosen": elig[lo : lo + n3],
                "removed": removed,
                "short": short,
                "margin": min(gaps) if gaps else np.inf,
                "near": near,
            }
        )
    return out


def exact_negative_scores(res: dict, corpus: dict) -> np.ndarray:
    """The exact cosine of every mined negative with its pair's question, [P, n_neg]."""
    ids = np.asarray(res["hard_negatives"])
    qi = corpus["pair_indices"][:, 0]
    return np.einsum("pd,pkd->pk", unit(corpus["question_embeddings"])[qi],
                     unit(corpus["source_embeddings"])[ids])  # fmt: skip


def check_integer_row(got_d, got_i, ok, question, positives, signed, u, k, what="") -> None:
    """One query's 8-bit candidates against an integer brute force: among the
    sources ``ok`` (bool [S], the probed lists') less the question's positives,
    the ``k`` largest ``signed @ u`` (int64 codes [S, d] and weights [d]), ties
    to the lower id, then ``-1`` / ``-inf`` padding."""
    ok = ok.copy()
    ok[positives.sources[positives.offsets[question] : positives.offsets[question + 1]]] = False
    cand = np.flatnonzero(ok)
    sc = signed[cand] @ u
    order = np.lexsort((cand, -sc))[:k]
    want = np.full(k, -1)
    want[: order.size] = cand[order]
    np.testing.assert_array_equal(got_i, want, err_msg=what)
    np.testing.assert_array_equal(got_d[: order.size], sc[order].astype(np.float32))
    assert (got_d[order.size :] == -np.inf).all(), what
