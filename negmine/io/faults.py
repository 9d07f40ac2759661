"""Fault injection for the kill tests: named points where a process can be made to wait."""

from __future__ import annotations

import os

__all__ = ["pause_point"]


def pause_point(name: str) -> None:
    """Fault-injection hook for the kill tests: sleep here when asked to.

    ``NEGMINE_PAUSE_AT=<name>`` makes the process print ``paused:<name>`` to
    stderr and sleep 30 s at that point, so a test can kill it exactly there.
    The points: ``after-tier3-<g>`` and ``after-pairs-<g>`` (a block was
    checkpointed), ``during-write`` (an output tensor was written to the
    staging directory), ``before-swap`` (the staging directory is complete)
    and ``between-renames`` (the two-rename swap has set the old directory
    aside and not yet put the new one in place).
    """
    if os.environ.get("NEGMINE_PAUSE_AT") == name:
        import sys
        import time

        print(f"paused:{name}", file=sys.stderr, flush=True)
        time.sleep(30)
