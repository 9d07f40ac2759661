"""Fault injection for the kill tests; not part of any product path's I/O."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

__all__ = ["pause_point"]


def pause_point(name: str) -> None:
    """Sleep at ``name`` when a test asks for it.

    ``NEGMINE_PAUSE_AT=<name>``: print ``paused:<name>`` to stderr and sleep
    30 s, so a test can kill the process exactly there. The points:
    ``after-tier3-<g>`` and ``after-pairs-<g>`` (the driver checkpointed a
    block), ``task-tier3_block-<g>`` and ``task-pair_block-<g>`` (a Ray task
    began), ``during-write`` (an output tensor was written to the staging
    directory), ``before-swap`` (the staging directory is complete) and
    ``between-renames`` (the two-rename swap has set the old directory aside
    and not yet put the new one in place). With
    ``NEGMINE_PAUSE_ONCE=<dir>`` as well, the first process to reach the point
    writes its pid to ``<dir>/<name>.pid`` and pauses; later ones (a retried
    task) pass.
    """
    if os.environ.get("NEGMINE_PAUSE_AT") != name:
        return
    once = os.environ.get("NEGMINE_PAUSE_ONCE")
    if once:
        try:
            fd = os.open(Path(once) / f"{name}.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    print(f"paused:{name}", file=sys.stderr, flush=True)
    time.sleep(30)
