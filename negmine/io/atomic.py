"""Atomic writes of single files: a temporary name, fsync, rename, fsync of the directory.

A reader never sees a half-written file: it sees the old content or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import fail
from .fs import fsync_dir

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json"]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file under a temporary name and move it into place on success.

    Parameters
    ----------
    path : str or path-like
        Final location. Its directory must exist.

    Yields
    ------
    pathlib.Path
        A temporary path ``.<name>.tmp-<pid>-<random>`` in the same directory.
        The body must create the file there.

    Notes
    -----
    On normal exit the temporary file is fsynced, renamed over ``path`` with
    :func:`os.replace` and the directory is fsynced, so ``path`` holds either
    the old content or the complete new content, never a mix. If the body
    raises (or the rename fails) the temporary file is removed, ``path`` is
    left untouched and the exception propagates.
    """
    final = Path(path)
    if not final.name:
        fail("path", "name a file", repr(str(path)))
    parent = final.parent
    if not parent.is_dir():
        fail(
            "path",
            "be inside an existing directory",
            f"{str(final)!r} (directory {str(parent)!r} does not exist)",
            "Create the directory first.",
            exc=FileNotFoundError,
        )
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or path-like
        Destination file; its directory must exist.
    data : bytes-like
        The complete file content.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        fail("data", "be bytes", f"an object of type {type(data).__name__}", exc=TypeError)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json_text(obj: Any, name: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        fail(
            name,
            "be JSON-serialisable (str keys; str, number, bool, None, list, dict; finite floats)",
            f"an object that is not ({e})",
            "Convert the offending value to a plain Python type.",
            exc=type(e),
        )


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        Destination file; its directory must exist.
    obj : Any
        JSON-serialisable object. numpy scalars and arrays and paths are
        converted to plain values; NaN and infinity are refused because strict
        JSON readers reject them.

    Notes
    -----
    Written with ``indent=2``, ``sort_keys=True`` and a trailing newline. The
    text is built before anything touches the disk, so an unserialisable
    ``obj`` leaves ``path`` untouched.
    """
    text = _json_text(obj, "obj") + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
