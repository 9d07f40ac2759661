"""The embedding cache on disk: hits only on the full key, never on a partial write."""

from __future__ import annotations

import json

import numpy as np

from negmine.integrations.cache import EmbeddingCache, digest


def test_hit_only_on_the_full_key_and_after_a_complete_write(tmp_path):
    c = EmbeddingCache(tmp_path)
    q, s = np.eye(2, 3, dtype=np.float32), np.ones((4, 3), dtype=np.float32)
    key = digest({"texts": "a"})
    assert c.get_embeddings(key) is None
    c.put_embeddings(key, q, s, {"texts": "a"})
    got = c.get_embeddings(key)
    assert got is not None and (got[0] == q).all() and (got[1] == s).all()
    # another key sharing the directory prefix is a miss, not a stale hit
    (d,) = tmp_path.glob("emb-*")
    other = key[:32] + "0" * 32
    assert c.get_embeddings(other) is None
    # an entry.json that records another key (or none) is a miss
    (d / "entry.json").write_text(json.dumps({"key": other}))
    assert c.get_embeddings(key) is None
    (d / "entry.json").unlink()
    assert c.get_embeddings(key) is None
    assert c.hits == ["embeddings"]


def test_clusters_keyed_by_settings(tmp_path):
    c = EmbeddingCache(tmp_path)
    key = digest("k")
    cen, ids = np.eye(2, 3, dtype=np.float32), np.array([0, 1, 1])
    c.put_clusters(key, "auto", 42, cen, ids, {"n_clusters": 2})
    assert c.get_clusters(key, "auto", 7) is None
    assert c.get_clusters(key, 2, 42) is None
    got = c.get_clusters(key, "auto", 42)
    assert got is not None and (got[1] == ids).all() and got[2] == {"n_clusters": 2}
