"""Index specs: which index ``"auto"`` builds, and the cluster-aligned ``"clusters"`` index.

:func:`choose_spec` follows FAISS's guidelines for choosing an index by corpus
size and a memory budget; :func:`build_clusters` builds an inverted file whose
lists are exactly the user's clusters (see :meth:`negmine.index.SourceIndex.build`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from .._checks import check_embeddings, fail, normalized_float32, release_pages, take_rows
from .manifest import _FP_CHUNK, assignment_fingerprint, fingerprint
from .reduce import DEFAULT_RERANK, fit_pca, parse_reduction, reduce_rows, wrap_reduced
from .sublists import split_clusters, sublist_size

__all__ = [
    "AUTO_FAST_MIN",
    "AUTO_FLAT_MAX",
    "FAST_CODEC",
    "assignment_fingerprint",
    "build_clusters",
    "choose_spec",
    "parse_bytes",
]

#: Below this many sources "auto" keeps exact search: one blocked matrix
#: product over them costs about as much as building an index would save.
AUTO_FLAT_MAX = 100_000
#: From this many sources on, "auto" builds 8-bit cluster lists
#: (``"clusters,fast"``) even where float32 lists fit the budget.
AUTO_FAST_MIN = 1_000_000

_CODECS = {"flat": ("Flat", 4), "fp16": ("SQfp16", 2), "sq8": ("SQ8", 1)}
#: What ``"clusters,fast"`` builds: 8-bit lists, split in sub-lists of about
#: :data:`~negmine.index.sublists.SUBLIST_BYTES` of codes each
#: (:func:`~negmine.index.sublists.sublist_size`), searched with integer
#: products and re-ranked exactly. Of the cluster lists measured at 1M sources
#: it mined fastest at the same recall, in a quarter of float32's memory
#: (docs/benchmarks.md).
FAST_CODEC = "sq8"
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(value: int | str | None, name: str = "memory_budget") -> int:
    """Bytes from an int or a string such as ``"8G"``, ``"512M"`` or ``"2.5GiB"``.

    ``None`` gives half the machine's physical memory.
    """
    if value is None:
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)
        except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
            return 8 * 2**30
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            fail(name, "be a positive number of bytes", repr(value))
        return int(value)
    text = str(value).strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1:] if text[-1:] in _UNITS else ""
    try:
        number = float(text[: len(text) - len(unit)])
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        fail(name, "be a size such as 8G, 512M or a number of bytes", repr(value))
    return int(number * _UNITS[unit])


def choose_spec(n: int, d: int, has_clusters: bool, budget: int) -> tuple[str, str]:
    """The ``"auto"`` choice for ``n`` sources of width ``d`` and why.

    Follows FAISS's guidelines for choosing an index: exact (``Flat``) while
    the corpus is small; above that an inverted file, with the storage of the
    vectors chosen by the memory they may take: float32 if it fits the
    budget, then fp16 (half), then 8-bit scalar quantisation (a quarter).
    When the clusters are known, the inverted lists are the clusters
    themselves (``"clusters"``): tier 3 must skip the pair's own cluster, and
    generic lists crowd around it; they hold 8-bit codes (``"clusters,fast"``,
    integer products re-ranked exactly) when float32 lists exceed the budget
    and from :data:`AUTO_FAST_MIN` sources on, where those mined faster than
    float32 lists at the same recall (docs/benchmarks.md), and float32 values
    otherwise. Without clusters, ``IVF<K>`` with ``K``
    about ``8 sqrt(n)`` (the guidelines give 4 to 16 ``sqrt(n)``), with an
    HNSW coarse quantizer from a million sources on.

    Returns
    -------
    spec : str
    reason : str
    """
    flat_bytes = n * d * 4
    if n <= AUTO_FLAT_MAX and flat_bytes <= budget:
        return "flat", (
            f"{n} sources <= {AUTO_FLAT_MAX}: exact search over them is cheap and "
            f"its {flat_bytes / 2**20:.0f} MiB fit the budget of {budget / 2**20:.0f} MiB"
        )
    codec, why = "sq8", "not even 8-bit codes fit; chose the smallest"
    for name, (_, width) in _CODECS.items():
        if n * d * width * 1.05 <= budget:
            codec = name
            why = f"{width}-byte values ({n * d * width / 2**20:.0f} MiB) fit the budget"
            break
    size = f"{n} sources > {AUTO_FLAT_MAX}" if n > AUTO_FLAT_MAX else "float32 over budget"
    if has_clusters:
        return _clusters_choice(n, d, codec, f"{why} of {budget / 2**20:.0f} MiB", size, budget)
    k = 1 << max(4, round(float(np.log2(8 * np.sqrt(n)))))
    k = min(k, max(1, n // 39))  # FAISS wants >= 39 training points per list
    quant = f"IVF{k}_HNSW32" if n >= 1_000_000 else f"IVF{k}"
    return f"{quant},{_CODECS[codec][0]}", (
        f"{size}; no clusters given: IVF with K={k} lists (about 8 sqrt(n)); "
        f"{why} of {budget / 2**20:.0f} MiB"
    )


def _clusters_choice(
    n: int, d: int, codec: str, why: str, size: str, budget: int
) -> tuple[str, str]:
    """The ``"auto"`` choice among cluster lists: float32 or 8-bit (``fast``)."""
    lists = "clusters given, so the lists are the clusters (tier 3 skips the own cluster)"
    if codec == "flat" and n < AUTO_FAST_MIN:
        return "clusters", f"{size}; {lists}; {why}"
    fast = f"8-bit lists ({n * d / 2**20:.0f} MiB), integer products re-ranked exactly"
    if codec == "flat":
        return "clusters,fast", (
            f"{size}; {lists}; {n} sources >= {AUTO_FAST_MIN}: {fast}, faster than float32 "
            f"lists at the same recall"
        )
    return "clusters,fast", f"{size}; {lists}; float32 over budget: {fast}; {why}"


def _add_in_lists(index: Any, src: np.ndarray, scl: np.ndarray, transform: Any = None) -> None:
    """Add the normalised sources to the lists of their clusters, ascending id within each
    (``transform`` maps unit rows float32 [n, d] to what the lists store)."""
    from faiss.contrib.ivf_tools import add_preassigned

    n, d = src.shape
    order = np.argsort(scl, kind="stable")
    buf = np.empty((min(n, _FP_CHUNK), d), dtype=np.float32)
    for s in range(0, n, _FP_CHUNK):
        rows = order[s : s + _FP_CHUNK]
        x = normalized_float32(take_rows(src, np.sort(rows)), out=buf[: rows.size])
        # src[sorted rows] keeps reads sequential; put them back in list order.
        x = x[np.argsort(np.argsort(rows, kind="stable"), kind="stable")]
        if transform is not None:
            x = np.ascontiguousarray(transform(x), dtype=np.float32)
        add_preassigned(index, x, scl[rows], rows)
        release_pages(src)


def _parse_codec(kind: str, d: int) -> tuple[str, int | None]:
    """The codec of a ``"clusters[,<codec>[,sub<n>]]"`` spec and its sub-list size
    (for ``"clusters,fast"``, that of sources of width ``d``)."""
    parts = [p.strip() for p in kind.split(",")]
    codec = parts[1].lower() if len(parts) > 1 else "flat"
    sub: int | None = None
    if codec == "fast":
        codec, sub = FAST_CODEC, sublist_size(d)
    if len(parts) == 3 and codec == "sq8" and parts[2].lower().startswith("sub"):
        digits = parts[2][3:]
        sub = int(digits) if digits.isdigit() and int(digits) >= 1 else -1
    if (
        len(parts) > 3
        or (len(parts) == 3 and (sub is None or sub < 1))
        or (codec not in _CODECS and not codec.startswith("pca"))
    ):
        fail("spec", "be 'clusters', 'clusters,fast', 'clusters,SQ8', 'clusters,SQ8,sub<n>', "
             "'clusters,fp16' or 'clusters,PCA<m>'", repr(kind))  # fmt: skip
    return codec, sub


def build_clusters(
    src: np.ndarray, kind: str, source_cluster_ids: Any, centroid_embeddings: Any,
    seed: int = 1234,
) -> tuple[Any, str, dict[str, Any]]:  # fmt: skip
    """A FAISS IVF index whose lists are the given clusters.

    See :meth:`negmine.index.SourceIndex.build` (spec ``"clusters"``).

    Returns
    -------
    index : faiss.IndexIVF or faiss.IndexPreTransform
    factory : str
        ``"IVF<C>,Flat"``, ``"IVF<C>,SQfp16"``, ``"IVF<C>,SQ8"`` or ``"PCA<m>,IVF<C>,Flat"``.
    manifest : dict
        The ``"clusters"`` entry of the index manifest.
    """

    from .._checks import check_ids

    n, d = src.shape
    codec, sub = _parse_codec(kind, d)
    reduced = codec.startswith("pca")
    dims = parse_reduction(codec, d) if reduced else None
    if source_cluster_ids is None or centroid_embeddings is None:
        fail("source_cluster_ids", "be given with `centroid_embeddings` for spec 'clusters'",
             "None", "Pass the k-means labels and centroids (CLI: --data DIR).")  # fmt: skip
    cen = normalized_float32(check_embeddings(centroid_embeddings, "centroid_embeddings", d,
                                              "source_embeddings"))  # fmt: skip
    n_c = cen.shape[0]
    scl = check_ids(source_cluster_ids, "source_cluster_ids", ndim=1, upper=n_c,
                    upper_what="C = len(centroid_embeddings)")  # fmt: skip
    if scl.shape[0] != n:
        fail("source_cluster_ids", f"have one entry per source (S = {n})", f"length {scl.shape[0]}")
    if reduced:
        index, name, info = _reduced_lists(src, scl, cen, dims, codec)
        factory = f"{name},IVF{n_c},Flat"
    elif sub is not None:
        index, name, info = _sub_lists(src, scl, cen, sub, seed)
        factory = f"IVF{index.nlist},{name}"
    else:
        index, name, info = _float_lists(src, scl, cen, codec), _CODECS[codec][0], {}
        factory = f"IVF{n_c},{name}"
    extra = {
        "clusters": {
            "n_clusters": int(n_c),
            "codec": name,
            "assignment": assignment_fingerprint(scl, n_c),
            "centroids": fingerprint(cen),
            "list_order": "ascending source id within each cluster",
        }
    }
    if info and sub is not None:
        extra["clusters"]["sub_lists"] = info
        extra["clusters"]["list_order"] = (
            "cluster by cluster; within each, by sub-list, then ascending source id"
        )
    elif info:
        extra["clusters"]["reduction"] = info
    if name == "SQ8":
        extra["clusters"]["candidate_pass"] = (
            "integer products of the 8-bit codes, then an exact re-rank from the embeddings"
        )
    return index, factory, extra


def _sub_lists(
    src: np.ndarray, scl: np.ndarray, cen: np.ndarray, size: int, seed: int
) -> tuple[Any, str, dict[str, Any]]:
    """8-bit IVF lists that split each cluster in sub-lists (:mod:`.sublists`), the
    codec's name and the manifest's record: list ``g`` is sub-list ``g``, and the
    coarse quantizer holds the sub-lists' centroids."""
    t0 = time.perf_counter()
    n_c = cen.shape[0]
    list_of, per_cluster, sub_cen = split_clusters(src, scl, n_c, size, seed)
    index = _float_lists(src, list_of, sub_cen, "sq8")
    record = {
        "count": int(sub_cen.shape[0]),
        "target_size": int(size),
        "per_cluster": [int(v) for v in per_cluster],
        "method": "spherical k-means within each cluster",
        "seed": int(seed),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return index, "SQ8", record


def _float_lists(src: np.ndarray, scl: np.ndarray, cen: np.ndarray, codec: str) -> Any:
    """IVF lists of float32, fp16 or SQ8 values over the normalised sources
    (list ``c`` holds the sources ``scl == c``, one per row of ``cen``)."""
    import faiss

    n, d = src.shape
    quantizer = faiss.IndexFlatIP(d)
    quantizer.add(cen)
    ip = faiss.METRIC_INNER_PRODUCT
    if codec == "flat":
        index = faiss.IndexIVFFlat(quantizer, d, cen.shape[0], ip)
    else:
        qt = faiss.ScalarQuantizer.QT_8bit if codec == "sq8" else faiss.ScalarQuantizer.QT_fp16
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, cen.shape[0], qt, ip, False)
    if not index.is_trained:  # the scalar quantizer's ranges; the lists are fixed
        rng = np.random.default_rng(0)
        take = np.sort(rng.choice(n, size=min(n, 65536), replace=False))
        index.train(normalized_float32(src[take]))
    _add_in_lists(index, src, scl)
    return index


def _reduced_lists(
    src: np.ndarray, scl: np.ndarray, cen: np.ndarray, dims: int | None, codec: str
) -> tuple[Any, str, dict[str, Any]]:
    """IVF lists of the sources reduced on their principal axes (see
    :mod:`negmine.index.reduce`), the codec's name and the manifest's record."""
    import faiss

    axes, mean, info = fit_pca(src, dims)
    bias = -(axes @ mean)
    m = axes.shape[0]
    quantizer = faiss.IndexFlatIP(m)
    quantizer.add(np.ascontiguousarray(cen @ axes.T))
    ivf = faiss.IndexIVFFlat(quantizer, m, cen.shape[0], faiss.METRIC_INNER_PRODUCT)
    _add_in_lists(ivf, src, scl, lambda x: reduce_rows(x, axes, bias))
    record = {"method": "pca", "spec": codec, **info, "centred": True, "width_bytes": 4 * m,
              "query": "projected without centring", "rerank_default": DEFAULT_RERANK}  # fmt: skip
    return wrap_reduced(ivf, axes, mean), f"PCA{m}", record
