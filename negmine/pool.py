"""Pools of tier-3 candidates, kept with a run's outputs and read back to re-mine.

A run mined with ``pool_depth`` keeps, for each tier-3 query (a question and
the cluster it skips), the unfiltered search's best ``w`` candidates (cluster
skipped, positives excluded) and their cosines to the question. They are
three ``.npy`` files in the output directory, written in the same staging
directory as the tensors and swapped in with them:

``pool_keys.npy``
    int64 [M]: ``cluster * Q + question`` of each query, ascending.
``pool_ids.npy``
    int64 [M, w]: source ids, best first; ``-1`` where the row ran short.
``pool_scores.npy``
    float32 [M, w]: their cosines; ``-inf`` where short.

The manifest's ``pool`` entry records each file's sha256, dtype and shape,
the depth, the search the pool came from and a fingerprint of every input
array, so a re-mine can refuse a damaged pool, other data or another search,
naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import fail
from .io import (
    MANIFEST_NAME,
    atomic_path,
)

__all__ = [
    "POOL_FILES",
    "POOL_KEY",
    "StoredPool",
    "link_pool_files",
    "read_pool",
    "write_pool_files",
]

#: Manifest key of the pool's record.
POOL_KEY = "pool"
#: The pool's arrays and their file names.
POOL_FILES = {"keys": "pool_keys.npy", "ids": "pool_ids.npy", "scores": "pool_scores.npy"}
_STANDARD = ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores")


class _HashingWriter:
    """A binary file that hashes what is written to it."""

    def __init__(self, f: Any):
        self.f = f
        self.h = hashlib.sha256()

    def write(self, data: Any) -> int:
        self.h.update(data)
        return self.f.write(data)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 22), b""):
            h.update(blk)
    return "sha256:" + h.hexdigest()


def write_pool_files(
    directory: Path, keys: np.ndarray, scores: np.ndarray, ids: np.ndarray
) -> dict[str, dict[str, Any]]:
    """Write the pool's three ``.npy`` files into ``directory``, each atomically.

    Parameters
    ----------
    directory : Path
    keys : int64 [M]
    scores : float32 [M, w]
    ids : int64 [M, w]

    Returns
    -------
    dict
        Per array (``keys``, ``ids``, ``scores``): ``file``, ``dtype``,
        ``shape`` and ``sha256`` (of the file's bytes).
    """
    arrays = {"keys": keys, "ids": ids, "scores": scores}
    record = {}
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        path = directory / POOL_FILES[name]
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            w = _HashingWriter(f)
            np.save(w, a, allow_pickle=False)
        record[name] = {"file": path.name, "dtype": str(a.dtype), "shape": list(a.shape),
                        "sha256": "sha256:" + w.h.hexdigest()}  # fmt: skip
    return record


def link_pool_files(source: StoredPool, directory: Path) -> dict[str, dict[str, Any]]:
    """Put a stored pool's (verified, never rewritten) files into ``directory``.

    Hard links where the file system allows, else copies; returns their records.
    """
    record = {}
    for name, rec in source.files.items():
        src, dst = source.directory / rec["file"], directory / rec["file"]
        with atomic_path(dst) as tmp:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
        record[name] = dict(rec)
    return record


def _read_manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads((run_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class StoredPool:
    """A run's pool, verified and memory-mapped; pickles as its paths.

    Parameters
    ----------
    directory : Path
        The run's output directory.
    record : dict
        The manifest's ``pool`` entry.
    """

    def __init__(self, directory: Path, record: dict[str, Any]):
        self.directory = Path(directory)
        self.record = record
        self.files = record["files"]
        self._arrays: dict[str, np.ndarray] | None = None

    def array(self, name: str) -> np.ndarray:
        """``keys``, ``ids`` or ``scores``, memory-mapped read-only."""
        if self._arrays is None:
            self._arrays = {
                k: np.load(self.directory / v["file"], mmap_mode="r", allow_pickle=False)
                for k, v in self.files.items()
            }
        return self._arrays[name]

    def block(self, c0: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores float32 [c1 - c0, w] and ids int64 [c1 - c0, w] of queries ``c0:c1``."""
        return np.asarray(self.array("scores")[c0:c1]), np.asarray(self.array("ids")[c0:c1])

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_arrays"} | {"_arrays": None}


def read_pool(run_dir: str | os.PathLike, verify: bool = True) -> tuple[dict[str, Any], StoredPool]:
    """The manifest of a pooled run and its pool, each file checked.

    Parameters
    ----------
    run_dir : path
        An output directory mined with ``pool_depth``.
    verify : bool
        Check every pool file's sha256 against the manifest (reads the files).

    Raises
    ------
    ValueError
        When ``run_dir`` is no complete output directory, was mined without a
        pool, or a pool file is missing or does not match its record (the
        message names the file).
    """
    d = Path(run_dir)
    manifest = _read_manifest(d)
    if manifest is None:
        fail("run_dir", f"be a complete mining output directory (with a valid {MANIFEST_NAME})",
             repr(str(d)), "Pass the OUT directory of a finished `negmine mine` run.")  # fmt: skip
    record = manifest.get(POOL_KEY)
    if not isinstance(record, dict) or set(record.get("files", {})) != set(POOL_FILES):
        fail("run_dir", "hold a run mined with a pool of candidates", repr(str(d)),
             "Mine it again with pool_depth (--pool-depth 32) to re-mine from it.")  # fmt: skip
    for name, rec in record["files"].items():
        path = d / rec["file"]
        if rec["file"] != POOL_FILES[name] or not path.is_file():
            fail(str(path), "exist, as the run's manifest lists it", "a missing file",
                 "The run directory is incomplete; mine it again.")  # fmt: skip
        if verify:
            got = _file_sha256(path)
            if got != rec["sha256"]:
                fail(str(path), f"match the sha256 its manifest records ({rec['sha256']})",
                     f"a file whose sha256 is {got}",
                     "The pool file is damaged or was replaced; mine the run again.")  # fmt: skip
    pool = StoredPool(d, record)
    for name, rec in record["files"].items():
        a = pool.array(name)
        if str(a.dtype) != rec["dtype"] or list(a.shape) != rec["shape"]:
            fail(str(d / rec["file"]), f"hold {rec['dtype']} {rec['shape']}",
                 f"{a.dtype} {list(a.shape)}", "Mine the run again.")  # fmt: skip
    return manifest, pool
