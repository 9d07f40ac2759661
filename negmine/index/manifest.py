"""The manifest of an index directory: names, fingerprints, parsing and reading.

An index on disk is a directory holding ``index.faiss`` and ``manifest.json``.
The manifest records the FAISS factory string, metric, dimension, size, the
versions that built it, a fingerprint of the normalised source embeddings and
the size and sha256 of ``index.faiss``. Reading a manifest never opens
``index.faiss``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .._checks import fail, normalized_float32, release_pages

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "MANIFEST_NAME",
    "assignment_fingerprint",
    "fingerprint",
    "read_manifest",
]

FORMAT_VERSION = 1

#: File names inside an index directory.
INDEX_NAME = "index.faiss"
MANIFEST_NAME = "manifest.json"

_FP_CHUNK = 1 << 16
# index_bytes is checked when present (older manifests lack it; the sha256 still covers them)
_REQUIRED_KEYS = (
    "format_version",
    "factory",
    "metric",
    "d",
    "ntotal",
    "fingerprint",
    "index_sha256",
)


def _fingerprint_start(n: int, d: int):
    return hashlib.sha256(f"negmine-sources:{n}x{d}:".encode())


def fingerprint(source_embeddings: np.ndarray) -> str:
    """sha256 of the L2-normalised float32 sources ``[S, d]`` (shape included).

    Normalises chunk by chunk, so it never holds a second full copy.

    Parameters
    ----------
    source_embeddings : numpy.ndarray, float, shape [S, d]
        Raw source embeddings (finite, non-zero rows).

    Returns
    -------
    str
        ``"sha256:<64 hex digits>"``, equal to the ``fingerprint`` that
        :meth:`SourceIndex.build` records for the same sources.
    """
    n, d = source_embeddings.shape
    h = _fingerprint_start(n, d)
    for s in range(0, n, _FP_CHUNK):
        h.update(normalized_float32(source_embeddings[s : s + _FP_CHUNK]).data)
        release_pages(source_embeddings)
    return "sha256:" + h.hexdigest()


def assignment_fingerprint(source_cluster_ids: np.ndarray, n_clusters: int) -> str:
    """sha256 of the cluster of each source (int64) and the number of clusters."""
    h = hashlib.sha256(f"negmine-clusters:{n_clusters}:".encode())
    h.update(np.ascontiguousarray(source_cluster_ids, dtype=np.int64).data)
    return "sha256:" + h.hexdigest()


def _is_count(v: Any, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _is_hex64(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v.lower())


def _parse_manifest(raw: bytes, mpath: Path) -> dict[str, Any]:
    """Parse and check the bytes of a ``manifest.json``; errors name ``mpath``."""
    rebuild = "Rebuild the index with SourceIndex.build(...).save(path)."
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(str(mpath), "hold valid JSON", f"text that is not ({e})", rebuild)
    if not isinstance(obj, dict):
        fail(str(mpath), "hold a JSON object", f"a JSON {type(obj).__name__}", rebuild)
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        fail(
            str(mpath),
            f"hold the keys {', '.join(_REQUIRED_KEYS)}",
            f"a manifest without {', '.join(missing)}",
            "It was not written by SourceIndex.save or is damaged. " + rebuild,
        )
    if obj["format_version"] != FORMAT_VERSION:
        fail(
            str(mpath),
            f"have format_version {FORMAT_VERSION}",
            f"format_version {obj['format_version']!r}",
            "It was written by another negmine version. " + rebuild,
        )
    if obj["metric"] != "inner_product":
        fail(
            str(mpath),
            "have metric 'inner_product' (negmine searches normalised sources by inner product)",
            f"metric {obj['metric']!r}",
            rebuild,
        )
    bad = []
    if not isinstance(obj["factory"], str) or not obj["factory"]:
        bad.append(f"factory={obj['factory']!r}")
    for k in ("d", "ntotal"):
        if not _is_count(obj[k], 1):
            bad.append(f"{k}={obj[k]!r}")
    fp = obj["fingerprint"]
    if not (isinstance(fp, str) and fp.startswith("sha256:") and _is_hex64(fp[7:])):
        bad.append(f"fingerprint={fp!r}")
    if not _is_hex64(obj["index_sha256"]):
        bad.append(f"index_sha256={obj['index_sha256']!r}")
    if "index_bytes" in obj and not _is_count(obj["index_bytes"], 1):
        bad.append(f"index_bytes={obj['index_bytes']!r}")
    if bad:
        fail(
            str(mpath),
            "record a non-empty factory string, positive integers d and ntotal, "
            "a 'sha256:<hex>' fingerprint and the index file's sha256 and size",
            ", ".join(bad),
            "The manifest is damaged. " + rebuild,
        )
    return obj


def _missing_dir(p: Path) -> NoReturn:
    state = "a file" if p.exists() else "nothing"
    fail(
        "path",
        f"be an index directory holding {MANIFEST_NAME} and {INDEX_NAME}",
        f"'{p}' ({state} at that path)",
        "Build one with SourceIndex.build(...).save(path) or `negmine index build`.",
    )


def _missing_file(p: Path, name: str) -> NoReturn:
    fail(
        "path",
        f"be an index directory holding {MANIFEST_NAME} and {INDEX_NAME}",
        f"'{p}' without {name}",
        "The directory is not a complete index; rebuild it with SourceIndex.build(...).save(path).",
    )


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check only the JSON manifest of an index directory.

    ``index.faiss`` is not opened: use :meth:`SourceIndex.load` to verify it.

    Parameters
    ----------
    path : str or path-like
        An index directory written by :meth:`SourceIndex.save`.

    Returns
    -------
    dict
        The parsed manifest.

    Raises
    ------
    ValueError
        If ``path`` is not a directory, ``manifest.json`` is missing or not
        JSON, misses a required key, has another ``format_version`` or a
        metric other than ``inner_product``. The message names the path.
    """
    p = Path(path)
    if not p.is_dir():
        _missing_dir(p)
    mpath = p / MANIFEST_NAME
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        _missing_file(p, MANIFEST_NAME)
    return _parse_manifest(raw, mpath)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes of ``manifest.json`` for ``manifest`` (sorted keys, strict JSON)."""
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    return (text + "\n").encode("utf-8")


def build_versions() -> dict[str, str]:
    """Versions of negmine, faiss and numpy, as recorded in a manifest."""
    import faiss

    from .._version import __version__

    return {"negmine": __version__, "faiss": faiss.__version__, "numpy": np.__version__}
