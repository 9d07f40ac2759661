"""Embedding texts with a SentenceTransformer, through the cache.

sentence-transformers is imported only by the caller's model object; this
module touches it through that object's methods.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np

from ..prepare import texts_fingerprint
from .cache import EmbeddingCache, digest

__all__ = ["embed_texts", "embeddings_key", "model_identity", "prompt_identity"]

log = logging.getLogger(__name__)

_SAMPLE_BYTES = 4096


def model_identity(model: Any) -> dict[str, Any]:
    """What identifies a model's embeddings: its name or path and a digest of its weights.

    The digest reads the name, shape and first and last :data:`_SAMPLE_BYTES`
    bytes of every parameter tensor, so a fine-tuned copy saved under the same
    path differs too, at the cost of a few milliseconds.
    """
    import torch

    card = getattr(model, "model_card_data", None)
    name = getattr(card, "base_model", None) or ""
    tok = getattr(model, "tokenizer", None)
    path = getattr(tok, "name_or_path", "") if tok is not None else ""
    h = hashlib.sha256()
    for pname, t in model.state_dict().items():
        a = t.detach().cpu().contiguous().view(-1)
        raw = a.view(dtype=torch.uint8).numpy() if a.numel() else np.empty(0, "u1")
        h.update(f"{pname}:{list(t.shape)}:{t.dtype}".encode())
        h.update(raw[:_SAMPLE_BYTES].tobytes())
        h.update(raw[-_SAMPLE_BYTES:].tobytes())
    return {
        "name": str(name),
        "path": str(path),
        "weights": h.hexdigest(),
        "class": type(model).__name__,
    }


def prompt_identity(model: Any, prompt_name: str | None, prompt: str | None) -> dict[str, Any]:
    """The prompt settings that shape an encoding (including the model's own prompts)."""
    return {
        "prompt": prompt,
        "prompt_name": prompt_name,
        "model_prompts": dict(getattr(model, "prompts", None) or {}),
        "default_prompt_name": getattr(model, "default_prompt_name", None),
    }


def embeddings_key(
    model_id: dict[str, Any],
    query_prompt: dict[str, Any],
    corpus_prompt: dict[str, Any],
    queries: list[str],
    corpus: list[str],
) -> tuple[str, dict[str, Any]]:
    """The cache key of one encoding and what it is made of."""
    made_of = {
        "model": model_id,
        "query_prompt": query_prompt,
        "corpus_prompt": corpus_prompt,
        "queries_sha256": texts_fingerprint(queries),
        "corpus_sha256": texts_fingerprint(corpus),
    }
    return digest(made_of), made_of


def embed_texts(
    model: Any,
    queries: list[str],
    corpus: list[str],
    *,
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    batch_size: int = 32,
    show_progress: bool = False,
    cache: EmbeddingCache | None = None,
) -> tuple[np.ndarray, np.ndarray, str, dict[str, float]]:
    """Unit-norm float32 embeddings of the questions [Q, d] and passages [S, d].

    Returns
    -------
    (questions, sources, key, timings)
        ``key`` identifies the encoding in the cache; ``timings`` holds
        ``encode`` (seconds spent in the model, 0 on a cache hit).
    """
    key, made_of = embeddings_key(
        model_identity(model),
        prompt_identity(model, query_prompt_name, query_prompt),
        prompt_identity(model, corpus_prompt_name, corpus_prompt),
        queries,
        corpus,
    )
    if cache is not None:
        hit = cache.get_embeddings(key)
        if hit is not None and hit[0].shape[0] == len(queries) and hit[1].shape[0] == len(corpus):
            return hit[0], hit[1], key, {"encode": 0.0}
    t0 = time.perf_counter()
    common = dict(
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress,
    )
    src = model.encode_document(
        corpus, prompt_name=corpus_prompt_name, prompt=corpus_prompt, **common
    )
    qry = model.encode_query(queries, prompt_name=query_prompt_name, prompt=query_prompt, **common)
    qry = np.ascontiguousarray(qry, dtype=np.float32)
    src = np.ascontiguousarray(src, dtype=np.float32)
    seconds = time.perf_counter() - t0
    log.info("encoded %d questions and %d passages in %.1f s", len(queries), len(corpus), seconds)
    if cache is not None:
        cache.put_embeddings(key, qry, src, made_of)
    return qry, src, key, {"encode": seconds}
