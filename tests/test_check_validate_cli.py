"""negmine validate on a broken output: each violation printed once, exit 1."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from reference import small_corpus

from negmine import NegativeMiner
from negmine.io import load_outputs, save_outputs
from negmine.io.datasets import save_dataset


def _validate(out, data) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "negmine", "validate", str(out), "--data", str(data)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """A mined output with a repeated id in row 0 and a positive in row 1."""
    root = tmp_path_factory.mktemp("validate")
    corpus = small_corpus(n_sources=200, n_clusters=5, n_questions=40, d=8, seed=2)
    save_dataset(root / "data", corpus)
    NegativeMiner(**corpus, n_neg=6, tier_proportions=[2, 1, 2, 1]).mine_to(root / "out")
    res = load_outputs(root / "out")
    manifest = res.pop("manifest")
    manifest.pop("tensor_files", None)
    ids = np.array(res["hard_negatives"])
    tiers = np.asarray(res["negative_tiers"])
    # Same label, so the copy breaks only the repeat rule.
    j = int(np.flatnonzero(tiers[0] == tiers[0, 0])[1])
    ids[0, j] = ids[0, 0]
    ids[1, 0] = corpus["pair_indices"][1, 1]
    res["hard_negatives"] = ids
    save_outputs(root / "out", res, manifest, overwrite=True)
    return root


def test_broken_output_exits_1_and_names_both_rules(broken):
    proc = _validate(broken / "out", broken / "data")
    assert proc.returncode == 1, proc.stderr
    assert "FAILED (2 errors)" in proc.stdout
    assert "not hold the same id twice in a row" in proc.stdout
    assert "not hold a positive of the row's question" in proc.stdout


def test_each_violation_is_printed_once(broken):
    proc = _validate(broken / "out", broken / "data")
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 2, proc.stdout
    assert proc.stdout.count("twice in a row") == 1
    assert proc.stdout.count("a positive of the row's question") == 1
