"""Nothing lost: real processes killed at real moments, then resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from negmine.io import load_outputs
from negmine.io.datasets import save_dataset
from negmine.io.runs import partial_dir
from negmine.synth import make_corpus

ROOT = Path(__file__).resolve().parents[1]
FILES = ("hard_negatives.pt", "negative_tiers.pt", "negative_scores.pt", "positive_scores.pt")
_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # Several tier-3 blocks (4096 queries) and two pair blocks (65536 pairs).
    corpus = make_corpus(6000, 30, 70000, 16, seed=3)
    d = tmp_path_factory.mktemp("durable") / "data"
    save_dataset(d, corpus)
    return d


def _cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "negmine", "mine", str(data), "--out", str(out),
            "--n-neg", "8", "--quiet", *extra]  # fmt: skip


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(kw)
    return env


def _run(data: Path, out: Path, *extra: str) -> None:
    proc = subprocess.run(_cmd(data, out, *extra), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _kill_at(data: Path, out: Path, point: str, *extra: str) -> None:
    """Start a run, wait until it reaches ``point``, SIGKILL it there."""
    proc = subprocess.Popen(
        _cmd(data, out, *extra), env=_env(NEGMINE_PAUSE_AT=point),
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    line = proc.stderr.readline()
    try:
        assert line.strip() == f"paused:{point}", line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in FILES}


def _stable(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    stats = m["stats"]
    return {"config": m["config"], "tiers": stats["tiers"], "short": stats["shortfalls"]}


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    t0 = time.perf_counter()
    _run(data, out)
    _SECONDS["reference"] = time.perf_counter() - t0
    return out


@pytest.mark.parametrize("point", ["after-tier3-1", "after-pairs-0", "during-write", "before-swap"])
def test_killed_then_resumed_is_byte_identical(data, reference, tmp_path, point):
    out = tmp_path / "out"
    _kill_at(data, out, point)
    assert not (out / "manifest.json").exists()  # nothing half-written became visible
    assert partial_dir(out).is_dir()
    _run(data, out, "--resume")
    assert _bytes(out) == _bytes(reference)
    assert _stable(out) == _stable(reference)
    reused = json.loads((out / "manifest.json").read_text())["stats"]["checkpoint_blocks"]
    assert reused["reused"] > 0
    assert not partial_dir(out).exists()  # cleaned once complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _blocks(out: Path) -> int:
    """Finished checkpoint blocks of the run writing ``out`` (each ends with its checksum)."""
    d = partial_dir(out)
    return len(list(d.glob("*.sha256"))) if d.is_dir() else 0


def test_killed_at_random_moments(data, reference, tmp_path):
    out = tmp_path / "out"
    rng = np.random.default_rng(11)
    at_kill = []
    for _ in range(3):
        start = _blocks(out)
        proc = subprocess.Popen(_cmd(data, out, "--resume"), env=_env(),
                                stderr=subprocess.DEVNULL)  # fmt: skip
        # Wait for this run to finish one more block, then kill it a random
        # moment later: past start-up, while it computes or writes the next.
        deadline = time.monotonic() + 300
        while _blocks(out) <= start:
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL  # killed, not finished
        assert not (out / "manifest.json").exists()
        at_kill.append(_blocks(out))
    _run(data, out, "--resume")
    assert _bytes(out) == _bytes(reference)
    counts = json.loads((out / "manifest.json").read_text())["stats"]["checkpoint_blocks"]
    # Every kill landed mid-run: some blocks were done, and not all of them.
    total = counts["reused"] + counts["computed"]
    assert 0 < at_kill[0] <= at_kill[1] <= at_kill[2] < total, (at_kill, counts)
    assert counts["reused"] >= at_kill[2] and counts["computed"] > 0
    # Resuming a run that is already complete does nothing, successfully.
    mtime = (out / "manifest.json").stat().st_mtime_ns
    proc = subprocess.run(
        [c for c in _cmd(data, out, "--resume") if c != "--quiet"], env=_env(),
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "already holds this run" in proc.stderr and "3 high-similarity" in proc.stdout
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_overwrite_killed_before_swap_keeps_the_old_run(data, reference, tmp_path):
    out = tmp_path / "out"
    _run(data, out, "--seed", "7")
    before = _bytes(out)
    proc = subprocess.run(_cmd(data, out), env=_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr  # explicit, and refused early
    _kill_at(data, out, "before-swap", "--overwrite")
    assert _bytes(out) == before  # the old run is intact and complete
    assert load_outputs(out)["manifest"]["seed"] == 7
    _run(data, out, "--overwrite", "--resume")
    assert _bytes(out) == _bytes(reference)


def _limited(kib: int, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run with a file-size limit: a write past ``kib`` KiB fails (EFBIG)."""
    cmd = " ".join(f"'{c}'" for c in _cmd(data, out, *extra))
    return subprocess.run(["bash", "-c", f"ulimit -f {kib}; exec {cmd}"], env=_env(),
                          capture_output=True, text=True)  # fmt: skip


def _everything(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_disk_full_loses_nothing(data, reference, tmp_path):
    out = tmp_path / "out"
    _run(data, out, "--seed", "7")
    before = _everything(out)
    # The disk fills at the first checkpointed block: the earlier run stays, byte for byte.
    proc = _limited(8, data, out, "--overwrite", "--resume")
    assert proc.returncode != 0
    assert partial_dir(out).is_dir() and _blocks(out) == 0  # it failed writing a block
    assert _everything(out) == before
    # All blocks checkpointed, then the disk fills while the new outputs are written.
    _kill_at(data, out, "before-swap", "--overwrite")
    blocks = sorted(p.name for p in partial_dir(out).iterdir())
    assert _everything(out) == before
    proc = _limited(64, data, out, "--overwrite", "--resume")
    assert proc.returncode != 0
    assert sorted(p.name for p in partial_dir(out).iterdir()) == blocks  # failed past them
    assert _everything(out) == before
    assert load_outputs(out)["manifest"]["seed"] == 7
    # With room again the run completes from its checkpoints.
    _run(data, out, "--overwrite", "--resume")
    assert _bytes(out) == _bytes(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_resume_with_other_settings_starts_over(data, tmp_path):
    out = tmp_path / "out"
    _kill_at(data, out, "after-pairs-0")
    _run(data, out, "--resume", "--seed", "5")
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 5
    assert m["stats"]["checkpoint_blocks"]["reused"] == 0


def test_damaged_checkpoint_is_recomputed(data, reference, tmp_path):
    out = tmp_path / "out"
    _kill_at(data, out, "after-pairs-0")
    block = partial_dir(out) / "pairs-000000.npz"
    raw = bytearray(block.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    block.write_bytes(bytes(raw))
    _run(data, out, "--resume")
    assert _bytes(out) == _bytes(reference)
    assert np.array_equal(
        load_outputs(out)["hard_negatives"], load_outputs(reference)["hard_negatives"]
    )


def test_concurrent_miners_share_one_index_directory(data, tmp_path):
    idx = tmp_path / "idx"
    subprocess.run(
        [sys.executable, "-m", "negmine", "index", "build", str(data), "--out", str(idx),
         "--quiet"],
        env=_env(), check=True, capture_output=True,
    )  # fmt: skip
    before = (idx / "index.faiss").read_bytes()
    procs = [
        subprocess.Popen(
            _cmd(data, tmp_path / f"out{i}", "--index", str(idx)),
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    outs = [_bytes(tmp_path / f"out{i}") for i in range(3)]
    assert outs[0] == outs[1] == outs[2]
    assert (idx / "index.faiss").read_bytes() == before  # readers never write
