"""The index store: writing an index directory whole, opening one generation of it, listing.

The store is built so that a reader can trust what it loads:

* :func:`load_index` checks the manifest and then the size and sha256 of
  ``index.faiss`` *before* FAISS parses the file, so a truncated or altered
  file raises ``ValueError`` instead of being parsed (FAISS would load a
  flipped byte in the vectors silently). A verified file is remembered
  (:mod:`negmine.index.verify`), so reopening it unchanged skips the hash.
* :func:`save_index` writes the whole directory under a temporary name next
  to it and swaps it into place (:func:`negmine.io.fs.install_dir`), so a
  concurrent reader sees either the old complete index or the new one, and a
  writer killed at any moment leaves the old index or the new one.
* :func:`list_indexes` shows the indexes of a store directory, never the
  hidden directories of writers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .._checks import fail
from ..io.fs import install_dir, new_sibling, remove_stale, remove_tree, settle_dir, siblings
from .manifest import (
    INDEX_NAME,
    MANIFEST_NAME,
    _missing_dir,
    _missing_file,
    _parse_manifest,
    manifest_bytes,
)
from .verify import VERIFIED_NAME, check_index_file, hash_and_sync, remember

__all__ = ["IndexEntry", "list_indexes", "load_index", "save_index"]

logger = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 5  # a load that races a rebuild starts over at most this often


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------


def _ours(name: str) -> bool:
    """Whether ``name`` inside an index directory is a file the store writes."""
    return name in (INDEX_NAME, MANIFEST_NAME, VERIFIED_NAME) or name.startswith(
        f".{VERIFIED_NAME}.tmp-"
    )


def _check_save_target(out: Path, overwrite: bool) -> bool:
    """Return whether ``out`` exists (as a replaceable index directory)."""
    if out.is_symlink():
        fail("path", "be a real directory, not a symbolic link (saving replaces the directory "
             "itself)", f"'{out}' -> '{os.readlink(out)}'",
             "Pass the directory the link points to.", exc=FileExistsError)  # fmt: skip
    if not out.exists():
        return False
    if not out.is_dir():
        fail("path", "be a directory or a new path", f"'{out}', which is a file",
             exc=FileExistsError)  # fmt: skip
    if not overwrite and os.listdir(out):
        fail("path", "be new or an empty directory unless overwrite=True", f"'{out}', which exists",
             "Pass overwrite=True to replace that index, or choose another path.",
             exc=FileExistsError)  # fmt: skip
    extra = sorted(n for n in os.listdir(out) if not _ours(n))
    if extra:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        fail("path", f"be a new path or an index directory holding only {INDEX_NAME} and "
             f"{MANIFEST_NAME} (saving replaces the whole directory)", f"'{out}' holding {shown}",
             "Choose a new or empty directory for the index.", exc=FileExistsError)  # fmt: skip
    return True


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_index(index: Any, manifest: dict[str, Any], path: Path, overwrite: bool) -> dict[str, Any]:
    """Write ``index`` and its manifest as the directory ``path``; see ``SourceIndex.save``.

    Returns
    -------
    dict
        The manifest written (``manifest`` plus ``index_sha256`` and ``index_bytes``).
    """
    import faiss

    out = Path(path)
    if out.name in ("", ".", ".."):
        fail("path", "name a directory", repr(str(path)), "Pass e.g. indexes/<name>.")
    if not out.is_symlink():
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(out)  # puts back an index a killed writer had set aside
    existing = _check_save_target(out, overwrite)
    tmp = new_sibling(out, "tmp")
    try:
        faiss.write_index(index, str(tmp / INDEX_NAME))
        size, digest = hash_and_sync(tmp / INDEX_NAME)
        written = dict(manifest, index_sha256=digest, index_bytes=size)
        _write_synced(tmp / MANIFEST_NAME, manifest_bytes(written))
        install_dir(tmp, out, existing)
    except BaseException:
        remove_tree(tmp)
        raise
    return written


# --------------------------------------------------------------------------
# opening one consistent generation of an index directory
# --------------------------------------------------------------------------


class _Replaced(Exception):
    """The index directory was replaced while it was being opened."""


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _open_dir(p: Path) -> int | None:
    if os.open not in os.supports_dir_fd:  # pragma: no cover - e.g. Windows
        if not p.is_dir():
            _missing_dir(p)
        return None
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        return os.open(p, flags)
    except (FileNotFoundError, NotADirectoryError):
        _missing_dir(p)


def _open_in(dfd: int | None, p: Path, name: str) -> int:
    if dfd is None:  # pragma: no cover - platforms without dir_fd
        return os.open(p / name, os.O_RDONLY)
    return os.open(name, os.O_RDONLY, dir_fd=dfd)


def _read_in(dfd: int | None, p: Path, name: str) -> bytes | None:
    try:
        fd = _open_in(dfd, p, name)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _vanished(p: Path, dfd: int | None, name: str) -> NoReturn:
    """A file is missing: raise ``_Replaced`` if the directory was swapped, else fail."""
    if dfd is not None:
        try:
            now = os.stat(p)
        except FileNotFoundError:
            raise _Replaced from None
        if not _same_file(now, os.fstat(dfd)):
            raise _Replaced
    _missing_file(p, name)


def _open_generation(p: Path) -> tuple[dict[str, Any], int, bytes | None]:
    """Manifest, an open ``index.faiss`` descriptor and the verified record of one generation.

    The directory is opened once and the files are opened relative to it, so
    a rebuild that swaps ``p`` meanwhile cannot pair an old manifest with a
    new index file. The caller closes the returned descriptor.
    """
    dfd = _open_dir(p)
    try:
        raw = _read_in(dfd, p, MANIFEST_NAME)
        if raw is None:
            _vanished(p, dfd, MANIFEST_NAME)
        manifest = _parse_manifest(raw, p / MANIFEST_NAME)
        try:
            fd = _open_in(dfd, p, INDEX_NAME)
        except FileNotFoundError:
            _vanished(p, dfd, INDEX_NAME)
        return manifest, fd, _read_in(dfd, p, VERIFIED_NAME)
    finally:
        if dfd is not None:
            os.close(dfd)


def _fd_path(fd: int) -> str | None:
    """A path that opens the very file behind ``fd`` (Linux), or None."""
    p = f"/proc/self/fd/{fd}"
    return p if os.path.exists(p) else None


def _mmap_flags(factory: str) -> int:
    import faiss

    read_only = faiss.IO_FLAG_READ_ONLY
    ifc = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    if "IVF" in factory or ifc is None:
        return faiss.IO_FLAG_MMAP | read_only
    return ifc | read_only


def _read_faiss(fd: int, target: Path, manifest: dict[str, Any], mmap: bool) -> Any:
    import faiss

    flags = _mmap_flags(manifest["factory"]) if mmap else 0
    src = _fd_path(fd)
    try:
        index = faiss.read_index(src or str(target), flags)
    except (RuntimeError, MemoryError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(str(target), "hold a FAISS index that this faiss can read",
             f"a file faiss.read_index refuses ({first})",
             "Rebuild the index, or install the faiss version that wrote it "
             f"({manifest.get('versions', {}).get('faiss', 'unknown')}).")  # fmt: skip
    if src is None and not _same_file(os.stat(target), os.fstat(fd)):
        raise _Replaced  # pragma: no cover - only without /proc
    metric = getattr(index, "metric_type", None)
    if (index.ntotal != manifest["ntotal"] or index.d != manifest["d"]
            or metric != faiss.METRIC_INNER_PRODUCT):  # fmt: skip
        fail(str(target), f"hold an index matching its {MANIFEST_NAME}",
             f"ntotal={index.ntotal}, d={index.d}, metric_type={metric} "
             f"(manifest: ntotal={manifest['ntotal']}, d={manifest['d']}, inner product)",
             "Rebuild the index.")  # fmt: skip
    return index


def _load_once(p: Path, mmap: bool, verify: bool) -> tuple[Any, dict[str, Any]]:
    target = p / INDEX_NAME
    manifest, fd, record = _open_generation(p)
    try:
        fresh = check_index_file(fd, target, manifest, verify, record)
        index = _read_faiss(fd, target, manifest, mmap)
    finally:
        os.close(fd)
    if fresh is not None:
        remember(p, fresh)
    return index, manifest


def load_index(path: Path, mmap: bool, verify: bool) -> tuple[Any, dict[str, Any]]:
    """The FAISS index and manifest of the directory ``path``; see ``SourceIndex.load``."""
    p = Path(path)
    for _ in range(_LOAD_ATTEMPTS):
        # Puts back an index a killed writer set aside, or waits out a live
        # writer between the two renames of its fallback swap.
        settle_dir(p)
        try:
            return _load_once(p, mmap, verify)
        except _Replaced:
            continue
        except ValueError:
            if p.exists() or not siblings(p, "old"):
                raise
    fail("path", "stay in place while it is loaded",
         f"'{p}' replaced {_LOAD_ATTEMPTS} times during one load",
         "Retry once the rebuild is done.")  # fmt: skip


# --------------------------------------------------------------------------
# listing a store
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexEntry:
    """One index directory of a store.

    Attributes
    ----------
    name : str
        Directory name.
    path : pathlib.Path
    manifest : dict or None
        The parsed manifest, or None when it is unreadable.
    error : str or None
        Why the manifest is unreadable.
    """

    name: str
    path: Path
    manifest: dict[str, Any] | None
    error: str | None = None


def list_indexes(store: str | os.PathLike[str]) -> list[IndexEntry]:
    """The index directories in ``store``, by name.

    Hidden directories (a writer's staging, temporary or set-aside copies) are
    never listed; an index whose writer was killed between the two renames of
    a fallback swap is put back first and listed. Mining output directories
    are skipped.

    Raises
    ------
    ValueError
        If ``store`` is not a directory.
    """
    root = Path(store)
    if not root.is_dir():
        fail("store", "be a directory", f"'{root}'", "Pass the directory holding the indexes.")
    for p in root.iterdir():
        if p.name.startswith(".") and ".old-" in p.name:
            settle_dir(root / p.name[1:].rsplit(".old-", 1)[0])
    entries = []
    for d in sorted(root.iterdir()):
        if d.name.startswith(".") or not (d / MANIFEST_NAME).is_file():
            continue
        if (d / "hard_negatives.pt").exists():
            continue  # a mining output, not an index
        try:
            m = _parse_manifest((d / MANIFEST_NAME).read_bytes(), d / MANIFEST_NAME)
        except ValueError as e:
            entries.append(IndexEntry(d.name, d, None, str(e)))
            continue
        entries.append(IndexEntry(d.name, d, m))
    return entries
