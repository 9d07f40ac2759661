"""Replacing a directory without an atomic exchange: a writer killed between its two renames.

``NEGMINE_NO_RENAMEAT2=1`` makes negmine swap directories the way it must on
file systems without ``renameat2(RENAME_EXCHANGE)``: rename the old copy aside,
then the new one into place. ``NEGMINE_PAUSE_AT=between-renames`` stops the
writer between the two, where a real process is then killed (SIGKILL). The
previous outputs or index must survive and come back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from negmine.index import SourceIndex, fingerprint, list_indexes
from negmine.io import load_outputs
from negmine.io.datasets import save_dataset
from negmine.synth import make_corpus

ROOT = Path(__file__).resolve().parents[1]
FILES = ("hard_negatives.pt", "negative_tiers.pt", "negative_scores.pt", "positive_scores.pt")
FALLBACK = {"NEGMINE_NO_RENAMEAT2": "1"}


def _env(**kw: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(kw)
    return env


def _mine(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "negmine", "mine", str(data), "--out", str(out),
            "--n-neg", "4", "--quiet", *extra]  # fmt: skip


def _kill_between_renames(cmd: list[str]) -> None:
    """Run ``cmd`` with the two-rename swap, SIGKILL it between the two renames."""
    env = _env(NEGMINE_PAUSE_AT="between-renames", **FALLBACK)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.strip() == "paused:between-renames", line + proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _hidden(parent: Path, name: str) -> list[str]:
    """Hidden siblings of ``name`` that writers of it create (checkpoints aside)."""
    return sorted(
        n
        for n in os.listdir(parent)
        if n.startswith(f".{name}.") and not n.endswith(".negmine-partial")
    )


def _bytes(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in (*FILES, "manifest.json")}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("swap") / "data"
    save_dataset(d, make_corpus(800, 8, 1500, 16, seed=4))
    return d


@pytest.fixture
def killed_overwrite(data, tmp_path) -> tuple[Path, dict[str, bytes]]:
    """A complete run in ``out`` whose ``--overwrite`` was killed between the renames."""
    out = tmp_path / "out"
    done = subprocess.run(_mine(data, out, "--seed", "7"), env=_env(), capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    before = _bytes(out)
    _kill_between_renames(_mine(data, out, "--overwrite"))
    # The kill landed between the renames: no OUT, the old copy set aside
    # and the complete new one still in its staging directory.
    assert not out.exists()
    left = _hidden(tmp_path, "out")
    assert [n.split("-")[0] for n in left] == [".out.old", ".out.staging"], left
    return out, before


def test_next_run_restores_the_outputs_a_killed_swap_set_aside(data, killed_overwrite):
    out, before = killed_overwrite
    # Without --overwrite the next run finds the previous outputs back in place
    # and refuses to replace them (a run that deleted them would succeed).
    again = subprocess.run(_mine(data, out), env=_env(**FALLBACK), capture_output=True,
                           text=True)  # fmt: skip
    assert again.returncode == 2 and "--overwrite" in again.stderr, again.stderr
    assert _bytes(out) == before
    assert load_outputs(out)["manifest"]["seed"] == 7
    # The next swap cleans the dead writer's staging directory and leaves nothing.
    final = subprocess.run(_mine(data, out, "--overwrite"), env=_env(**FALLBACK),
                           capture_output=True, text=True)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert _hidden(out.parent, "out") == []
    assert load_outputs(out)["manifest"]["seed"] != 7


def test_a_reader_restores_the_outputs_a_killed_swap_set_aside(killed_overwrite):
    out, before = killed_overwrite
    got = load_outputs(out)
    assert got["manifest"]["seed"] == 7
    assert _bytes(out) == before
    assert [n.split("-")[0] for n in _hidden(out.parent, "out")] == [".out.staging"]


# --------------------------------------------------------------------------
# indexes
# --------------------------------------------------------------------------

_SAVE = """
import sys
import numpy as np
from negmine.index import SourceIndex
x = np.random.default_rng(int(sys.argv[2])).standard_normal((int(sys.argv[3]), 16))
SourceIndex.build(x.astype(np.float32)).save(sys.argv[1], overwrite=True)
"""


def _sources(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def _save_cmd(path: Path, seed: int, n: int) -> list[str]:
    return [sys.executable, "-c", _SAVE, str(path), str(seed), str(n)]


@pytest.fixture
def killed_rebuild(tmp_path) -> Path:
    """An index of 300 sources whose rebuild (500 sources) was killed between the renames."""
    store = tmp_path / "store"
    idx = store / "idx"
    SourceIndex.build(_sources(300, 1)).save(idx)
    _kill_between_renames(_save_cmd(idx, 2, 500))
    assert not idx.exists()
    left = _hidden(store, "idx")
    assert [n.split("-")[0] for n in left] == [".idx.old", ".idx.tmp"], left
    # The temporary directory is complete, manifest included: a listing that
    # took any directory with a manifest for an index would show it.
    assert (store / left[1] / "manifest.json").is_file()
    return idx


def test_load_restores_an_index_a_killed_rebuild_set_aside(killed_rebuild):
    idx = SourceIndex.load(killed_rebuild)
    assert idx.ntotal == 300
    assert idx.manifest["fingerprint"] == fingerprint(_sources(300, 1))


def test_listing_restores_and_never_shows_writer_directories(killed_rebuild):
    store = killed_rebuild.parent
    entries = list_indexes(store)
    assert [e.name for e in entries] == ["idx"]
    assert entries[0].manifest["ntotal"] == 300 and entries[0].error is None
    assert killed_rebuild.is_dir()


def test_next_save_cleans_a_dead_writers_directories(killed_rebuild):
    store = killed_rebuild.parent
    with pytest.raises(FileExistsError, match="overwrite=True"):
        SourceIndex.build(_sources(500, 2)).save(killed_rebuild)
    assert SourceIndex.load(killed_rebuild).ntotal == 300  # restored, not replaced
    assert _hidden(store, "idx") == []  # the dead writer's temporary directory is gone


def test_index_staging_of_a_writer_killed_mid_write_is_cleaned(tmp_path):
    store = tmp_path / "store"
    idx = store / "idx"
    SourceIndex.build(_sources(300, 1)).save(idx)
    # A large rebuild, killed while its temporary directory is being written.
    proc = subprocess.Popen(_save_cmd(idx, 3, 400_000), env=_env(), stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any((store / n / "index.faiss").exists() for n in _hidden(store, "idx")):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = _hidden(store, "idx")
    assert len(left) == 1 and left[0].startswith(".idx.tmp-"), left
    assert not (store / left[0] / "manifest.json").exists()  # killed mid-write
    assert [e.name for e in list_indexes(store)] == ["idx"]
    assert SourceIndex.load(idx).ntotal == 300
    SourceIndex.build(_sources(200, 5)).save(store / "idx", overwrite=True)
    assert _hidden(store, "idx") == []
    assert SourceIndex.load(idx).ntotal == 200
