from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from negmine.layout import adjacent_clusters
from negmine.validate import ValidationError, ValidationReport, validate_negatives

# --------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    source_cluster: np.ndarray  # int64 [S]
    adjacent: np.ndarray  # int64 [C, k], -1 padded
    pairs: np.ndarray  # int64 [P, 2]
    pair_cluster: np.ndarray  # int64 [P]
    centroids: np.ndarray | None = None  # float [C, d]

    @property
    def n_sources(self) -> int:
        return len(self.source_cluster)

    def positives(self, q: int) -> set[int]:
        return {int(s) for qq, s in self.pairs if qq == q}

    def adjacent_set(self, c: int) -> set[int]:
        row = self.adjacent[c]
        return {int(a) for a in row[row >= 0]}

    def kwargs(self, use_centroids: bool = False) -> dict:
        kw = dict(
            pair_indices=self.pairs,
            pair_cluster_ids=self.pair_cluster,
            source_cluster_ids=self.source_cluster,
        )
        if use_centroids:
            kw.update(centroid_embeddings=self.centroids, adjacent_k=self.adjacent.shape[1])
        else:
            kw.update(adjacent=self.adjacent)
        return kw


def unit_vectors(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def hand_corpus() -> Corpus:
    """Six clusters of ten sources; clusters {0, 1, 2} and {3, 4, 5} are near each other."""
    centroids = unit_vectors([0, 10, 20, 90, 100, 110])
    adjacent = np.array([[1, 2], [0, 2], [1, 0], [4, 5], [3, 5], [4, 3]], dtype=np.int64)
    source_cluster = np.arange(60, dtype=np.int64) // 10
    questions = [0, 0, 1, 1, 2, 3, 4, 5]
    sources = [0, 11, 21, 33, 40, 52, 5, 45]
    pairs = np.stack([questions, sources], axis=1).astype(np.int64)
    pair_cluster = source_cluster[pairs[:, 1]].copy()
    pair_cluster[7] = 3  # a pair whose cluster differs from its source's
    return Corpus(source_cluster, adjacent, pairs, pair_cluster, centroids)


def tiny_corpus(pairs: list[tuple[int, int]]) -> Corpus:
    """Three clusters: 0 and 1 adjacent, 2 distant from 0. Sources 0-2 | 3-5 | 6-7."""
    centroids = unit_vectors([0, 10, 90])
    adjacent = adjacent_clusters(centroids, 1)
    source_cluster = np.array([0, 0, 0, 1, 1, 1, 2, 2], dtype=np.int64)
    p = np.array(pairs, dtype=np.int64)
    return Corpus(source_cluster, adjacent, p, source_cluster[p[:, 1]], centroids)


def reference_negatives(
    corpus: Corpus, props: tuple[int, int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A valid output built entry by entry, straight from the tier definitions."""
    sc = corpus.source_cluster
    ids_out, tiers_out = [], []
    for r, (q, _) in enumerate(corpus.pairs):
        c = int(corpus.pair_cluster[r])
        adj = corpus.adjacent_set(c)
        pos = corpus.positives(int(q))
        chosen: list[int] = []
        labels: list[int] = []

        def pool(pred, pos=pos, chosen=chosen):
            return [
                s
                for s in range(corpus.n_sources)
                if s not in pos and s not in chosen and pred(int(sc[s]))
            ]

        rules = {
            1: lambda k, c=c: k == c,
            2: lambda k, adj=adj: k in adj,
            3: lambda k, c=c: k != c,
            4: lambda k, c=c, adj=adj: k != c and k not in adj,
        }
        for tier, count in zip((1, 2, 3, 4), props, strict=True):
            for _ in range(count):
                label, cand = tier, pool(rules[tier])
                if not cand and tier == 4:  # distant exhausted: widen to outside the cluster
                    cand = pool(rules[3])
                if not cand:
                    label, cand = 3, pool(rules[3])
                if not cand:
                    label, cand = 1, pool(rules[1])
                assert cand, "corpus too small for the requested negatives"
                chosen.append(cand[int(rng.integers(len(cand)))])
                labels.append(label)
        ids_out.append(chosen)
        tiers_out.append(labels)
    n_neg = sum(props)
    return (
        np.array(ids_out, dtype=np.int64).reshape(-1, n_neg),
        np.array(tiers_out, dtype=np.int64).reshape(-1, n_neg),
    )


def distant_exhausted(corpus: Corpus, row: int, ids: np.ndarray) -> bool:
    """Reference: does the row hold every non-positive source of a distant cluster?"""
    c = int(corpus.pair_cluster[row])
    adj = corpus.adjacent_set(c)
    pos = corpus.positives(int(corpus.pairs[row, 0]))
    distant = {
        s
        for s in range(corpus.n_sources)
        if int(corpus.source_cluster[s]) != c
        and int(corpus.source_cluster[s]) not in adj
        and s not in pos
    }
    return distant <= {int(i) for i in ids[row]}


PROPS = (2, 2, 2, 2)


@pytest.fixture
def corpus() -> Corpus:
    return hand_corpus()


@pytest.fixture
def valid(corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    return reference_negatives(corpus, PROPS, np.random.default_rng(7))


def the_error(report: ValidationReport, kind: str) -> str:
    """The one message of ``kind``; fails if other rules are reported too."""
    assert list(report.violations) == [kind], report.errors
    assert len(report.errors) == 1
    assert not report.ok
    with pytest.raises(ValidationError):
        report.raise_if_failed()
    return report.errors[0]


# --------------------------------------------------------------------------- valid output


def test_hand_adjacency_matches_centroids(corpus: Corpus) -> None:
    got = adjacent_clusters(corpus.centroids, 2)
    for c in range(6):
        assert set(got[c].tolist()) == corpus.adjacent_set(c)


def test_valid_output_is_ok(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = valid
    report = validate_negatives(hn, tiers, tier_proportions=PROPS, **corpus.kwargs())
    assert report.ok, report.errors
    assert report.errors == []
    assert report.violations == {}
    assert report.tier_counts == {1: 16, 2: 16, 3: 16, 4: 16}
    assert report.requested == {1: 16, 2: 16, 3: 16, 4: 16}
    assert report.fallback == {1: 0, 2: 0, 3: 0, 4: 0}
    assert (report.n_pairs, report.n_neg) == (8, 8)
    report.raise_if_failed()  # does not raise
    assert validate_negatives(hn, tiers, raise_on_error=True, **corpus.kwargs()).ok


def test_centroid_path_equals_adjacent_path(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]
) -> None:
    hn, tiers = valid
    bad_hn, bad_tiers = hn.copy(), tiers.copy()
    bad_tiers[0, 2] = 1  # an adjacent id labelled in-cluster
    bad_hn[3, 0] = corpus.pairs[3, 1]
    for h, t in [(hn, tiers), (bad_hn, bad_tiers)]:
        a = validate_negatives(h, t, tier_proportions=PROPS, **corpus.kwargs())
        b = validate_negatives(h, t, tier_proportions=PROPS, **corpus.kwargs(use_centroids=True))
        assert a.to_dict() == b.to_dict()
    assert not b.ok


def test_torch_tensors_accepted(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    hn, tiers = valid
    report = validate_negatives(torch.from_numpy(hn), torch.from_numpy(tiers), **corpus.kwargs())
    assert report.ok, report.errors
    assert report.tier_counts == {1: 16, 2: 16, 3: 16, 4: 16}
    bad = validate_negatives(
        torch.from_numpy(hn).to(torch.int32), torch.from_numpy(tiers), **corpus.kwargs()
    )
    assert "must be int64" in the_error(bad, "dtype")


def test_summary_and_to_dict(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = valid
    report = validate_negatives(hn, tiers, tier_proportions=(3, 1, 2, 2), **corpus.kwargs())
    assert report.ok  # fallback is information, not an error
    assert report.fallback == {1: 8, 2: -8, 3: 0, 4: 0}
    text = report.summary()
    lines = text.splitlines()
    assert "OK" in lines[0] and "8 pairs" in lines[0]
    assert any("in-cluster" in ln and "16" in ln and "24" in ln and "+8" in ln for ln in lines)
    assert any("random" in ln and "25.0%" in ln for ln in lines)
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["ok"] is True
    assert d["tier_counts"] == {"1": 16, "2": 16, "3": 16, "4": 16}
    assert d["requested"] == {"1": 24, "2": 8, "3": 16, "4": 16}

    hn = hn.copy()
    hn[1, 1] = hn[1, 0]
    failed = validate_negatives(hn, tiers, **corpus.kwargs())
    assert "FAILED" in failed.summary()
    assert failed.errors[0] in failed.summary()
    d = failed.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["ok"] is False and d["requested"] is None and d["violations"]


# --------------------------------------------------------------------------- planted faults


def test_planted_own_source(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = (a.copy() for a in valid)
    hn[4, 0] = corpus.pairs[4, 1]  # row 4's own source (cluster 4 = pair cluster, label 1)
    msg = the_error(validate_negatives(hn, tiers, **corpus.kwargs()), "positive")
    assert "positive" in msg and "row 4, column 0" in msg and "question 2" in msg
    with pytest.raises(ValidationError, match="positive"):
        validate_negatives(hn, tiers, raise_on_error=True, **corpus.kwargs())


def test_planted_positive_of_other_pair(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]
) -> None:
    hn, tiers = (a.copy() for a in valid)
    # Row 0 is (question 0, source 0); pair 1 is (question 0, source 11), cluster 1 is adjacent.
    col = int(np.flatnonzero(tiers[0] == 2)[0])
    hn[0, col] = 11
    msg = the_error(validate_negatives(hn, tiers, **corpus.kwargs()), "positive")
    assert f"row 0, column {col}, id 11" in msg


def test_duplicate(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = (a.copy() for a in valid)
    hn[2, 5], tiers[2, 5] = hn[2, 1], tiers[2, 1]
    msg = the_error(validate_negatives(hn, tiers, **corpus.kwargs()), "duplicate")
    assert "twice" in msg and "row 2, column 5" in msg and "also at column 1" in msg
    assert "1 entry in 1 row" in msg


@pytest.mark.parametrize("bad_id", [60, -1, 10**12])
def test_id_out_of_range(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray], bad_id: int) -> None:
    hn, tiers = (a.copy() for a in valid)
    hn[6, 3] = bad_id
    msg = the_error(validate_negatives(hn, tiers, **corpus.kwargs()), "id_range")
    assert "[0, 60)" in msg and f"row 6, column 3, id {bad_id}" in msg


def test_uint64_ids_past_int64_are_quoted_as_given(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]
) -> None:
    # Cast to int64, 2**63 + 5 wraps to a negative number: the message must
    # quote the id the caller passed, and the label the same way.
    hn, tiers = (a.astype(np.uint64) for a in valid)
    big = 2**63 + 5
    hn[6, 3] = big
    tiers[4, 1] = 2**64 - 1
    report = validate_negatives(hn, tiers, **corpus.kwargs())
    assert list(report.violations) == ["dtype", "id_range", "label_value"], report.errors
    assert report.violations["id_range"] == 1 and report.violations["label_value"] == 1
    assert f"(row 6, column 3, id {big})" in report.errors[2]
    assert f"(row 4, column 1, label {2**64 - 1})" in report.errors[3]
    assert "-9223372036854775" not in " ".join(report.errors)


@pytest.mark.parametrize(
    ("column", "value", "pattern"),
    [
        (0, -1, r"`pair_indices\[:, 0\]` must hold question ids >= 0 .*; got -1 at \[3\]\."),
        (0, 2**63 + 1, rf"`pair_indices\[:, 0\]` must .*; got {2**63 + 1} at \[5\]\."),
        (
            1,
            2**63 + 1,
            rf"`pair_indices\[:, 1\]` must hold ids in \[0, 60\) .*; got {2**63 + 1} at",
        ),
    ],
)
def test_pair_ids_are_range_checked_in_their_own_dtype(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray], column: int, value: int, pattern: str
) -> None:
    hn, tiers = valid
    pairs = corpus.pairs.astype(np.uint64 if value > 0 else np.int64)
    pairs[3 if value < 0 else 5, column] = value
    with pytest.raises(ValueError, match=pattern):
        validate_negatives(hn, tiers, **{**corpus.kwargs(), "pair_indices": pairs})


def test_out_of_range_skips_only_those_entries(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]
) -> None:
    hn, tiers = (a.copy() for a in valid)
    hn[6, :3] = -1  # repeated padding is reported as out of range, not as duplicates
    tiers[6, :3] = 2
    tiers[1, 0] = 3  # an in-cluster id labelled high-similarity
    report = validate_negatives(hn, tiers, **corpus.kwargs())
    assert list(report.violations) == ["id_range", "tier3"]
    assert report.violations["id_range"] == 3
    assert "3 entries in 1 row" in report.errors[0]
    assert "row 1, column 0" in report.errors[1]


def _column(tiers: np.ndarray, row: int, label: int) -> int:
    return int(np.flatnonzero(tiers[row] == label)[0])


@pytest.mark.parametrize(
    ("from_label", "to_label", "kind", "words"),
    [
        (3, 1, "tier1", "tier-1 (in-cluster)"),  # another cluster labelled in-cluster
        (1, 2, "tier2", "tier-2 (adjacent)"),  # own cluster labelled adjacent
        (1, 3, "tier3", "tier-3 (high-similarity)"),  # own cluster labelled high-similarity
        (1, 4, "tier4_own", "tier-4 (random)"),  # own cluster labelled random
    ],
)
def test_wrong_tier_label(
    corpus: Corpus,
    valid: tuple[np.ndarray, np.ndarray],
    from_label: int,
    to_label: int,
    kind: str,
    words: str,
) -> None:
    hn, tiers = (a.copy() for a in valid)
    row = 5
    col = _column(tiers, row, from_label)
    if from_label == 3:
        assert corpus.source_cluster[hn[row, col]] != corpus.pair_cluster[row]
    tiers[row, col] = to_label
    msg = the_error(validate_negatives(hn, tiers, **corpus.kwargs()), kind)
    assert words in msg and f"row {row}, column {col}, id {hn[row, col]}" in msg
    assert f"pair cluster {corpus.pair_cluster[row]}" in msg


def test_label_2_from_distant_cluster(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = (a.copy() for a in valid)
    col = _column(tiers, 0, 4)  # row 0 is in cluster 0; label-4 ids are in clusters 3-5
    assert corpus.source_cluster[hn[0, col]] >= 3
    tiers[0, col] = 2
    msg = the_error(validate_negatives(hn, tiers, **corpus.kwargs()), "tier2")
    assert f"row 0, column {col}" in msg and "adjacent [1, 2]" in msg


@pytest.mark.parametrize("label", [0, 5, -3])
def test_label_out_of_range(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray], label: int
) -> None:
    hn, tiers = (a.copy() for a in valid)
    tiers[7, 7] = label
    report = validate_negatives(hn, tiers, **corpus.kwargs())
    msg = the_error(report, "label_value")
    assert "{1, 2, 3, 4}" in msg and f"row 7, column 7, label {label}" in msg
    assert sum(report.tier_counts.values()) == 63


def test_label_4_adjacent_while_distant_remain(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]
) -> None:
    hn, tiers = (a.copy() for a in valid)
    col = _column(tiers, 0, 2)  # an adjacent id relabelled random; 30 distant sources remain
    tiers[0, col] = 4
    msg = the_error(validate_negatives(hn, tiers, **corpus.kwargs()), "tier4_adjacent")
    assert f"row 0, column {col}" in msg and "distant" in msg
    n_distant = int((corpus.source_cluster[hn[0]] >= 3).sum())  # clusters 3-5 are distant from 0
    assert n_distant >= 2
    assert f"holds {n_distant} of 30" in msg


def test_label_4_adjacent_when_distant_exhausted() -> None:
    corpus = tiny_corpus([(0, 0)])
    assert corpus.adjacent[:, 0].tolist() == [1, 0, 1]
    ok = np.array([[1, 6, 7, 3]])
    tiers = np.array([[1, 4, 4, 4]])
    for use_centroids in (False, True):
        report = validate_negatives(ok, tiers, **corpus.kwargs(use_centroids))
        assert report.ok, report.errors
    short = np.array([[1, 2, 6, 3]])
    tiers = np.array([[1, 1, 4, 4]])
    msg = the_error(validate_negatives(short, tiers, **corpus.kwargs()), "tier4_adjacent")
    assert "row 0, column 3, id 3" in msg and "holds 1 of 2" in msg


def test_adjacent_table_with_repeats() -> None:
    # A cluster listed twice in a row of a user table counts once.
    corpus = tiny_corpus([(0, 0)])
    corpus.adjacent = np.array([[1, 1], [0, -1], [1, 1]], dtype=np.int64)
    ok = validate_negatives(np.array([[1, 6, 7, 3]]), np.array([[1, 4, 4, 4]]), **corpus.kwargs())
    assert ok.ok, ok.errors
    short = validate_negatives(
        np.array([[1, 2, 6, 3]]), np.array([[1, 1, 4, 4]]), **corpus.kwargs()
    )
    assert "holds 1 of 2" in the_error(short, "tier4_adjacent")


def test_label_4_adjacent_exhausted_counts_out_positives() -> None:
    # Question 0 owns sources 0 and 7, so source 6 is the only non-positive distant one of row 0.
    corpus = tiny_corpus([(0, 0), (0, 7)])
    hn = np.array([[1, 2, 6, 3], [6, 4, 1, 2]])
    tiers = np.array([[1, 1, 4, 4], [1, 2, 4, 4]])
    report = validate_negatives(hn, tiers, **corpus.kwargs())
    assert report.ok, report.errors
    # A duplicate of a distant id does not count twice towards exhaustion.
    corpus = tiny_corpus([(0, 0)])
    report = validate_negatives(np.array([[6, 6, 3]]), np.array([[4, 4, 4]]), **corpus.kwargs())
    assert list(report.violations) == ["duplicate", "tier4_adjacent"]


def test_many_positives_per_question() -> None:
    # Question 0 has 40 positives: the lookup for such rows takes another path.
    source_cluster = np.arange(100, dtype=np.int64) // 25
    pairs = np.array([(0, s) for s in range(40)] + [(1, 60)], dtype=np.int64)
    corpus = Corpus(
        source_cluster,
        np.array([[1], [0], [3], [2]], dtype=np.int64),
        pairs,
        source_cluster[pairs[:, 1]],
    )
    hn, tiers = reference_negatives(corpus, (1, 1, 1, 1), np.random.default_rng(0))
    assert validate_negatives(hn, tiers, **corpus.kwargs()).ok
    hn[3, 2], tiers[3, 2] = 39, 3  # row 3 is in cluster 0; 39 is a cluster-1 positive
    hn[40, 0], tiers[40, 0] = 60, 1
    report = validate_negatives(hn, tiers, **corpus.kwargs())
    msg = the_error(report, "positive")
    assert "2 entries in 2 rows" in msg and "row 3, column 2, id 39" in msg
    assert "row 40, column 0, id 60" in msg


@pytest.mark.parametrize("dtype", [np.int32, np.uint16])
def test_other_integer_dtype(
    corpus: Corpus, valid: tuple[np.ndarray, np.ndarray], dtype: type
) -> None:
    hn, tiers = valid
    msg = the_error(
        validate_negatives(hn.astype(dtype), tiers, **corpus.kwargs()),
        "dtype",
    )
    assert msg.startswith("`hard_negatives` must be int64") and np.dtype(dtype).name in msg
    msg = the_error(validate_negatives(hn, tiers.astype(dtype), **corpus.kwargs()), "dtype")
    assert msg.startswith("`negative_tiers` must be int64")


def test_float_dtype(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = (a.copy() for a in valid)
    msg = the_error(validate_negatives(hn.astype(np.float64), tiers, **corpus.kwargs()), "dtype")
    assert "must be int64" in msg and "float64" in msg
    # Whole-number floats are still checked entry by entry.
    hn[0, 1] = hn[0, 0]
    tiers[0, 1] = tiers[0, 0]
    report = validate_negatives(hn.astype(np.float32), tiers, **corpus.kwargs())
    assert list(report.violations) == ["dtype", "duplicate"]
    # Fractional ids cannot be checked; the tiers still are.
    frac = hn.astype(np.float64) + 0.5
    report = validate_negatives(frac, tiers.astype(np.float64), **corpus.kwargs())
    assert report.violations == {"dtype": 2}
    assert len(report.errors) == 2 and "not checked" in report.errors[0]
    assert sum(report.tier_counts.values()) == 64


def test_wrong_shape(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = valid
    msg = the_error(validate_negatives(hn[:7], tiers[:7], **corpus.kwargs()), "shape")
    assert "P = len(pair_indices) = 8" in msg and "[7, 8]" in msg
    msg = the_error(validate_negatives(hn, tiers[:, :6], **corpus.kwargs()), "shape")
    assert "`negative_tiers`" in msg and "[8, 6]" in msg
    report = validate_negatives(hn[:, 0], tiers, **corpus.kwargs())
    assert report.violations == {"shape": 2}
    assert "[P, n_neg]" in report.errors[0] and "`negative_tiers`" in report.errors[1]
    with pytest.raises(ValidationError, match="shape"):
        validate_negatives(hn, tiers[:, :4], raise_on_error=True, **corpus.kwargs())


def test_n_neg_against_proportions(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = valid
    report = validate_negatives(hn, tiers, tier_proportions=(2, 2, 2, 3), **corpus.kwargs())
    msg = the_error(report, "n_neg")
    assert "sum(tier_proportions) = 9" in msg and "8 columns" in msg


def test_empty_output(corpus: Corpus) -> None:
    empty = np.zeros((8, 0), dtype=np.int64)
    report = validate_negatives(empty, empty, **corpus.kwargs())
    assert report.ok and report.n_neg == 0
    assert "-" in report.summary()
    no_pairs = np.zeros((0, 2), dtype=np.int64)
    report = validate_negatives(
        np.zeros((0, 3), dtype=np.int64),
        np.zeros((0, 3), dtype=np.int64),
        pair_indices=no_pairs,
        pair_cluster_ids=np.zeros(0, dtype=np.int64),
        source_cluster_ids=corpus.source_cluster,
        adjacent=corpus.adjacent,
        tier_proportions=(1, 1, 1, 0),
    )
    assert report.ok and report.requested == {1: 0, 2: 0, 3: 0, 4: 0}


# --------------------------------------------------------------------------- input errors


def test_input_errors(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = valid
    kw = corpus.kwargs()
    with pytest.raises(ValueError, match="`pair_cluster_ids` must have one entry per pair"):
        validate_negatives(hn, tiers, **{**kw, "pair_cluster_ids": corpus.pair_cluster[:-1]})
    with pytest.raises(ValueError, match="`centroid_embeddings` must be given"):
        validate_negatives(hn, tiers, **{**kw, "adjacent": None})
    with pytest.raises(ValueError, match="`pair_indices` must have shape"):
        validate_negatives(hn, tiers, **{**kw, "pair_indices": corpus.pairs[:, 0]})
    with pytest.raises(TypeError, match="`pair_indices` must have an integer dtype"):
        validate_negatives(hn, tiers, **{**kw, "pair_indices": corpus.pairs.astype(float)})
    with pytest.raises(ValueError, match=r"`pair_indices\[:, 1\]` must hold ids in \[0, 60\)"):
        validate_negatives(hn, tiers, **{**kw, "pair_indices": corpus.pairs + np.array([0, 60])})
    with pytest.raises(ValueError, match="`source_cluster_ids` must hold ids in"):
        validate_negatives(hn, tiers, **{**kw, "source_cluster_ids": corpus.source_cluster + 1})
    self_adj = corpus.adjacent.copy()
    self_adj[2, 0] = 2
    with pytest.raises(ValueError, match="`adjacent` must never list a cluster"):
        validate_negatives(hn, tiers, **{**kw, "adjacent": self_adj})
    with pytest.raises(ValueError, match="`adjacent` must hold cluster ids"):
        validate_negatives(hn, tiers, **{**kw, "adjacent": corpus.adjacent - 2})
    with pytest.raises(ValueError, match="`adjacent` must have one row per centroid"):
        validate_negatives(hn, tiers, **{**kw, "centroid_embeddings": corpus.centroids[:5]})
    with pytest.raises(ValueError, match="`tier_proportions` must be four ints"):
        validate_negatives(hn, tiers, tier_proportions=(2, 2, 2), **kw)
    with pytest.raises(TypeError, match="`tier_proportions` must be four ints"):
        validate_negatives(hn, tiers, tier_proportions=(0.5, 0.5, 0, 0), **kw)
    with pytest.raises(TypeError, match="`hard_negatives` must be a numpy array"):
        validate_negatives("ids", tiers, **kw)


def test_adjacent_k_checked(corpus: Corpus, valid: tuple[np.ndarray, np.ndarray]) -> None:
    hn, tiers = valid
    kw = {**corpus.kwargs(True), "adjacent_k": -1}
    with pytest.raises(ValueError, match="`adjacent_k` must be >= 0"):
        validate_negatives(hn, tiers, **kw)


def test_padded_adjacent_table() -> None:
    # With adjacent_k >= C the table is -1 padded; nothing is distant from anything.
    corpus = tiny_corpus([(0, 0)])
    corpus.adjacent = adjacent_clusters(corpus.centroids, 4)
    assert (corpus.adjacent[:, 2:] == -1).all()
    report = validate_negatives(np.array([[3, 6]]), np.array([[4, 4]]), **corpus.kwargs())
    assert report.ok, report.errors


# --------------------------------------------------------------------------- property test

KINDS = [
    "id_range",
    "label_value",
    "positive",
    "duplicate",
    "tier1",
    "tier2",
    "tier3",
    "tier4_own",
    "tier4_adjacent",
    "dtype",
    "shape",
]


@st.composite
def random_case(draw):
    n_c = draw(st.integers(2, 5))
    sizes = draw(st.lists(st.integers(1, 5), min_size=n_c, max_size=n_c))
    source_cluster = np.repeat(np.arange(n_c), sizes).astype(np.int64)
    n_src = len(source_cluster)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    k = draw(st.integers(0, 3))
    adjacent = np.full((n_c, k), -1, dtype=np.int64)
    for c in range(n_c):
        others = rng.permutation([x for x in range(n_c) if x != c])[:k]
        adjacent[c, : len(others)] = others
    n_pairs = draw(st.integers(1, 6))
    questions = rng.integers(0, 3, n_pairs)
    sources = rng.integers(0, n_src, n_pairs)
    pair_cluster = source_cluster[sources].copy()
    moved = rng.random(n_pairs) < 0.3
    pair_cluster[moved] = rng.integers(0, n_c, int(moved.sum()))
    pairs = np.stack([questions, sources], axis=1).astype(np.int64)
    corpus = Corpus(source_cluster, adjacent, pairs, pair_cluster)
    max_pos = max(len(corpus.positives(int(q))) for q in questions)
    room = n_src - max_pos
    assume(room >= 1)
    props = tuple(draw(st.lists(st.integers(0, 2), min_size=4, max_size=4)))
    if sum(props) == 0:
        props = (0, 0, 0, 1)
    assume(sum(props) <= room)
    hn, tiers = reference_negatives(corpus, props, rng)
    return corpus, props, hn, tiers


class CannotPlant(Exception):
    """The output has no entry where this kind of fault can be planted."""


def corrupt(corpus: Corpus, hn: np.ndarray, tiers: np.ndarray, kind: str, data) -> tuple:
    """Copies of the output with one fault of ``kind``, and the row it is in (or None)."""
    hn, tiers = hn.copy(), tiers.copy()
    n_pairs, n_neg = hn.shape
    sc = corpus.source_cluster
    cl = sc[hn]
    own = cl == corpus.pair_cluster[:, None]
    adj = np.array(
        [
            [int(x) in corpus.adjacent_set(int(c)) for x in row]
            for c, row in zip(corpus.pair_cluster, cl, strict=True)
        ]
    ).reshape(hn.shape)
    widened = (tiers == 4) & adj
    if widened.any():
        event("valid output widens label 4")
    # Rows where replacing an id cannot change a widened row's exhaustion.
    safe_rows = np.flatnonzero(~widened.any(axis=1))

    def pick(mask: np.ndarray) -> tuple[int, int]:
        cells = np.argwhere(mask)
        if len(cells) == 0:
            raise CannotPlant(kind)
        r, j = cells[data.draw(st.integers(0, len(cells) - 1))]
        return int(r), int(j)

    safe = np.zeros(hn.shape, dtype=bool)
    safe[safe_rows] = True
    if kind == "id_range":
        r, j = pick(safe)
        hn[r, j] = data.draw(st.sampled_from([-1, corpus.n_sources, corpus.n_sources + 7]))
    elif kind == "label_value":
        r, j = pick(np.ones(hn.shape, dtype=bool))
        tiers[r, j] = data.draw(st.sampled_from([0, 5, -1, 9]))
    elif kind == "positive":
        r, j = pick(safe)
        p = sorted(corpus.positives(int(corpus.pairs[r, 0])))
        s = p[data.draw(st.integers(0, len(p) - 1))]
        hn[r, j] = s
        tiers[r, j] = 1 if sc[s] == corpus.pair_cluster[r] else 3
    elif kind == "duplicate":
        if n_neg < 2:
            raise CannotPlant(kind)
        r, j = pick(safe)
        k = data.draw(st.integers(0, n_neg - 2))
        k += k >= j  # any other column
        hn[r, j], tiers[r, j] = hn[r, k], tiers[r, k]
    elif kind == "tier1":
        r, j = pick(~own)
        tiers[r, j] = 1
    elif kind == "tier2":
        r, j = pick(~adj)
        tiers[r, j] = 2
    elif kind == "tier3":
        r, j = pick(own)
        tiers[r, j] = 3
    elif kind == "tier4_own":
        r, j = pick(own)
        tiers[r, j] = 4
    elif kind == "tier4_adjacent":
        short = np.array([not distant_exhausted(corpus, r, hn) for r in range(n_pairs)])
        r, j = pick(adj & short[:, None])
        tiers[r, j] = 4
    elif kind == "dtype":
        if data.draw(st.booleans()):
            hn = hn.astype(np.int32)
        else:
            tiers = tiers.astype(np.int16)
        r = None
    elif kind == "shape":
        if data.draw(st.booleans()):
            tiers = tiers[:, :-1]
        else:
            hn, tiers = hn[:-1], tiers[:-1]
        r = None
    return hn, tiers, r


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(case=random_case(), data=st.data())
def test_random_single_fault(case, data) -> None:
    corpus, props, hn, tiers = case
    report = validate_negatives(hn, tiers, tier_proportions=props, **corpus.kwargs())
    assert report.ok, report.errors
    assert report.tier_counts == {t: int((tiers == t).sum()) for t in (1, 2, 3, 4)}
    # The reference falls back to tiers 3 and 1 only.
    assert report.tier_counts[2] <= report.requested[2]
    assert report.tier_counts[4] <= report.requested[4]

    # Each kind of fault on its own, planted in a fresh copy: exactly that rule is reported.
    for kind in KINDS:
        try:
            bad_hn, bad_tiers, row = corrupt(corpus, hn, tiers, kind, data)
        except CannotPlant:
            continue
        event(kind)
        report = validate_negatives(bad_hn, bad_tiers, tier_proportions=props, **corpus.kwargs())
        assert list(report.violations) == [kind], report.errors
        if row is not None:
            assert f"row {row}," in report.errors[0]
        with pytest.raises(ValidationError):
            report.raise_if_failed()


def test_reference_output_exercises_widening() -> None:
    # Guard for the property test: some reference rows do widen label 4 into adjacent clusters.
    corpus = tiny_corpus([(0, 0), (1, 3)])
    hn, tiers = reference_negatives(corpus, (0, 0, 0, 4), np.random.default_rng(1))
    cl = corpus.source_cluster[hn]
    assert ((tiers == 4) & (cl == 1))[0].sum() == 2
    assert validate_negatives(hn, tiers, **corpus.kwargs()).ok


@pytest.mark.parametrize("step", [1, 3, 1 << 16])
def test_later_duplicates_is_the_same_in_any_steps(monkeypatch, step):
    """Each repeat of an in-range id after its first place in the row, whatever the
    number of rows sorted at a time; out-of-range entries never count."""
    import negmine.validate.rows as rows_mod

    rng = np.random.default_rng(step)
    ids = rng.integers(0, 6, size=(50, 5))
    valid = rng.random((50, 5)) > 0.2
    want = np.zeros(ids.shape, dtype=bool)
    for r in range(ids.shape[0]):
        seen = set()
        for j in range(ids.shape[1]):
            if valid[r, j]:
                want[r, j] = ids[r, j] in seen
                seen.add(ids[r, j])
    monkeypatch.setattr(rows_mod, "REPEAT_ROWS", step)
    assert want.any()
    np.testing.assert_array_equal(rows_mod.later_duplicates(ids, valid), want)
