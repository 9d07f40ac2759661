"""Compiled kernels, used when the optional ``numba`` extra is installed.

The probe kernel's scan over 8-bit lists pushes each visited list's integer
scores into its queries' running top-``k`` heaps. Composed from library calls
that push takes a row maximum (torch), a gather of the queries' heap rows, a
push by FAISS's ``addn`` and a scatter of the rows back; the compiled push
(:func:`int_push`) does the same in one pass over the scores, in place on the
heaps. It keeps FAISS's arithmetic exactly (a score enters when it is above its
heap's smallest, which it replaces, ties broken by id as FAISS breaks them), so
the heaps, their ids and order, and the output bytes are the same:
``negmine[fast]`` changes speed only. ``NEGMINE_COMPILED=0`` in the environment
turns it off (read each time a scan is set up).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = ["compiled_version", "int_push"]

_log = logging.getLogger(__name__)
#: numba's version and the kernels module once imported; None: numba is missing.
_LOADED: dict[str, Any] = {}


def _enabled() -> bool:
    return os.environ.get("NEGMINE_COMPILED", "1").strip() != "0"


def _kernels() -> Any:
    if "module" not in _LOADED:
        try:
            import numba

            from . import _numba
        except ImportError:
            _LOADED.update(module=None, version=None)
        except RuntimeError as exc:  # e.g. numba finds no writable place for its cache
            _log.info("compiled kernels unavailable, FAISS's push instead: %s", exc)
            _LOADED.update(module=None, version=None)
        else:
            if numba.config.DISABLE_JIT:  # the kernels would run as Python, far slower
                _LOADED.update(module=None, version=None)
            else:
                _LOADED.update(module=_numba, version=numba.__version__)
                _log.debug("compiled kernels: numba %s", numba.__version__)
    return _LOADED["module"]


def compiled_version() -> str | None:
    """The numba version the compiled kernels run on; ``None`` when they are off
    (numba not installed, ``NUMBA_DISABLE_JIT=1``, or ``NEGMINE_COMPILED=0``)."""
    return _LOADED["version"] if _enabled() and _kernels() is not None else None


def int_push() -> Callable[..., None] | None:
    """The compiled push of integer scores into integer heaps, or ``None`` when off.

    ``int_push()(scores, rows, top_d, top_i, lo)`` pushes row ``r`` of ``scores``
    into heap row ``rows[r]`` exactly as FAISS's ``int_minheap_array_t.addn``
    would, with ids ``lo + j``: scores int32 [m, w], rows int64 [m] (distinct),
    top_d int32 [n, k] and top_i int64 [n, k] (min-heap rows, updated in place),
    lo int; arrays C-contiguous. The first call in a process compiles it, or
    loads it from numba's cache.
    """
    if not _enabled():
        return None
    mod = _kernels()
    return None if mod is None else mod.int_push
