"""Directories replaced whole, and what a killed replacement leaves behind (Linux first).

A new copy of a directory ``OUT`` is built in a hidden sibling
``.OUT.<kind>-<pid>-<random>`` (kind ``staging`` for mining outputs, ``tmp``
for indexes) and then put in place by :func:`install_dir`: exchanged with the
old copy in one step by ``renameat2(RENAME_EXCHANGE)`` where the system allows
it, otherwise by two renames through ``.OUT.old-<pid>-<random>``. The ``<pid>``
names the writing process, so leftovers of a dead writer are recognised:
:func:`recover_dir` moves a set-aside old copy back when a writer died between
the two renames, and :func:`remove_stale` deletes what is left once ``OUT`` is
in place.

Setting the environment variable ``NEGMINE_NO_RENAMEAT2=1`` makes
:func:`renameat2` report the call as unavailable, so the two-rename path of
other file systems can be exercised anywhere.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .._faults import pause_point

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "fsync_dir",
    "install_dir",
    "recover_dir",
    "remove_stale",
    "renameat2",
    "replace_dir",
    "settle_dir",
    "staging_dir",
]

logger = logging.getLogger(__name__)

# renameat2(2): Linux >= 3.15; glibc >= 2.28 exports a wrapper.
_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276}
# errno values meaning "this kernel, file system or sandbox cannot do it".
_RENAMEAT2_UNSUPPORTED = frozenset(
    {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM}
)


def fsync_dir(path: Path) -> None:
    # Makes renames inside ``path`` durable on POSIX; where directories cannot
    # be opened, the rename is as durable as the OS makes it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        logger.debug("cannot open directory %s to fsync it", path)
        return
    try:
        os.fsync(fd)
    except OSError:
        logger.debug("cannot fsync directory %s", path)
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _renameat2_call() -> Callable[..., int] | None:
    """A callable ``(olddirfd, old, newdirfd, new, flags) -> int`` or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    nr = _SYS_RENAMEAT2.get(platform.machine().lower())
    syscall = getattr(libc, "syscall", None)
    if nr is None or syscall is None:
        return None
    syscall.restype = ctypes.c_long

    def call(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> int:
        return syscall(
            ctypes.c_long(nr),
            ctypes.c_long(olddirfd),
            ctypes.c_char_p(old),
            ctypes.c_long(newdirfd),
            ctypes.c_char_p(new),
            ctypes.c_long(flags),
        )

    return call


def renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False when the system cannot do it.

    Also False whenever the environment variable ``NEGMINE_NO_RENAMEAT2`` is
    set (non-empty), which forces the callers' fallbacks.

    Raises ``OSError`` for real failures (``FileExistsError`` for
    ``RENAME_NOREPLACE`` onto an existing path).
    """
    call = None if os.environ.get("NEGMINE_NO_RENAMEAT2") else _renameat2_call()
    if call is None:
        return False
    rc = call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _RENAMEAT2_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def remove_tree(path: Path) -> None:
    """Delete the directory ``path``; a warning is logged if it cannot be removed."""
    for _ in range(2):  # a second pass catches a file created while the first ran
        shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        logger.warning("could not remove the replaced directory %s", path)


# --------------------------------------------------------------------------
# siblings left by writers
# --------------------------------------------------------------------------

#: Kinds of hidden sibling directories a writer of ``OUT`` creates.
SIBLING_KINDS = ("staging", "tmp", "old")
_WAIT_SECONDS = 5.0  # how long a reader waits for a live writer between its two renames


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a reused pid counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def siblings(target: Path, kind: str) -> list[tuple[Path, int]]:
    """Hidden sibling directories ``.<name>.<kind>-<pid>-<random>`` of ``target``."""
    found = []
    prefix = f".{target.name}.{kind}-"
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    for n in names:
        if not n.startswith(prefix):
            continue
        try:
            pid = int(n[len(prefix) :].split("-")[0])
        except ValueError:
            continue
        p = target.parent / n
        if p.is_dir() and not p.is_symlink():
            found.append((p, pid))
    return found


def new_sibling(target: Path, kind: str) -> Path:
    """Create an empty ``.<name>.<kind>-<pid>-<random>`` directory beside ``target``."""
    d = target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
    d.mkdir()
    return d


def _newest(paths: list[Path]) -> Path:
    # A rename updates the moved directory's ctime: the newest set-aside copy
    # is the one moved last.
    return max(paths, key=lambda p: (p.stat().st_ctime_ns, p.name))


def recover_dir(target: str | os.PathLike[str]) -> bool:
    """Put back the old copy of ``target`` that a killed two-rename swap set aside.

    When ``target`` is missing and a ``.<name>.old-<pid>-*`` directory of a
    process that no longer runs sits beside it, the writer died between its
    two renames: the newest such copy is renamed back to ``target``.

    Returns
    -------
    bool
        True if a copy was moved back.
    """
    target = Path(target)
    if os.path.lexists(target):
        return False
    dead = [p for p, pid in siblings(target, "old") if not pid_alive(pid)]
    if not dead:
        return False
    old = _newest(dead)
    try:
        if not renameat2(old, target, RENAME_NOREPLACE):
            os.rename(old, target)
    except OSError as e:
        if os.path.isdir(target):
            return False  # another process put a copy back first
        raise OSError(e.errno, f"cannot restore {old} to {target}: {e.strerror}") from e
    fsync_dir(target.parent)
    logger.warning("restored %s from %s, left by a writer killed while replacing it", target, old)
    return True


def settle_dir(target: str | os.PathLike[str]) -> None:
    """Make ``target`` present if a replacement of it was interrupted or is under way.

    Restores the old copy of a dead writer (:func:`recover_dir`) and waits up
    to a few seconds while a live writer is between its two renames.
    """
    target = Path(target)
    deadline = time.monotonic() + _WAIT_SECONDS
    while not os.path.lexists(target) and not recover_dir(target):
        live = [p for p, pid in siblings(target, "old") if pid_alive(pid)]
        if not live or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def remove_stale(target: str | os.PathLike[str]) -> None:
    """Delete what dead writers of ``target`` left beside it.

    An interrupted swap is first undone (:func:`recover_dir`); then staging,
    temporary and set-aside directories of processes that no longer run are
    removed. A set-aside copy is kept while ``target`` is missing.
    """
    target = Path(target)
    recover_dir(target)
    present = os.path.lexists(target)
    for kind in SIBLING_KINDS:
        if kind == "old" and not present:
            continue
        for p, pid in siblings(target, kind):
            if not pid_alive(pid):
                remove_tree(p)


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """A new empty hidden directory beside ``target`` to build its replacement in.

    The parent is created; leftovers of dead writers are dealt with first
    (:func:`remove_stale`).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    return new_sibling(target, "staging")


# --------------------------------------------------------------------------
# putting a directory in place
# --------------------------------------------------------------------------


def install_dir(tmp: Path, out: Path, existing: bool) -> None:
    """Put the complete directory ``tmp`` at ``out`` in one step where possible.

    Where ``out`` exists the two are exchanged atomically
    (``renameat2(RENAME_EXCHANGE)``) and the old one is deleted. Without that
    call the old one is first renamed to ``.<name>.old-<pid>-<random>``, then
    ``tmp`` to ``out``: for that moment ``out`` does not exist, and a process
    killed there leaves the complete old copy, which :func:`recover_dir` puts
    back.
    """
    parent = out.parent
    if not existing:
        if not renameat2(tmp, out, RENAME_NOREPLACE):
            os.rename(tmp, out)
        fsync_dir(parent)
        return
    if renameat2(tmp, out, RENAME_EXCHANGE):
        # ``out`` is the new directory; the old one now sits at the temporary name.
        fsync_dir(parent)
        remove_tree(tmp)
        return
    old = parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        fsync_dir(parent)
        pause_point("between-renames")
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    fsync_dir(parent)
    remove_tree(old)


def replace_dir(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the complete directory ``new`` at ``target``, replacing what was there.

    A reader of ``target`` sees either the old directory or the new one, never a
    mix (see :func:`install_dir`).
    """
    target = Path(target)
    install_dir(Path(new), target, target.exists())
