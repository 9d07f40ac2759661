"""``negmine remine`` on the command line, the filter sweep, and pooled runs
killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from negmine.io import load_outputs
from negmine.io.datasets import save_dataset
from negmine.miner import mine_negatives
from negmine.pool_report import sweep_filter
from negmine.remine import remine
from negmine.synth import make_corpus

ROOT = Path(__file__).resolve().parents[1]
DEPTH = 48
TENSORS = ("hard_negatives.pt", "negative_tiers.pt", "negative_scores.pt", "positive_scores.pt")
POOL = ("pool_keys.npy", "pool_ids.npy", "pool_scores.npy")
DRIVER = f"""
import sys
from negmine.io.datasets import load_dataset
from negmine.miner import mine_negatives
from negmine.remine import remine
mode, data, out = sys.argv[1:4]
if mode == "mine":
    mine_negatives(**load_dataset(data).arrays, pool_depth={DEPTH}, output_dir=out, resume=True)
else:
    remine(sys.argv[4], data, out, overwrite=True, seed=int(mode))
"""


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(6000, 24, 9000, 32, seed=11)


@pytest.fixture(scope="module")
def data(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("pooldata") / "data"
    save_dataset(d, corpus)
    return d


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("poolrun") / "run"
    mine_negatives(**corpus, pool_depth=DEPTH, output_dir=out)
    return out


def _env(**kw: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **kw)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "negmine", *args], env=_env(),
                          capture_output=True, text=True)  # fmt: skip


def _files(out: Path, names=TENSORS + POOL) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in names}


def _arrays(out: Path) -> dict[str, bytes]:
    got = load_outputs(out)
    names = ("hard_negatives", "negative_tiers", "negative_scores", "positive_scores")
    return {k: np.asarray(got[k]).tobytes() for k in names}


def test_cli_remine_equals_mining_from_scratch(corpus, data, run_dir, tmp_path):
    out = tmp_path / "re"
    proc = _cli("remine", str(run_dir), "--data", str(data), "--out", str(out), "--seed", "7",
                "--relative-margin", "0.05", "--tier3-rank-window", "2:20")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tier-3 rows searched again" in proc.stdout
    want = mine_negatives(**corpus, pool_depth=DEPTH, seed=7, relative_margin=0.05,
                          tier3_rank_window=(2, 20))  # fmt: skip
    got = _arrays(out)
    for k, v in got.items():
        assert v == want[k].numpy().tobytes(), k
    man = json.loads((out / "manifest.json").read_text())
    assert f"{man['stats']['pool']['rows_searched_again']} of" in proc.stdout


def test_cli_remine_refuses_a_search_setting_and_a_damaged_pool(data, run_dir, tmp_path):
    proc = _cli("remine", str(run_dir), "--data", str(data), "--out", str(tmp_path / "o"),
                "--seed", "1", "--n-neg", "0")  # fmt: skip
    assert proc.returncode == 2 and "n_neg" in proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in run_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / "pool_scores.npy").read_bytes())
    raw[200] ^= 0x40
    (bad / "pool_scores.npy").write_bytes(bytes(raw))
    proc = _cli("remine", str(bad), "--data", str(data), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "pool_scores.npy" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_sweep_counts_what_mining_counts(corpus, run_dir):
    values = [0.95, 0.9, 0.8, 0.7]
    rows = sweep_filter(run_dir, corpus, "max_score", values)
    assert [r["value"] for r in rows] == values
    assert [r["removed"] for r in rows] == sorted(r["removed"] for r in rows)
    assert rows[-1]["removed"] > rows[-2]["removed"] > 0
    checked = 0
    for r in rows:
        if r["pairs_past_pool"]:
            continue
        stats = remine(run_dir, corpus, max_score=r["value"])["stats"]
        f = stats["filters"]["max_score"]
        assert (r["removed"], r["shortfall"]) == (f["removed"]["3"], f["shortfall"])
        checked += 1
    assert checked >= 2


def test_cli_sweep_prints_a_table_and_draws_it(data, run_dir, tmp_path):
    png = tmp_path / "sweep.png"
    proc = _cli("remine", str(run_dir), "--data", str(data), "--sweep",
                "max_score=0.9,0.8,0.7", "--png", str(png))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "removed (tier 3)" in lines[0]
    assert [ln.split()[0] for ln in lines[1:4]] == ["0.9", "0.8", "0.7"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _kill_at(point: str, *argv: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *argv],
                            env=_env(NEGMINE_PAUSE_AT=point), stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    line = proc.stderr.readline()
    try:
        assert line.strip() == f"paused:{point}", line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_killed_pooled_run_resumes_to_the_same_bytes(data, run_dir, tmp_path):
    out = tmp_path / "killed"
    _kill_at("after-tier3-1", "mine", str(data), str(out))
    assert not out.exists()
    proc = subprocess.run([sys.executable, "-c", DRIVER, "mine", str(data), str(out)],
                          env=_env(), capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["stats"]["checkpoint_blocks"]["reused"] >= 2
    assert _files(out, POOL) == _files(run_dir, POOL)
    assert _arrays(out) == _arrays(run_dir)


def test_a_remine_killed_before_its_swap_leaves_the_old_outputs(data, run_dir, tmp_path):
    out = tmp_path / "re"
    remine(run_dir, data, out, seed=1)
    before = _files(out)
    _kill_at("before-swap", "2", str(data), str(out), str(run_dir))
    assert _files(out) == before
    remine(run_dir, data, out, seed=2, overwrite=True)
    assert _files(out, POOL) == _files(run_dir, POOL)
    assert _files(out, TENSORS) != {k: before[k] for k in TENSORS}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".re.")]
