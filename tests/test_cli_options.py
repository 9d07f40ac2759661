"""One spelling for one idea, help for every option, flags before the command."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from reference import small_corpus

from negmine.cli import _build_parser
from negmine.cli.mine import _miner_keywords
from negmine.io.datasets import save_dataset

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "negmine", *args], capture_output=True,
                          text=True, check=False, cwd=ROOT, env=env)  # fmt: skip


def _commands(parser: argparse.ArgumentParser, prefix: str = "negmine"):
    """(name, parser) of every command and index action, depth first."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


COMMANDS = dict(_commands(_build_parser()))


def test_every_command_listed():
    assert {"negmine mine", "negmine validate", "negmine report", "negmine demo",
            "negmine bench", "negmine index", "negmine index build", "negmine index check",
            "negmine index info", "negmine index list"} <= set(COMMANDS)  # fmt: skip


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_for_every_argument_and_an_example(name):
    parser = COMMANDS[name]
    assert parser.epilog and "example:\n  negmine " in parser.epilog, name
    example = parser.epilog.split("example:\n", 1)[1].split()
    assert " ".join(example[: len(name.split())]) == name  # the example runs this command
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        label = action.option_strings or [action.dest]
        assert action.help and len(action.help) > 8, (name, label)


def test_one_spelling_for_one_idea():
    seeds, samples = [], []
    for name, parser in COMMANDS.items():
        opts = _options(parser)
        assert not any(s in opts for s in ("--random-seed", "--random_seed")), name
        if "--seed" in opts:
            assert opts["--seed"].type is int
            seeds.append(name)
        if "--recall-sample" in opts:
            samples.append(name)
        if "--sample" in opts:  # the old spelling: hidden, same destination
            assert opts["--sample"].help == argparse.SUPPRESS
            assert opts["--sample"].dest == opts["--recall-sample"].dest
        if "--clusters" in opts and opts["--clusters"].help != argparse.SUPPRESS:
            assert opts["--clusters"].metavar == "FILE", name  # a file, never a count
        if "--n-clusters" in opts:  # a count (or "auto" where one is derived), never a file
            assert opts["--n-clusters"].metavar != "FILE" and opts["--n-clusters"].type is not Path
    assert {"negmine mine", "negmine demo", "negmine index build"} <= set(seeds)
    assert {"negmine mine", "negmine index check"} <= set(samples)
    demo = _options(COMMANDS["negmine demo"])["--n-clusters"]
    assert demo.type is int and demo.default == 100


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    corpus = small_corpus(n_sources=200, n_clusters=5, n_questions=50, d=8, seed=4)
    d = tmp_path_factory.mktemp("cli-options") / "data"
    save_dataset(d, corpus)
    return d


def test_flags_before_or_after_the_command(tmp_path, data):
    before = _run("-q", "mine", str(data), "--out", str(tmp_path / "a"), "--n-neg", "4")
    after = _run("mine", str(data), "--out", str(tmp_path / "b"), "--n-neg", "4", "-q")
    loud = _run("mine", str(data), "--out", str(tmp_path / "c"), "--n-neg", "4")
    for proc in (before, after, loud):
        assert proc.returncode == 0, proc.stderr
    assert before.stdout == after.stdout == "" and before.stderr == after.stderr == ""
    assert "shortfalls moved along the fallback" in loud.stdout
    for name in ("hard_negatives.pt", "negative_tiers.pt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    verbose = _run("-v", "index", "list", str(tmp_path))
    assert verbose.returncode == 0 and verbose.stdout.startswith("name")


def test_version():
    from negmine import __version__

    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == __version__


def _mine_args(*argv: str) -> argparse.Namespace:
    args = _build_parser().parse_args(["mine", "DATA", "--out", "OUT", *argv])
    return args


def test_executor_keywords_only_when_asked_for():
    kw = _miner_keywords(_mine_args("--seed", "9"))
    assert kw["seed"] == 9
    assert "executor" not in kw and "ray_address" not in kw  # the default needs nothing new
    kw = _miner_keywords(_mine_args("--executor", "ray"))
    assert kw["executor"] == "ray" and "ray_address" not in kw
    kw = _miner_keywords(_mine_args("--executor", "ray", "--ray-address", "10.0.0.5:6379"))
    assert kw["executor"] == "ray" and kw["ray_address"] == "10.0.0.5:6379"
    with pytest.raises(ValueError, match=r"`--ray-address` needs `--executor ray`"):
        _miner_keywords(_mine_args("--ray-address", "10.0.0.5:6379"))
