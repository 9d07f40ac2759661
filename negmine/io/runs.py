"""Durable runs: checkpoints of finished blocks, so a killed run can resume.

A run that writes to ``OUT`` keeps its finished blocks in the hidden sibling
directory ``.OUT.negmine-partial/``: one ``.npz`` per block of tier-3 queries
and per block of pairs, each followed by a ``.sha256`` file holding its
checksum, plus ``run.json`` with a key of the inputs and settings. Resuming
reuses a block only when the run key matches and the block's checksum holds;
everything else is recomputed. The blocks are fixed (they never depend on
``batch_size``), and every block is a pure function of the inputs and the
seed, so a resumed run writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import release_pages
from .atomic import atomic_path, atomic_write_bytes

__all__ = ["Checkpoints", "completed_run", "hash_arrays", "partial_dir"]

log = logging.getLogger(__name__)

_HASH_ROWS = 1 << 16


def partial_dir(output_dir: str | os.PathLike) -> Path:
    """Where the checkpoints of a run writing to ``output_dir`` live."""
    out = Path(output_dir)
    return out.parent / f".{out.name}.negmine-partial"


def hash_arrays(h: Any, arrays: dict[str, Any]) -> None:
    """Feed named arrays (numpy, memmap) into hashlib object ``h``, chunk by chunk."""
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{list(a.shape)};".encode())
        for s in range(0, a.shape[0], _HASH_ROWS):
            h.update(np.ascontiguousarray(a[s : s + _HASH_ROWS]).data)
            release_pages(a)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 22), b""):
            h.update(blk)
    return h.hexdigest()


class Checkpoints:
    """Finished blocks of one run, in a directory.

    Parameters
    ----------
    directory : path
        The run's checkpoint directory (see :func:`partial_dir`).
    run_key : str
        Identifies the inputs and settings; blocks of another key are never used.
    resume : bool
        Reuse matching blocks. Without it any earlier checkpoints are discarded.
    """

    def __init__(self, directory: str | os.PathLike, run_key: str, resume: bool):
        self.dir = Path(directory)
        self.run_key = run_key
        self.reused = 0
        self.computed = 0
        meta = self.dir / "run.json"
        keep = False
        if resume and meta.is_file():
            try:
                keep = json.loads(meta.read_text()).get("run_key") == run_key
            except (OSError, ValueError):
                keep = False
            if not keep:
                log.warning("checkpoints in %s are from other inputs or settings; starting over",
                            self.dir)  # fmt: skip
        if not keep and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not keep:
            atomic_write_bytes(meta, json.dumps({"run_key": run_key}).encode())

    def _path(self, kind: str, index: int) -> Path:
        return self.dir / f"{kind}-{index:06d}.npz"

    def load(self, kind: str, index: int) -> dict[str, np.ndarray] | None:
        """The arrays of a finished block, or None when absent or damaged."""
        path = self._path(kind, index)
        side = path.with_suffix(".sha256")
        if not (path.is_file() and side.is_file()):
            return None
        if side.read_text().strip() != _file_sha256(path):
            log.warning("checkpoint %s fails its checksum; recomputing it", path)
            return None
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        self.reused += 1
        return arrays

    def save(self, kind: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        """Store a finished block: the data first, then its checksum."""
        path = self._path(kind, index)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
        atomic_write_bytes(path.with_suffix(".sha256"), _file_sha256(path).encode())
        self.computed += 1

    def finish(self) -> None:
        """Remove the checkpoints once the outputs are in place."""
        shutil.rmtree(self.dir, ignore_errors=True)


def completed_run(
    output_dir: str | os.PathLike, key: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(tensors, manifest)`` of ``output_dir`` when it holds a complete run with
    this key, else None."""
    import torch

    from .outputs import load_outputs

    if not (Path(output_dir) / "manifest.json").is_file():
        return None
    try:
        done = load_outputs(output_dir)
    except ValueError:
        return None
    if done["manifest"].get("run_key") != key:
        return None
    names = ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores")
    tensors = {k: torch.from_numpy(np.asarray(done[k])) for k in names if k in done}
    return tensors, done["manifest"]
