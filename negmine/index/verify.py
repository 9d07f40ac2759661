"""Checking ``index.faiss`` against its manifest, and remembering files already checked.

Hashing a large index file takes seconds, so a successful check is remembered in
``verified.json`` beside it. The record
holds the file's sha256 and its identity and change stamps as ``fstat``
reports them: device, inode, size, modification time and status-change time
(``st_ctime_ns``), all in nanoseconds. A later open skips the hash only when
all five are unchanged and the recorded sha256 is the one the manifest
expects. Any write to the file changes its size or modification time and its
status-change time; ``os.utime`` and ``touch`` can set the modification time
back but not the status-change time, which the kernel sets to the current
time on every change. A replaced file has another inode. What the record
trusts is therefore the kernel's clock and file-system bookkeeping: a file
changed by writing to the raw block device, by a file system that does not
keep ``ctime``, or after setting the system clock back, could pass unhashed.
A file changed less than :data:`RACY_SECONDS` after its last change could
share the old stamps (time stamps are coarse), so such a file is hashed but
not recorded.

The record is written atomically and only when the directory is writable; a
damaged or foreign record is ignored, and an index replaced by ``save`` comes
without one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .._checks import fail
from ..io.atomic import atomic_write_json
from .manifest import MANIFEST_NAME

__all__ = [
    "RACY_SECONDS",
    "VERIFIED_NAME",
    "check_index_file",
    "hash_and_sync",
    "remember",
    "sha256_fd",
]

logger = logging.getLogger(__name__)

#: Name of the record of verified index files inside an index directory.
VERIFIED_NAME = "verified.json"
#: A file changed this recently is not recorded as verified.
RACY_SECONDS = 1.0

_HASH_BLOCK = 1 << 22  # 4 MiB reads when hashing index.faiss
_STAMPS = ("dev", "ino", "size", "mtime_ns", "ctime_ns")


def sha256_fd(fd: int) -> str:
    """sha256 of a whole open file, read in 4 MiB blocks without moving its offset."""
    h = hashlib.sha256()
    pos = 0
    while True:
        if hasattr(os, "pread"):
            blk = os.pread(fd, _HASH_BLOCK, pos)
        else:  # pragma: no cover - platforms without pread
            os.lseek(fd, pos, os.SEEK_SET)
            blk = os.read(fd, _HASH_BLOCK)
        if not blk:
            break
        h.update(blk)
        pos += len(blk)
    return h.hexdigest()


def hash_and_sync(path: Path) -> tuple[int, str]:
    """Size and sha256 of a freshly written file, which is fsynced on the way."""
    fd = os.open(path, os.O_RDONLY)
    try:
        digest = sha256_fd(fd)
        os.fsync(fd)
        return os.fstat(fd).st_size, digest
    finally:
        os.close(fd)


def stamps(st: os.stat_result) -> dict[str, int]:
    """The identity and change stamps of a file that the record compares."""
    return {
        "dev": int(st.st_dev),
        "ino": int(st.st_ino),
        "size": int(st.st_size),
        "mtime_ns": int(st.st_mtime_ns),
        "ctime_ns": int(st.st_ctime_ns),
    }


def _recorded(raw: bytes | None, st: os.stat_result, want: str) -> bool:
    """Whether the record ``raw`` vouches for the file with status ``st``."""
    if raw is None:
        return False
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(rec, dict) or rec.get("sha256") != want:
        return False
    now = stamps(st)
    return all(rec.get(k) == now[k] for k in _STAMPS)


def check_index_file(
    fd: int, target: Path, manifest: dict[str, Any], verify: bool, record: bytes | None
) -> dict[str, Any] | None:
    """Refuse an ``index.faiss`` whose size or sha256 differs from ``manifest``.

    Parameters
    ----------
    fd : int
        The open file.
    target : pathlib.Path
        Its path, for messages.
    manifest : dict
        The parsed manifest of the same directory generation.
    verify : bool
        Check the sha256 (else only the size).
    record : bytes or None
        The bytes of ``verified.json`` of the same generation, if any.

    Returns
    -------
    dict or None
        A new record to store (:func:`remember`) when the file was hashed and
        may be recorded; None otherwise.
    """
    rebuild = "The file is truncated, damaged or was replaced; rebuild the index."
    before = os.fstat(fd)
    expected = manifest.get("index_bytes")
    if expected is not None and before.st_size != expected:
        fail(str(target), f"have the size its {MANIFEST_NAME} records ({expected} bytes)",
             f"size {before.st_size} bytes vs expected {expected}", rebuild)  # fmt: skip
    want = manifest["index_sha256"].lower()
    if not verify or _recorded(record, before, want):
        return None
    digest = sha256_fd(fd)
    if digest != want:
        fail(str(target), f"have the sha256 its {MANIFEST_NAME} records",
             f"a sha256 mismatch: {digest} vs expected {want}", rebuild)  # fmt: skip
    after = os.fstat(fd)
    racy = time.time_ns() - after.st_ctime_ns < RACY_SECONDS * 1e9
    if racy or stamps(before) != stamps(after):
        return None
    return {"file": target.name, "sha256": digest, **stamps(after)}


def remember(directory: Path, record: dict[str, Any]) -> None:
    """Store ``record`` as ``verified.json`` in ``directory``, if it is writable."""
    try:
        atomic_write_json(directory / VERIFIED_NAME, record)
    except OSError as e:
        logger.debug("not recording the verified index file in %s: %s", directory, e)
