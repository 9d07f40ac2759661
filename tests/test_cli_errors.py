"""Exit codes and error lines of the command line, from real processes."""

from __future__ import annotations

import importlib.util
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference import small_corpus

from negmine.io import load_outputs
from negmine.io.datasets import save_dataset
from negmine.synth import make_corpus

ROOT = Path(__file__).resolve().parents[1]
FILES = ("hard_negatives.pt", "negative_tiers.pt", "negative_scores.pt", "positive_scores.pt")


def _env(**kw: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **kw)


def _run(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "negmine", *args], capture_output=True, text=True, check=False,
        cwd=ROOT, env=env or _env(), **kw,
    )  # fmt: skip


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    corpus = small_corpus(n_sources=300, n_clusters=6, n_questions=80, d=12, seed=21)
    d = tmp_path_factory.mktemp("cli-errors") / "data"
    save_dataset(d, corpus)
    return d, corpus


def test_help_lists_the_exit_codes():
    proc = _run("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    rows = ("0 success", "1 the check failed", "2 bad input or usage", "3 internal error",
            "130 interrupted (Ctrl-C); mine continues an interrupted run with")  # fmt: skip
    for row in rows:
        assert row in text, row


@pytest.mark.parametrize(
    "args, needle",
    [
        ((), "COMMAND"),  # no command: the help, on stderr
        (("mine",), "the following arguments are required: DATA_DIR, --out"),
        (("mine", "d", "--out", "o", "--n-neg", "many"), "--n-neg: invalid int value: 'many'"),
        (("mine", "d", "--out", "o", "--executor", "spark"), "--executor: invalid choice"),
        (("index",), "required: ACTION"),
        (("index", "check", "x", "--data", "d", "--bogus"), "unrecognized arguments: --bogus"),
        (("demo", "--clusters", "20"), "the number of clusters is `--n-clusters 20`"),
    ],
)
def test_usage_errors_exit_2(args, needle):
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    if args:
        assert _one_line(proc).startswith("negmine")


def test_missing_inputs_exit_2_naming_the_path(tmp_path, data):
    missing = tmp_path / "nowhere"
    for args in (("mine", str(missing), "--out", str(tmp_path / "o")),
                 ("validate", str(missing), "--data", str(data[0])),
                 ("index", "info", str(missing))):  # fmt: skip
        proc = _run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        line = _one_line(proc)
        assert line.startswith(f"negmine {' '.join(args[:2]) if args[0] == 'index' else args[0]}")
        assert "nowhere" in line, line


def test_ray_address_needs_the_ray_executor(tmp_path, data):
    proc = _run("mine", str(data[0]), "--out", str(tmp_path / "o"), "--ray-address", "h:6379")
    assert proc.returncode == 2
    line = _one_line(proc)
    assert "`--ray-address` needs `--executor ray`" in line and "h:6379" in line
    assert not (tmp_path / "o").exists()


# A real process whose data loader breaks the way a bug would: not an input error.
_BROKEN = """
import sys
import negmine.io.datasets

def broken(path):
    raise RuntimeError("block 3 came back empty\\nsecond line of detail")

negmine.io.datasets.load_dataset = broken
from negmine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_unexpected_exception_is_an_internal_error_exit_3(tmp_path, data):
    args = ["mine", str(data[0]), "--out", str(tmp_path / "o")]
    cmd = [sys.executable, "-c", _BROKEN]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert proc.returncode == 3, proc.stderr
    assert _one_line(proc) == (
        "negmine mine: internal error: RuntimeError: block 3 came back empty ... second line "
        "of detail (rerun with --debug for the traceback)"
    )
    for where in (["--debug"], ["--debug", *args]):  # before or after the command
        call = [*cmd, *args, "--debug"] if len(where) == 1 else [*cmd, "--debug", *args]
        proc = subprocess.run(call, capture_output=True, text=True, cwd=ROOT, env=_env())
        assert proc.returncode == 3
        assert "Traceback (most recent call last)" in proc.stderr
        assert "in broken" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("negmine mine: internal error:")


def test_out_of_memory_names_the_setting_that_lowers_it():
    limit = 6 * 2**30  # enough to import torch and faiss, not for 4e9 sources

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    proc = _run("demo", "--sources", "4000000000", "--pairs", "1000", "--dim", "8",
                preexec_fn=cap)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc)
    assert line.startswith("negmine demo: error: out of memory (Unable to allocate")
    assert line.endswith("to use less: lower --sources, --pairs or --batch-size")


def test_out_of_memory_hint_of_mine(capsys):
    from argparse import Namespace

    from negmine.cli.errors import report_error

    assert report_error(MemoryError(), Namespace(command="mine")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "out of memory (an allocation failed); to use less: lower --batch-size" in err
    assert "--spec clusters,SQ8" in err and ".npy files (memory-mapped)" in err


def test_error_lines_of_keys_and_empty_messages(capsys):
    from argparse import Namespace

    from negmine.cli.errors import report_error

    args = Namespace(command="index", index_command="info")
    assert report_error(KeyError("factory"), args) == 2
    assert report_error(FileNotFoundError(), args) == 2
    assert report_error(AssertionError(), args) == 3
    assert capsys.readouterr().err.splitlines() == [
        "negmine index info: error: missing key 'factory'",
        "negmine index info: error: FileNotFoundError",
        "negmine index info: internal error: AssertionError (rerun with --debug for the traceback)",
    ]


def test_validate_prints_each_violation_once_and_exits_1(tmp_path, data):
    d, corpus = data
    out = tmp_path / "out"
    assert _run("mine", str(d), "--out", str(out), "--n-neg", "6", "-q").returncode == 0
    ids = torch.load(out / "hard_negatives.pt", weights_only=True)
    ids[0, 0] = int(corpus["pair_indices"][0, 1])  # a positive of row 0's question
    ids[3, 1] = ids[3, 0]  # a repeated id in row 3 (both tier 1)
    torch.save(ids, out / "hard_negatives.pt")
    proc = _run("validate", str(out), "--data", str(d))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2, proc.stdout
    assert len(set(errors)) == 2
    assert any("must not hold a positive" in e and "row 0, column 0" in e for e in errors)
    assert any("same id twice" in e and "row 3, column 1" in e for e in errors), errors
    assert proc.stdout.startswith("negatives: FAILED (2 errors)")


def _recall(stdout: str) -> float:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("recall@"))
    return float(line.split()[1])


def test_index_check_min_recall(tmp_path, data):
    d, _ = data
    for name, spec in (("flat", "flat"), ("cl", "clusters")):
        assert _run("index", "build", str(d), "--out", str(tmp_path / name), "--spec", spec,
                    "-q").returncode == 0  # fmt: skip
    check = ("index", "check", str(tmp_path / "cl"), "--data", str(d), "--nprobe", "1")
    low = _run(*check, "--recall-sample", "60")
    assert low.returncode == 0, low.stderr
    r = _recall(low.stdout)
    assert r < 1.0, low.stdout  # one probed cluster of five misses some neighbours
    fail = _run(*check, "--recall-sample", "60", "--min-recall", "1")
    assert fail.returncode == 1, fail.stderr
    assert _recall(fail.stdout) == r
    assert f"failed: recall@3 {r:.4f} is below --min-recall 1.0" in fail.stdout
    assert _run(*check, "--recall-sample", "60", "--min-recall", str(r)).returncode == 0
    exact = _run("index", "check", str(tmp_path / "flat"), "--data", str(d), "--min-recall", "1")
    assert exact.returncode == 0 and _recall(exact.stdout) == 1.0, exact.stdout
    bad = _run(*check, "--min-recall", "1.5")
    assert bad.returncode == 2 and "`--min-recall` must lie in (0, 1]; got 1.5" in _one_line(bad)
    # The old spelling still works, says it is deprecated, and measures the same.
    old = _run(*check, "--sample", "60")
    same = [ln for ln in low.stdout.splitlines() if ln.startswith("recall@")]
    assert old.returncode == 0 and same == [ln for ln in old.stdout.splitlines() if "@" in ln]
    assert "on 60 tier-3 queries" in same[0]
    assert _one_line(old) == "negmine index check: `--sample` is deprecated; use `--recall-sample`"


@pytest.fixture(scope="module")
def blocks_data(tmp_path_factory):
    # 8122 tier-3 queries: two tier-3 blocks of 4096 and a third.
    corpus = make_corpus(3000, 20, 9000, 16, seed=5)
    d = tmp_path_factory.mktemp("cli-sigint") / "data"
    save_dataset(d, corpus)
    return d


def test_ctrl_c_on_mine_says_resume_and_resume_continues(tmp_path, blocks_data):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "negmine", "mine", str(blocks_data), "--out", str(out),
           "--n-neg", "8", "-q"]  # fmt: skip

    # A shell runs background jobs with SIGINT ignored, and a child inherits that: give the
    # miner the default disposition, as a terminal's Ctrl-C would find it.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(NEGMINE_PAUSE_AT="after-tier3-0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    try:
        assert proc.stderr.readline().strip() == "paused:after-tier3-0"  # the run is under way
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        f"negmine mine: interrupted; finished blocks are kept: run the same command with "
        f"--resume to continue into {out}"
    ]
    assert stdout == "" and not (out / "manifest.json").exists()
    resumed = subprocess.run([*cmd, "--resume"], cwd=ROOT, env=_env(), capture_output=True,
                             text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    fresh = tmp_path / "fresh"
    whole = subprocess.run([*cmd[:6], str(fresh), *cmd[7:]], cwd=ROOT, env=_env(),
                           capture_output=True, text=True)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    for name in FILES:
        assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
    blocks = load_outputs(out)["manifest"]["stats"]["checkpoint_blocks"]
    assert blocks["reused"] >= 1, blocks


def test_bench_work_dir_is_created_or_named(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = _run("bench", "--store", "20k", "--work-dir", str(blocker / "sub"))
    assert proc.returncode == 2
    line = _one_line(proc)
    assert line.startswith("negmine bench: error: `--work-dir` must be a directory negmine can")
    assert f"got '{blocker / 'sub'}' (Not a directory" in line
    work = tmp_path / "not" / "yet"
    proc = _run("bench", "--store", "20k", "--spec", "clusters,fast", "--nprobe", "4",
                "--exact-sample", "64", "--work-dir", str(work))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[clusters,fast] tuned to recall@3 >= 0.95" in proc.stdout
    assert " other queries); tuning = " in proc.stdout  # the held-out recall
    assert "[clusters,fast] recall@3 / tier-3 seconds" in proc.stdout
    numba = importlib.util.find_spec("numba") is not None  # compiled kernels: said when they ran
    assert ("; compiled kernels (numba " in proc.stdout) == numba
    assert work.is_dir() and not any(work.iterdir())  # its own files removed, the dir kept
