"""File-system primitives for atomic replacement of files and directories (Linux first)."""

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
from collections.abc import Callable
from pathlib import Path

__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "fsync_dir", "install_dir", "renameat2"]

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

    Raises ``OSError`` for real failures (``FileExistsError`` for
    ``RENAME_NOREPLACE`` onto an existing path).
    """
    call = _renameat2_call()
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
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        logger.warning("could not remove the replaced directory %s", path)


def install_dir(tmp: Path, out: Path, existing: bool) -> None:
    """Put the complete directory ``tmp`` at ``out`` in one step where possible.

    Where ``out`` exists the two are exchanged atomically
    (``renameat2(RENAME_EXCHANGE)``) and the old one is deleted; without that
    call the old one is renamed aside first, which leaves a moment in which
    ``out`` does not exist (but is never half-written).
    """
    parent = out.parent
    if not existing:
        if not renameat2(tmp, out, RENAME_NOREPLACE):
            os.rename(tmp, out)
        fsync_dir(parent)
        return
    if renameat2(tmp, out, RENAME_EXCHANGE):
        # ``out`` is the new index; the old one now sits at the temporary name.
        fsync_dir(parent)
        remove_tree(tmp)
        return
    # No atomic exchange here: two renames leave ``out`` missing for a moment.
    old = parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    fsync_dir(parent)
    remove_tree(old)
