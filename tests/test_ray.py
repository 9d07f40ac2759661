"""The Ray executor against the in-process one: same bytes, faults survived.

These tests start a real local Ray instance (2 CPUs) and real worker
processes; a killed worker is killed by its pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from negmine import mine_negatives  # noqa: E402
from negmine.synth import make_corpus  # noqa: E402

OUTPUTS = ("hard_negatives.pt", "negative_tiers.pt", "negative_scores.pt", "positive_scores.pt")
FILTERS = {"relative_margin": 0.05, "near_duplicate_threshold": 0.97,
           "tier3_rank_window": (2, 30), "tier3_sampling": "random"}  # fmt: skip
CORPUS = {"n_sources": 3000, "n_clusters": 20, "n_pairs": 5200, "d": 32, "seed": 3}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(**CORPUS)


def _bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in OUTPUTS}


@pytest.mark.parametrize(
    "settings",
    [{}, FILTERS, {"nprobe": 4}, {"nprobe": 4, **FILTERS}],
    ids=["exact", "exact-filters", "nprobe", "nprobe-filters"],
)
def test_ray_outputs_equal_in_process(local_ray, corpus, tmp_path, settings):
    local = tmp_path / "local"
    remote = tmp_path / "ray"
    mine_negatives(**corpus, n_neg=12, output_dir=local, **settings)
    mine_negatives(**corpus, n_neg=12, output_dir=remote, executor="ray", **settings)
    assert _bytes(remote) == _bytes(local)
    stats = json.loads((remote / "manifest.json").read_text())["stats"]
    ex = stats["executor"]
    assert ex["name"] == "ray"
    # Every block was computed by some worker whose identity is recorded.
    blocks = sorted(b for bs in ex["blocks"].values() for b in bs)
    n_t3 = -(-stats["tier3_queries"] // 4096)
    assert blocks == sorted([f"tier3-{g}" for g in range(n_t3)] + ["pairs-0"])
    assert all(" | " in who for who in ex["blocks"])


def test_ray_with_a_clusters_index(local_ray, corpus, tmp_path):
    from negmine.index import SourceIndex

    idx = SourceIndex.build(corpus["source_embeddings"], "clusters,SQ8",
                            source_cluster_ids=corpus["source_cluster_ids"],
                            centroid_embeddings=corpus["centroid_embeddings"])  # fmt: skip
    mine_negatives(**corpus, index=idx, nprobe=5, output_dir=tmp_path / "a")
    mine_negatives(**corpus, index=idx, nprobe=5, output_dir=tmp_path / "b", executor="ray")
    assert _bytes(tmp_path / "a") == _bytes(tmp_path / "b")


def test_bad_input_found_on_a_worker_is_the_error_itself(local_ray):
    # Every source is a "near-duplicate" at threshold -1: no row can be filled.
    corpus = make_corpus(n_sources=400, n_clusters=4, n_pairs=300, d=8, seed=1)
    kw = {"n_neg": 12, "near_duplicate_threshold": -1.0}
    with pytest.raises(ValueError) as local:
        mine_negatives(**corpus, **kw)
    with pytest.raises(ValueError) as remote:
        mine_negatives(**corpus, executor="ray", **kw)
    assert type(remote.value) is ValueError
    assert str(remote.value) == str(local.value)
    assert "near_duplicate_threshold" in str(remote.value)


def _script(data: Path, out: Path, resume: bool) -> str:
    return textwrap.dedent(f"""
        import numpy as np
        from negmine import mine_negatives
        z = np.load({str(data)!r})
        mine_negatives(*(z[k] for k in ("s", "q", "c", "p", "pc", "sc")), n_neg=12,
                       output_dir={str(out)!r}, executor="ray", resume={resume})
    """)


def _save(corpus, path: Path) -> None:
    keys = ("source_embeddings", "question_embeddings", "centroid_embeddings", "pair_indices",
            "pair_cluster_ids", "source_cluster_ids")  # fmt: skip
    np.savez(path, **dict(zip(("s", "q", "c", "p", "pc", "sc"), (corpus[k] for k in keys),
                              strict=True)))  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.2)


def test_killed_worker_costs_only_its_task(corpus, tmp_path):
    """A worker SIGKILLed inside a task: Ray runs the task again, same bytes."""
    data = tmp_path / "data.npz"
    _save(corpus, data)
    mine_negatives(**corpus, n_neg=12, output_dir=tmp_path / "local")
    pids = tmp_path / "pids"
    pids.mkdir()
    env = dict(os.environ, NEGMINE_PAUSE_AT="task-tier3_block-1", NEGMINE_PAUSE_ONCE=str(pids))
    proc = subprocess.Popen([sys.executable, "-c", _script(data, tmp_path / "ray", False)],
                            env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    pid_file = pids / "task-tier3_block-1.pid"
    _wait_for(pid_file, proc)
    time.sleep(0.3)  # the pid is written first, then the task pauses
    worker = int(pid_file.read_text())
    assert worker != proc.pid
    os.kill(worker, signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert _bytes(tmp_path / "ray") == _bytes(tmp_path / "local")


def test_killed_driver_resumes_to_the_same_bytes(corpus, tmp_path):
    """The driver SIGKILLed after a checkpoint: --resume finishes the run, same bytes."""
    data = tmp_path / "data.npz"
    _save(corpus, data)
    mine_negatives(**corpus, n_neg=12, output_dir=tmp_path / "local")
    out = tmp_path / "ray"
    env = dict(os.environ, NEGMINE_PAUSE_AT="after-tier3-1")
    proc = subprocess.Popen([sys.executable, "-c", _script(data, out, False)], env=env,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    line = proc.stderr.readline()
    while line and not line.startswith("paused:"):
        line = proc.stderr.readline()
    assert line.strip() == "paused:after-tier3-1"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.parent / f".{out.name}.negmine-partial"
    # Killed mid-run: block 1 of tier 3 was stored, no pair block was.
    assert (partial / "tier3-000001.npz").is_file()
    assert not list(partial.glob("pairs-*.npz"))
    assert not out.exists()
    done = subprocess.run([sys.executable, "-c", _script(data, out, True)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _bytes(out) == _bytes(tmp_path / "local")
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    assert stats["checkpoint_blocks"]["reused"] >= 2


def test_without_ray_installed_one_line_says_how_to_install(corpus, tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        from negmine.synth import make_corpus
        from negmine import mine_negatives
        c = make_corpus(300, 4, 200, d=8)
        try:
            mine_negatives(**c, n_neg=4, executor="ray")
        except ImportError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == (
        "executor='ray' needs Ray, which is not installed: pip install 'negmine[ray]'"
    )
