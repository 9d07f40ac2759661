"""The synthetic corpus: layout, sources, questions, pairs."""

from __future__ import annotations

import math

import numpy as np

from .._checks import fail
from .pairs import _draw_pairs, _extra_counts
from .params import (
    _LATENT_DIM,
    _LATENT_W,
    _MIX_NEIGHBOURS,
    _MIX_W,
    _NOISE_W,
    _PRIVATE_W,
    _SPECTRA,
    _SPREAD_W,
    _TOPIC_W,
    _add_local,
    _check_int,
    _check_real,
    _cluster_sizes,
    _nearest_rows,
    _normalize_rows,
)
from .spectrum import _check_spectrum, _spectrum_map
from .vectors import _make_questions, _make_sources


def make_corpus(
    n_sources: int,
    n_clusters: int,
    n_pairs: int,
    d: int = 384,
    *,
    seed: int = 0,
    skew: float = 1.0,
    overlap: float = 0.5,
    multi_positive: float = 0.1,
    cluster_mismatch: float = 0.0,
    n_questions: int | None = None,
    spectrum: str | None = None,
) -> dict[str, np.ndarray]:
    """Draw a synthetic clustered retrieval corpus.

    The layout is hierarchical. About ``sqrt(C)`` topic directions are drawn on
    the unit sphere, each with its own ``min(8, d)``-dimensional subspace.
    A cluster's generating centre is its topic direction plus a random position
    in the topic subspace plus a private random direction. A source is its
    centre plus a spread along the topic subspace, plus a random lean towards
    one of the cluster's nearest clusters, plus isotropic noise; so clusters
    close in a topic overlap, and the sources nearest a question outside its
    own cluster come from several neighbouring clusters, while the rest of
    the sphere stays far. Cluster sizes follow log-normal weights.

    Sources are then labelled the way k-means labels them:
    ``centroid_embeddings`` is the mean of each generated cluster (one Lloyd
    update) and ``source_cluster_ids`` the exact nearest of those centroids by
    cosine (the assignment step), so a few boundary sources change cluster.

    Questions are noisy copies of their first positive source, at a cosine
    drawn uniformly in [0.6, 0.85] and turned partly along the topic subspace,
    so the positive is usually but not always the top hit (about 70-90 % of
    the time at ``d=384``).

    ``spectrum="minilm"`` makes the covariance spectrum of the sources decay
    like that of real sentence embeddings, with a common mean direction (see
    the parameter).

    Generation costs ``O(S d (C + 8))`` time and, beyond the returned arrays,
    a few chunk buffers of memory: on two CPU cores a million 384-wide sources
    in 1000 clusters with a million pairs take well under a minute. A
    ``spectrum`` adds ``O((S + Q) d^2)`` for its map.

    Parameters
    ----------
    n_sources : int
        Number of sources ``S`` (>= 1).
    n_clusters : int
        Number of clusters ``C`` (1 <= C <= S).
    n_pairs : int
        Number of (question, positive source) pairs ``P`` (>= 1).
    d : int, default 384
        Embedding width (>= 2).
    seed : int, default 0
        Seed for ``numpy.random.default_rng``; the output is a pure function
        of the arguments.
    skew : float, default 1.0
        Heaviness of the cluster-size tail (>= 0). Cluster weights are
        log-normal with sigma ``1.3 * skew``; at 1.0 the largest cluster is
        tens of times the median, at 0 all clusters are (nearly) equal.
    overlap : float, default 0.5
        How much neighbouring clusters overlap, in [0, 1]. At 0.5 and
        ``d=384`` roughly 90-98 % of a question's exact top-3 sources lie in
        its own cluster (more with many sources per cluster, see
        :func:`top_hits_share`); at 0 clusters are well separated (~100 %),
        at 1 about half the top-3 sources lie outside. Small ``d`` (< 128)
        cannot keep many clusters apart and overlaps more.
    multi_positive : float, default 0.1
        Target fraction of questions with 2 or 3 positives, in [0, 1]. Extra
        positives are drawn from the first positive's cluster (75 %) or one
        of its 3 nearest clusters by centroid.
    cluster_mismatch : float, default 0.0
        Fraction of pairs, in [0, 1], whose ``pair_cluster_ids`` entry is
        replaced by a different random cluster (mimics noisy cluster labels).
        Exactly ``round(cluster_mismatch * P)`` pairs are changed (none when
        ``C == 1``).
    n_questions : int, optional
        Number of questions ``Q`` (1 <= Q <= P). Defaults to
        ``round(P / (1 + 1.5 * multi_positive))``, which makes about a
        ``multi_positive`` share of the questions have 2 or 3 positives.
        When ``P > 3 Q`` the positives are spread evenly instead, so questions
        get more than three. First positives are distinct sources while
        ``Q <= S``; otherwise every source is a first positive about ``Q / S``
        times.
    spectrum : {None, "minilm"}, default None
        Shape of the covariance spectrum of the sources. ``None`` keeps the
        layout above with isotropic noise: the variance sits in the topic
        directions and then decays slowly (a PCA to 96 of 384 dimensions
        keeps about 80 % of it at 300 clusters, less with more clusters), and
        the mean of the sources is small. ``"minilm"`` matches
        all-MiniLM-L6-v2 sentence embeddings (measured by
        ``examples/real_corpus/spectrum.py``): every source, before it is
        normalised, goes through a fixed map ``U diag(s) U^T`` with a random
        rotation ``U`` and scales ``s_i**2`` decaying as ``(i + 40) ** -1.9``,
        plus a common offset, and the topics are weaker and the noise
        stronger, so that at 100k sources in 300 clusters the first
        64 / 96 / 128 principal axes keep about 0.74 / 0.82 / 0.88 of the
        variance (real: 0.72 / 0.82 / 0.88) and the mean of the sources has
        norm about 0.35 (real: 0.36). The decay is calibrated for ``d=384``
        and applied over the first ``d`` ranks at other widths; fewer
        clusters concentrate the variance a little more (0.86 at 96 axes
        with 50 clusters, 0.80 with 1000). Questions turn towards directions
        shaped by the same map. Cluster sizes, pairs and labels are drawn as
        with ``None``; at ``overlap=0.5`` about 90 % of a question's top-3
        sources lie in its cluster. The map costs one ``[rows, d] x [d, d]``
        product per chunk of sources and of questions.

    Returns
    -------
    dict of str to numpy.ndarray
        ``source_embeddings`` : float32 [S, d]
            Unit-norm source embeddings, in random cluster order.
        ``question_embeddings`` : float32 [Q, d]
            Unit-norm question embeddings.
        ``centroid_embeddings`` : float32 [C, d]
            Mean of each generated cluster's sources (not normalised; norms
            below 1).
        ``pair_indices`` : int64 [P, 2]
            (question, source) pairs, grouped by question in increasing order,
            each question's first positive first. Every question has at least
            one pair; pairs are distinct whenever ``S`` allows it.
        ``pair_cluster_ids`` : int64 [P]
            Cluster of each pair's source, except for the ``cluster_mismatch``
            share of pairs, which carry another cluster.
        ``source_cluster_ids`` : int64 [S]
            Nearest centroid of each source by cosine, in [0, C).

    Raises
    ------
    ValueError
        If a count or fraction is out of range, or ``spectrum`` is unknown.
    TypeError
        If an argument has the wrong type.

    Examples
    --------
    >>> c = make_corpus(2000, 20, 500, d=64, seed=1)
    >>> c["source_embeddings"].shape, c["pair_indices"].shape
    ((2000, 64), (500, 2))
    """
    n_s = _check_int("n_sources", n_sources, 1)
    n_c = _check_int("n_clusters", n_clusters, 1)
    if n_c > n_s:
        fail("n_clusters", f"be <= n_sources ({n_s})", repr(n_clusters))
    n_p = _check_int("n_pairs", n_pairs, 1)
    d = _check_int("d", d, 2)
    seed = _check_int("seed", seed, 0)
    skew = _check_real("skew", skew, hi=None)
    overlap = _check_real("overlap", overlap)
    multi_positive = _check_real("multi_positive", multi_positive)
    cluster_mismatch = _check_real("cluster_mismatch", cluster_mismatch)
    if n_questions is None:
        n_q = max(1, min(n_p, round(n_p / (1.0 + 1.5 * multi_positive))))
    else:
        n_q = _check_int("n_questions", n_questions, 1)
        if n_q > n_p:
            fail("n_questions", f"be <= n_pairs ({n_p})", repr(n_questions))
    spectrum = _check_spectrum(spectrum)
    shape = None if spectrum is None else _spectrum_map(spectrum, d, seed)

    rng = np.random.default_rng(seed)
    f32 = np.float32

    # --- layout: topics, their subspaces, cluster centres ---------------------
    n_t = max(1, min(n_c, round(math.sqrt(n_c))))
    r = min(_LATENT_DIM, d)
    topic_dirs = _normalize_rows(rng.standard_normal((n_t, d)).astype(f32))
    bases = np.empty((n_t, r, d), dtype=f32)
    for t in range(n_t):
        q, _ = np.linalg.qr(rng.standard_normal((d, r)))
        bases[t] = q.T
    cluster_topic = (rng.permutation(n_c) % n_t).astype(np.int64)
    private_w = _PRIVATE_W[0] + overlap * (_PRIVATE_W[1] - _PRIVATE_W[0])
    spread_w = _SPREAD_W[0] + overlap * (_SPREAD_W[1] - _SPREAD_W[0])
    mix_w = _MIX_W[0] + overlap * (_MIX_W[1] - _MIX_W[0])
    centres = _normalize_rows(rng.standard_normal((n_c, d)).astype(f32))
    centres *= f32(private_w)
    spec = None if spectrum is None else _SPECTRA[spectrum]
    topic_w = _TOPIC_W if spec is None else spec.topic_w
    centres += f32(topic_w) * topic_dirs[cluster_topic]
    latent = rng.standard_normal((n_c, r)).astype(f32) * f32(_LATENT_W / math.sqrt(r))
    by_topic = np.argsort(cluster_topic, kind="stable")
    grouped = centres[by_topic]
    _add_local(grouped, latent[by_topic], cluster_topic[by_topic], bases, np.empty_like(grouped))
    centres[by_topic] = _normalize_rows(grouped)
    del grouped
    n_mix = min(_MIX_NEIGHBOURS, n_c - 1)
    mix_table = None
    if n_mix > 0 and mix_w > 0:
        mix_table = _nearest_rows(centres, centres, n_mix + 1)[:, 1:]

    # --- sources --------------------------------------------------------------
    sizes = _cluster_sizes(rng, n_s, n_c, skew)
    gen_label = np.repeat(np.arange(n_c, dtype=np.int64), sizes)[rng.permutation(n_s)]
    streams = rng.integers(0, 2**63, size=2)
    sources, sums = _make_sources(
        int(streams[0]),
        gen_label,
        centres,
        cluster_topic,
        bases,
        mix_table,
        spread_w,
        mix_w,
        shape,
        _NOISE_W if spec is None else spec.noise_w,
    )

    # --- k-means style labels: one update step, then the assignment step ------
    centroids = (sums / sizes[:, None]).astype(f32)
    del sums
    unit_centroids = _normalize_rows(centroids.copy())
    source_cluster = _nearest_rows(sources, unit_centroids, 1)[:, 0]

    # --- questions and their positives ---------------------------------------
    if n_q <= n_s:
        first_pos = rng.choice(n_s, size=n_q, replace=False).astype(np.int64)
    else:
        reps = -(-n_q // n_s)
        first_pos = np.concatenate([rng.permutation(n_s) for _ in range(reps)])[:n_q]
    questions = _make_questions(
        int(streams[1]),
        sources,
        first_pos,
        cluster_topic[gen_label],
        bases,
        None if shape is None else shape[0],
    )
    del gen_label

    n_extra_per_q = _extra_counts(rng, n_q, n_p - n_q, multi_positive)
    pair_indices = _draw_pairs(
        rng, first_pos, n_extra_per_q, source_cluster, unit_centroids, n_s, n_c
    )

    pair_cluster = source_cluster[pair_indices[:, 1]]
    n_mis = round(cluster_mismatch * n_p) if n_c > 1 else 0
    if n_mis:
        hit = rng.choice(n_p, size=n_mis, replace=False)
        pair_cluster[hit] = (pair_cluster[hit] + rng.integers(1, n_c, size=n_mis)) % n_c

    return {
        "source_embeddings": sources,
        "question_embeddings": questions,
        "centroid_embeddings": centroids,
        "pair_indices": pair_indices,
        "pair_cluster_ids": pair_cluster,
        "source_cluster_ids": source_cluster,
    }
