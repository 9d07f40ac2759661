"""The corpus of examples/real_corpus: built from the standard library, the same in any process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CORPUS_PY = HERE.parent / "examples" / "real_corpus" / "corpus.py"


@pytest.fixture(scope="module")
def corpus_mod():
    spec = importlib.util.spec_from_file_location("real_corpus_corpus", CORPUS_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look the module up by name
    spec.loader.exec_module(mod)
    return mod


def test_corpus_is_real_text_with_meaningful_pairs(corpus_mod, tmp_path):
    c = corpus_mod.build_corpus_isolated(tmp_path / "corpus.json")
    assert len(c.passages) == len(c.origins) > 500
    assert len(c.questions) > 200 and len(c.pairs) >= len(c.questions)
    assert not c.skipped_modules or set(c.skipped_modules) < set(corpus_mod.MODULES)
    seen_questions = set()
    restated = 0
    for q, s in c.pairs:
        question, passage = c.questions[q], c.passages[s]
        seen_questions.add(q)
        lo, hi = corpus_mod.QUESTION_WORDS
        assert lo <= len(question.split()) <= hi
        assert len(passage.split()) >= corpus_mod.MIN_WORDS
        assert len(passage) <= corpus_mod.MAX_CHARS
        restated += " ".join(passage.split()).startswith(question)
    # The summary is not part of its positive, unless the docstring repeats it (a handful do).
    assert restated < 0.02 * len(c.pairs)
    assert seen_questions == set(range(len(c.questions)))
    assert len(set(c.questions)) == len(c.questions)
    # A known pair: the summary of shutil.copyfile asks for the rest of its docstring.
    i = c.origins.index("shutil.copyfile")
    q = next(q for q, s in c.pairs if s == i)
    assert c.questions[q].startswith("Copy data from src to dst")
    assert "symlink" in c.passages[i] and "Copy data" not in c.passages[i]


def test_corpus_does_not_depend_on_what_the_caller_imported(corpus_mod, tmp_path):
    first = corpus_mod.build_corpus_isolated(tmp_path / "a.json")
    import logging

    def warning_once(self, msg: str) -> None:
        """Log a warning message only once.

        Later calls with the same message are ignored, so that a warning raised in a loop
        reaches the log a single time and does not flood it.
        """

    # What some packages do on import: a new method on a standard-library class.
    logging.Logger.warning_once = warning_once
    try:
        again = corpus_mod.build_corpus_isolated(tmp_path / "b.json")
        in_process = corpus_mod.build_corpus()
    finally:
        del logging.Logger.warning_once
    assert again.fingerprint() == first.fingerprint()
    assert "logging.Logger.warning_once" not in again.origins
    assert "logging.Logger.warning_once" in in_process.origins  # why it runs isolated


def test_clip_cuts_at_a_sentence_end(corpus_mod):
    text = "First sentence here. " * 50
    out = corpus_mod._clip(text, 100)
    assert len(out) <= 100 and out.endswith(".")
    assert corpus_mod._clip("short", 100) == "short"
