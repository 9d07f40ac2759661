"""The command line's process setting: large freed blocks go back to the system."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallopt")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _glibc(), reason="glibc's mallopt and /proc only")

# Frees 31 blocks of 4 MiB after a 16 MiB block raised glibc's threshold past
# them; prints the MiB the resident set gave back. The last block stays, so the
# heap's top cannot be trimmed: only blocks mapped on their own come back.
_FREES = """
import sys
import numpy as np
from negmine._process import return_freed_blocks
print(return_freed_blocks() if sys.argv[1] == "fix" else None)
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
a = np.ones(1 << 21)
del a
blocks = [np.ones(1 << 19) for _ in range(32)]
keep = blocks[-1]
before = rss()
del blocks
print(before - rss())
"""


def _python(*args: str, code: int = 0, **env: str) -> list[str]:
    """stdout's words, then stderr's lines, of ``python *args`` (exit code ``code``)."""
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=False, cwd=ROOT,
        env=dict(base, PYTHONPATH=str(ROOT), **env),
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    return proc.stdout.split() + proc.stderr.splitlines()


def test_fixed_threshold_gives_freed_blocks_back():
    """With the threshold fixed, 124 MiB of freed 4 MiB blocks leave the resident
    set; with glibc's default (the reference, same script) they stay."""
    set_, fixed = _python("-c", _FREES, "fix")[:2]
    unset, default = _python("-c", _FREES, "leave")[:2]
    assert (set_, unset) == ("True", "None")
    assert float(fixed) > 100
    assert float(default) < 32


def test_user_setting_is_left_alone():
    """Where the environment sets the threshold, the user's value stands."""
    out = _python("-c", _FREES, "fix", MALLOC_MMAP_THRESHOLD_="65536")
    assert out[0] == "False"
    assert float(out[1]) > 100  # glibc applied the user's 64 KiB instead
    out = _python("-c", _FREES, "fix", MALLOC_MMAP_THRESHOLD_="67108864")
    assert out[0] == "False"
    assert float(out[1]) < 32  # and the user's 64 MiB: the blocks stay


def test_command_line_fixes_it_and_library_does_not():
    """``negmine`` sets it before running a command (said at debug level);
    importing and using the library does not."""
    lines = _python("-m", "negmine", "-v", "report", str(ROOT / "no-such-dir"), code=2)
    assert "glibc mmap threshold fixed at 4194304 bytes: True" in lines
    lines = _python("-m", "negmine", "-v", "report", "x", code=2, MALLOC_MMAP_THRESHOLD_="4194304")
    assert not any("mmap threshold" in line for line in lines)
    lib = "import negmine, negmine.miner, negmine.io, sys; print('negmine._process' in sys.modules)"
    assert _python("-c", lib)[0] == "False"
