"""Write the standard-library docstring corpus as a train_eval data directory.

    python examples/train_eval/make_data.py OUT_DIR

``OUT_DIR/pairs.jsonl`` holds {"query", "answer"} rows (a docstring's summary and
the rest of it), ``OUT_DIR/corpus.jsonl`` the passages that answer no query.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "real_corpus"))


def main() -> int:
    from corpus import build_corpus_isolated

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    c = build_corpus_isolated(out / "source.json")
    (out / "source.json").unlink()
    answers = {c.passages[p] for _, p in c.pairs}
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
        for q, p in c.pairs:
            f.write(json.dumps({"query": c.questions[q], "answer": c.passages[p]}) + "\n")
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as f:
        for t in dict.fromkeys(p for p in c.passages if p not in answers):
            f.write(json.dumps({"text": t}) + "\n")
    print(f"{len(c.pairs)} pairs and {len(c.passages) - len(answers)} other passages in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
