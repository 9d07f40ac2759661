"""Malformed input never becomes a wrong result.

Every case below takes a valid small corpus, corrupts one thing and feeds it to
the public API (``mine_negatives``, ``NegativeMiner``, ``validate_negatives``)
or to the command line. Each must end in either

* a correct result: it passes ``validate_negatives`` and the independent
  ``check_rows`` reference, its scores are the cosines and its tier 3 holds the
  most similar eligible sources; or
* a ``ValueError``/``TypeError`` in the one message form
  "`name` must <rule>; got <value>. <fix>" that names the offending argument.

Inputs that only change the container (dtype width, strides, memory order,
read-only, memmaps, torch tensors) must give exactly the result of the plain
float32/int64 arrays holding the same values.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import check_rows, small_corpus

from negmine import NegativeMiner, ValidationError, mine_negatives, validate_negatives
from negmine.config import resolve_tier_counts
from negmine.io import load_outputs
from negmine.io.datasets import save_dataset

CORPUS = small_corpus(n_sources=60, n_clusters=4, n_questions=15, d=6)
EMB = ("source_embeddings", "question_embeddings", "centroid_embeddings")
IDS = ("pair_indices", "pair_cluster_ids", "source_cluster_ids")
INPUTS = EMB + IDS
S, D = CORPUS["source_embeddings"].shape
Q = len(CORPUS["question_embeddings"])
C = len(CORPUS["centroid_embeddings"])
P = len(CORPUS["pair_indices"])
ROWS = {name: len(CORPUS[name]) for name in INPUTS}
# Exclusive upper bound of the ids in each id array (column of pair_indices).
ID_BOUNDS = {
    ("pair_indices", 0): Q,
    ("pair_indices", 1): S,
    ("pair_cluster_ids", None): C,
    ("source_cluster_ids", None): C,
}
_POS_PER_Q = np.bincount(np.unique(CORPUS["pair_indices"], axis=0)[:, 0], minlength=Q)
MAX_N_NEG = int(S - _POS_PER_Q.max())  # the largest n_neg every question can fill
N_NEG = 6
ADJ = 1  # with 4 clusters, adjacent_k=1 leaves distant clusters for tier 4
BASE_SETTINGS = {"n_neg": N_NEG, "adjacent_k": ADJ, "seed": 7}

FAST = settings(max_examples=30, deadline=None)
FEW = settings(max_examples=15, deadline=None)

_FORM = re.compile(r"^`[^`]+` must .+; got .+\.", re.DOTALL)


# --------------------------------------------------------------------------- helpers


def _named(msg: str, name: str) -> bool:
    return f"`{name}`" in msg or f"`{name}[" in msg


def assert_clear_error(err: BaseException, names: tuple[str, ...], detail: str = "") -> None:
    """``err`` is a ValueError/TypeError in the project's form naming one of ``names``."""
    msg = str(err)
    assert not isinstance(err, ValidationError), f"the miner produced a wrong result:\n{msg}"
    assert isinstance(err, (ValueError, TypeError)), repr(err)
    assert _FORM.match(msg), f"message not in the '`name` must ...; got ....' form: {msg}"
    assert "\n" not in msg, msg
    assert any(_named(msg, n) for n in names), f"none of {names} named in: {msg}"
    if detail:
        assert detail in msg, f"{detail!r} not in: {msg}"


def _plain(x: Any) -> np.ndarray:
    """The values of ``x`` as a plain numpy array (the test's own conversion)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _unit_f64(a: Any) -> np.ndarray:
    """Rows scaled to unit length in float64, overflow-safe for any float input."""
    a = _plain(a)
    wide = a.astype(np.result_type(a.dtype, np.float64))
    wide /= np.abs(wide).max(axis=1, keepdims=True)
    out = wide.astype(np.float64)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _with(**changes: Any) -> dict[str, Any]:
    out = dict(CORPUS)
    out.update(changes)
    return out


def mine(inputs: dict[str, Any], settings_: dict[str, Any], via_class: bool = False):
    if via_class:
        return NegativeMiner(**inputs, **settings_).mine_all_negatives()
    return mine_negatives(**inputs, **settings_)


def assert_correct(res: dict[str, Any], inputs: dict[str, Any], settings_: dict[str, Any]):
    """``res`` obeys every rule for the values of ``inputs`` (checked three ways)."""
    n_neg = int(settings_.get("n_neg", 12))
    adjacent_k = int(settings_.get("adjacent_k", 3))
    props = settings_.get("tier_proportions")
    if props is not None:
        props = [p.item() if hasattr(p, "item") else p for p in props]
    counts = resolve_tier_counts(n_neg, props)

    ids, tiers, scores = res["hard_negatives"], res["negative_tiers"], res["negative_scores"]
    n_p = len(_plain(inputs["pair_indices"]))
    assert ids.dtype == torch.int64 and tiers.dtype == torch.int64
    assert scores.dtype == torch.float32
    assert tuple(ids.shape) == tuple(tiers.shape) == tuple(scores.shape) == (n_p, n_neg)

    plain = {k: _plain(inputs[k]) for k in INPUTS}
    ints = {k: plain[k].astype(np.int64) for k in IDS}
    report = validate_negatives(
        ids,
        tiers,
        pair_indices=ints["pair_indices"],
        pair_cluster_ids=ints["pair_cluster_ids"],
        source_cluster_ids=ints["source_cluster_ids"],
        centroid_embeddings=_unit_f64(plain["centroid_embeddings"]),
        adjacent_k=adjacent_k,
        tier_proportions=list(counts),
    )
    assert report.ok, report.summary()
    unit = {k: _unit_f64(plain[k]) for k in EMB}
    check_rows(res, {**unit, **ints}, adjacent_k)

    # Scores are the cosines of each negative to the pair's question.
    q = ints["pair_indices"][:, 0]
    ids_np = ids.numpy()
    want = np.einsum(
        "pd,pkd->pk", unit["question_embeddings"][q], unit["source_embeddings"][ids_np]
    )
    got = scores.numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=1e-5)

    # Tier 3 holds the most similar sources outside the pair's cluster (no positives).
    n3 = counts[2]
    pos: dict[int, set[int]] = {}
    for qq, ss in ints["pair_indices"]:
        pos.setdefault(int(qq), set()).add(int(ss))
    sims = unit["question_embeddings"] @ unit["source_embeddings"].T
    scl = ints["source_cluster_ids"]
    for r, (qq, c) in enumerate(zip(q, ints["pair_cluster_ids"], strict=True)):
        label3 = ids_np[r][tiers.numpy()[r] == 3]
        if len(label3) != n3:
            continue  # a shortfall moved some of tier 3 along the fallback
        ok = scl != c
        ok[list(pos[int(qq)])] = False
        cand = np.flatnonzero(ok)
        best = cand[np.argsort(-sims[qq, cand], kind="stable")][:n3]
        assert set(label3.tolist()) == set(best.tolist()), (r, label3, best)


@dataclass
class Case:
    """One corrupted input: what changed and what must come of it."""

    what: str
    changes: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    # Exception class the case must raise (Exception: ValueError or TypeError);
    # None: a correct result is acceptable too.
    refuse: type[Exception] | None = None
    detail: str = ""

    def __repr__(self) -> str:  # hypothesis prints this on failure; arrays are noise
        return f"Case({self.what!r}, settings={self.settings!r})"


def run_case(case: Case, via_class: bool = False) -> dict[str, Any] | None:
    """Run one case; assert it ends in a correct result or a clear error."""
    inputs = _with(**case.changes)
    settings_ = {**BASE_SETTINGS, **case.settings}
    try:
        res = mine(inputs, settings_, via_class)
    except (ValueError, TypeError) as e:
        assert_clear_error(e, case.names, case.detail)
        if case.refuse is not None:
            assert isinstance(e, case.refuse), f"{case.what}: {type(e).__name__}: {e}"
        return None
    assert case.refuse is None, f"{case.what}: accepted; expected {case.refuse.__name__}"
    assert_correct(res, inputs, settings_)
    return res


_BASELINE: dict[str, Any] = {}


def baseline() -> dict[str, Any]:
    if not _BASELINE:
        _BASELINE.update(mine_negatives(**CORPUS, **BASE_SETTINGS))
    return _BASELINE


def assert_same_result(res: dict[str, Any], ref: dict[str, Any]) -> None:
    for key in ("hard_negatives", "negative_tiers", "negative_scores"):
        assert torch.equal(res[key], ref[key]), key


# --------------------------------------------------------------------------- strategies

rows_of = {name: st.integers(0, ROWS[name] - 1) for name in INPUTS}
float_dtypes = st.sampled_from([np.float16, np.float32, np.float64])


@st.composite
def nonfinite_cases(draw) -> Case:
    name = draw(st.sampled_from(EMB))
    row, col = draw(rows_of[name]), draw(st.integers(0, D - 1))
    value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    a = CORPUS[name].astype(draw(float_dtypes))
    a[row, col] = value
    bad: Any = torch.from_numpy(a) if draw(st.booleans()) else a
    return Case(f"{value} at [{row}, {col}] of {name}", {name: bad}, names=(name,),
                refuse=ValueError, detail=f"row {row}")  # fmt: skip


@st.composite
def zero_row_cases(draw) -> Case:
    name = draw(st.sampled_from(EMB))
    row = draw(rows_of[name])
    a = CORPUS[name].astype(draw(float_dtypes))
    a[row] = draw(st.sampled_from([0.0, -0.0]))
    return Case(f"all-zero row {row} of {name}", {name: a}, names=(name,), refuse=ValueError,
                detail=f"all-zero row {row}")  # fmt: skip


@st.composite
def wrong_dtype_cases(draw) -> Case:
    name = draw(st.sampled_from(INPUTS))
    a = CORPUS[name]
    kinds = (
        ["int32", "int64", "bool", "complex64", "complex128", "object", "str", "torch-int",
         "torch-complex"]
        if name in EMB
        else ["float32", "float64", "bool", "complex128", "object", "str", "timedelta64[s]",
              "torch-float", "torch-bool"]
    )  # fmt: skip
    kind = draw(st.sampled_from(kinds))
    if kind == "str":
        bad: Any = a.astype(str)
    elif kind == "torch-int":
        bad = torch.from_numpy(a).to(torch.int32)
    elif kind == "torch-complex":
        bad = torch.from_numpy(a).to(torch.complex64)
    elif kind == "torch-float":
        bad = torch.from_numpy(a).to(torch.float32)
    elif kind == "torch-bool":
        bad = torch.from_numpy(a).to(torch.bool)
    else:
        bad = a.astype(kind)
    return Case(f"{name} as {kind}", {name: bad}, names=(name,), refuse=TypeError)


@st.composite
def wrong_rank_cases(draw) -> Case:
    name = draw(st.sampled_from(INPUTS))
    a = CORPUS[name]
    if name in EMB:
        makers = {
            "1-D row": lambda: a[0],
            "1-D ravel": lambda: a.ravel(),
            "3-D [1, n, d]": lambda: a[None],
            "3-D [n, d, 1]": lambda: a[:, :, None],
            "0-D": lambda: np.array(a[0, 0]),
            "ragged list": lambda: [list(r) for r in a[:-1]] + [list(a[-1, :-1])],
        }
    elif name == "pair_indices":
        makers = {
            "1-D column": lambda: a[:, 0],
            "1-D ravel": lambda: a.ravel(),
            "3-D": lambda: a[None],
            "[P, 1]": lambda: a[:, :1],
            "[P, 3]": lambda: np.concatenate([a, a[:, :1]], axis=1),
            "[2, P]": lambda: np.ascontiguousarray(a.T),
            "0-D": lambda: np.array(a[0, 0]),
            "ragged list": lambda: [list(r) for r in a[:-1]] + [[int(a[-1, 0])]],
        }
    else:
        makers = {
            "2-D column": lambda: a[:, None],
            "2-D row": lambda: a[None, :],
            "0-D": lambda: np.array(a[0]),
            "numpy scalar": lambda: a[0],
        }
    kind = draw(st.sampled_from(sorted(makers)))
    return Case(f"{name} {kind}", {name: makers[kind]()}, names=(name,), refuse=Exception)


@st.composite
def out_of_range_cases(draw) -> Case:
    name, col = draw(st.sampled_from(sorted(ID_BOUNDS, key=str)))
    upper = ID_BOUNDS[(name, col)]
    signed = draw(st.booleans())
    if signed:
        value = draw(st.sampled_from([-1, -2, -(2**40), upper, upper + 3, 2**40, 2**62]))
        small = -(2**31) <= value < 2**31
        dtype = draw(st.sampled_from([np.int32, np.int64])) if small else np.int64
    else:
        value = draw(st.sampled_from([upper, 2**40, 2**63, 2**64 - 1]))
        dtype = np.uint64
    a = CORPUS[name].astype(dtype)
    row = draw(st.integers(0, len(a) - 1))
    if col is None:
        a[row] = value
    else:
        a[row, col] = value
    bad: Any = torch.from_numpy(a) if dtype == np.int64 and draw(st.booleans()) else a
    where = name if col is None else f"{name}[:, {col}]"
    return Case(f"{value} at [{row}] of {where}", {name: bad}, names=(name,), refuse=ValueError,
                detail=f"got {value} at [{row}]")  # fmt: skip


@st.composite
def empty_cases(draw) -> Case:
    kind = draw(
        st.sampled_from(
            ["no pairs", "no pairs, clusters kept", "no sources", "no questions", "no clusters",
             "0-width one", "0-width all", "empty pair clusters", "empty source clusters",
             "empty lists"]
        )
    )  # fmt: skip
    if kind == "no pairs":
        return Case(kind, {"pair_indices": np.zeros((0, 2), np.int64),
                           "pair_cluster_ids": np.zeros(0, np.int64)},
                    names=("pair_indices",), refuse=ValueError)  # fmt: skip
    if kind == "no pairs, clusters kept":
        return Case(kind, {"pair_indices": np.zeros((0, 2), np.int64)},
                    names=("pair_indices", "pair_cluster_ids"), refuse=ValueError)  # fmt: skip
    if kind == "no sources":
        ch = {"source_embeddings": np.zeros((0, D), np.float32)}
        if draw(st.booleans()):
            ch["source_cluster_ids"] = np.zeros(0, np.int64)
        return Case(kind, ch, names=("source_embeddings",), refuse=ValueError)
    if kind == "no questions":
        return Case(kind, {"question_embeddings": np.zeros((0, D), np.float32)},
                    names=("question_embeddings",), refuse=ValueError)  # fmt: skip
    if kind == "no clusters":
        return Case(kind, {"centroid_embeddings": np.zeros((0, D), np.float32)},
                    names=("centroid_embeddings",), refuse=ValueError)  # fmt: skip
    if kind == "0-width one":
        name = draw(st.sampled_from(EMB))
        return Case(f"{kind}: {name}", {name: np.zeros((ROWS[name], 0), np.float32)},
                    names=(name,), refuse=ValueError)  # fmt: skip
    if kind == "0-width all":
        return Case(kind, {n: np.zeros((ROWS[n], 0), np.float32) for n in EMB},
                    names=("source_embeddings",), refuse=ValueError)  # fmt: skip
    if kind == "empty pair clusters":
        return Case(kind, {"pair_cluster_ids": np.zeros(0, np.int64)},
                    names=("pair_cluster_ids",), refuse=ValueError)  # fmt: skip
    if kind == "empty source clusters":
        return Case(kind, {"source_cluster_ids": np.zeros(0, np.int64)},
                    names=("source_cluster_ids",), refuse=ValueError)  # fmt: skip
    name = draw(st.sampled_from(INPUTS))
    return Case(f"{name} = []", {name: []}, names=(name,))


@st.composite
def length_mismatch_cases(draw) -> Case:
    name = draw(st.sampled_from(["pair_cluster_ids", "source_cluster_ids"]))
    a = CORPUS[name]
    delta = draw(st.integers(-len(a), 5).filter(lambda x: x != 0))
    bad = a[: len(a) + delta] if delta < 0 else np.concatenate([a, a[:delta]])
    return Case(f"{name} of length {len(bad)}", {name: bad}, names=(name,), refuse=ValueError,
                detail=f"length {len(bad)}")  # fmt: skip


@st.composite
def row_count_cases(draw) -> Case:
    """Embedding matrices with rows removed or added; ids left as they are."""
    name = draw(st.sampled_from(EMB))
    a = CORPUS[name]
    delta = draw(st.integers(-(len(a) - 1), 4).filter(lambda x: x != 0))
    if delta < 0:
        bad = a[: len(a) + delta]
    else:
        extra = np.random.default_rng(delta).standard_normal((delta, D)).astype(np.float32)
        bad = np.concatenate([a, extra])
    names = {
        "source_embeddings": ("source_embeddings", "pair_indices", "source_cluster_ids"),
        "question_embeddings": ("question_embeddings", "pair_indices"),
        "centroid_embeddings": ("centroid_embeddings", "pair_cluster_ids", "source_cluster_ids"),
    }[name]
    # Extra questions (asked by no pair) and extra centroids (empty clusters) are
    # valid input: those must give a correct result.
    refuse = ValueError if delta < 0 or name == "source_embeddings" else None
    return Case(f"{name} with {len(bad)} rows", {name: bad}, names=names, refuse=refuse)


@st.composite
def width_mismatch_cases(draw) -> Case:
    name = draw(st.sampled_from(EMB))
    a = CORPUS[name]
    width = draw(st.integers(1, D + 3).filter(lambda w: w != D))
    if width < D:
        bad = a[:, :width]
    else:
        extra = np.ones((len(a), width - D), np.float32)
        bad = np.concatenate([a, extra], axis=1)
    return Case(f"{name} of width {width}", {name: bad}, names=(name,), refuse=ValueError)


def _variant(name: str, kind: str, tmp: Path | None) -> tuple[Any, np.ndarray]:
    """(variant of CORPUS[name], plain float32/int64 array holding the same values)."""
    a = CORPUS[name]
    canon = a.astype(np.float32 if name in EMB else np.int64)
    if kind == "plain":
        return canon, canon
    if kind in ("float16", "float64", "longdouble", "int32", "uint16", "uint32", "uint64"):
        v = a.astype(kind)
        return v, v.astype(canon.dtype)
    if kind == "bfloat16":
        t = torch.from_numpy(canon).bfloat16()
        return t, t.float().numpy()
    if kind == "torch":
        return torch.from_numpy(a.copy()), canon
    if kind == "torch float64":
        return torch.from_numpy(a.astype(np.float64)), canon
    if kind == "torch int32":
        return torch.from_numpy(a.astype(np.int32)), canon
    if kind == "torch strided":
        big = torch.zeros((2 * len(a), *a.shape[1:]), dtype=torch.from_numpy(a).dtype)
        big[::2] = torch.from_numpy(a)
        return big[::2], canon
    if kind == "torch grad":
        return torch.from_numpy(a.copy()).requires_grad_(), canon
    if kind == "rows step 2":
        # The skipped rows hold garbage that would be refused if it were read.
        fill = np.nan if name in EMB else -7
        big = np.full((2 * len(a), *a.shape[1:]), fill, dtype=a.dtype)
        big[::2] = a
        return big[::2], canon
    if kind == "cols step 2":
        big = np.full((len(a), 2 * a.shape[1]), np.nan, dtype=a.dtype)
        big[:, ::2] = a
        return big[:, ::2], canon
    if kind == "reversed":
        return a[::-1].copy()[::-1], canon
    if kind == "fortran":
        return np.asfortranarray(a), canon
    if kind == "read-only":
        v = a.copy()
        v.setflags(write=False)
        return v, canon
    if kind == "big-endian":
        return a.astype(a.dtype.newbyteorder(">")), canon
    if kind == "list":
        return a.tolist(), canon
    if kind == "memmap":
        assert tmp is not None
        f = tmp / f"{name}.npy"
        if not f.exists():
            np.save(f, a)
        return np.load(f, mmap_mode="r"), canon
    raise AssertionError(kind)


_COMMON = ["plain", "torch", "torch strided", "rows step 2", "reversed", "fortran", "read-only",
           "big-endian", "list", "memmap"]  # fmt: skip
_FLOAT_ONLY = ["float16", "float64", "longdouble", "bfloat16", "torch float64", "torch grad",
               "cols step 2"]  # fmt: skip
_INT_ONLY = ["int32", "uint16", "uint32", "uint64", "torch int32"]
VARIANTS = {name: _COMMON + (_FLOAT_ONLY if name in EMB else _INT_ONLY) for name in INPUTS}


@pytest.fixture(scope="module")
def mmap_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("memmaps")


# --------------------------------------------------------------------------- mining: bad arrays


@FAST
@given(case=nonfinite_cases(), via_class=st.booleans())
def test_nan_or_inf_anywhere_is_refused(case, via_class):
    run_case(case, via_class)


@FEW
@given(case=zero_row_cases())
def test_all_zero_row_is_refused(case):
    run_case(case)


@FAST
@given(case=wrong_dtype_cases(), via_class=st.booleans())
def test_wrong_dtype_is_refused(case, via_class):
    run_case(case, via_class)


@FAST
@given(case=wrong_rank_cases())
def test_wrong_rank_is_refused(case):
    run_case(case)


@FAST
@given(case=out_of_range_cases(), via_class=st.booleans())
def test_negative_and_huge_ids_are_refused(case, via_class):
    run_case(case, via_class)


@FAST
@given(case=empty_cases())
def test_empty_arrays_are_refused(case):
    assert run_case(case) is None


@FAST
@given(case=length_mismatch_cases())
def test_mismatched_lengths_are_refused(case):
    run_case(case)


@FAST
@given(case=row_count_cases())
def test_changed_row_counts_give_an_error_or_a_correct_result(case):
    run_case(case)


@FEW
@given(case=width_mismatch_cases())
def test_mismatched_widths_are_refused(case):
    run_case(case)


@FEW
@given(
    name=st.sampled_from(EMB),
    data=st.data(),
    scale=st.sampled_from([1e-30, 1e-20, 1e-12, 1e12, 1e20, 1e30]),
)
def test_tiny_and_huge_rows_keep_their_direction(name, data, scale):
    """Cosine ignores length: a row scaled to the edge of float32 changes nothing."""
    row = data.draw(rows_of[name], label="row")
    a = CORPUS[name].copy()
    a[row] *= np.float32(scale)
    assert np.isfinite(a).all()
    res = run_case(Case(f"row {row} of {name} x {scale}", {name: a}))
    assert res is not None
    assert torch.equal(res["hard_negatives"], baseline()["hard_negatives"])
    np.testing.assert_allclose(res["negative_scores"], baseline()["negative_scores"], atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [
        ("float64", "1e-300"),
        ("float64", "1e300"),
        ("longdouble", "1e-320"),
        ("longdouble", "1e320"),
    ],
)
def test_magnitudes_past_float32_keep_their_direction(dtype, scale):
    """Past float32's range (and, for long double, float64's) the direction still counts."""
    factor = np.dtype(dtype).type(scale)
    if not np.isfinite(factor) or factor < np.finfo(dtype).tiny:
        pytest.skip(f"{dtype} cannot hold {scale} as a normal number on this platform")
    changes = {n: CORPUS[n].astype(dtype) * factor for n in EMB}
    assert all(np.isfinite(v).all() and (v != 0).any(axis=1).all() for v in changes.values())
    res = run_case(Case(f"embeddings as {dtype} x {scale}", changes))
    assert res is not None
    assert torch.equal(res["hard_negatives"], baseline()["hard_negatives"])
    np.testing.assert_allclose(res["negative_scores"], baseline()["negative_scores"], atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: torch.from_numpy(a).to(torch.float8_e4m3fn),  # torch has no numpy view of it
        lambda a: torch.from_numpy(a).to_sparse(),
        lambda a: torch.empty(a.shape, device="meta"),
        lambda a: torch.from_numpy(a).to(torch.complex64).conj(),
    ],
    ids=["float8", "sparse", "meta", "conj-complex"],
)
def test_unreadable_tensors_are_refused(make):
    for name in EMB:
        with pytest.raises(TypeError) as info:
            mine(_with(**{name: make(CORPUS[name])}), BASE_SETTINGS)
        assert_clear_error(info.value, (name,))


# --------------------------------------------------------------------------- mining: benign


@FAST
@given(data=st.data(), via_class=st.booleans())
def test_container_variants_give_the_plain_result(mmap_dir, data, via_class):
    """float16/64, int32/uint ids, strides, Fortran, read-only, memmaps, torch: same output."""
    chosen = {n: data.draw(st.sampled_from(VARIANTS[n]), label=n) for n in INPUTS}
    pairs = {n: _variant(n, kind, mmap_dir) for n, kind in chosen.items()}
    variant = {n: v for n, (v, _) in pairs.items()}
    plain = {n: c for n, (_, c) in pairs.items()}
    res = mine(variant, BASE_SETTINGS, via_class)
    assert_same_result(res, mine_negatives(**plain, **BASE_SETTINGS))
    assert_correct(res, plain, BASE_SETTINGS)


@FEW
@given(
    batch_size=st.one_of(st.integers(1, 3000), st.just(10**12), st.integers(1, 50).map(np.int32)),
    n_neg=st.sampled_from([N_NEG, np.int64(N_NEG), np.uint8(N_NEG)]),
    proportions=st.sampled_from(
        [None, [2, 2, 1, 1], (2, 2, 1, 1), np.array([2, 2, 1, 1]), torch.tensor([2, 2, 1, 1])]
    ),
)
def test_setting_containers_give_the_plain_result(batch_size, n_neg, proportions):
    """batch_size never changes the result; numpy/torch settings act as their values."""
    if proportions is None:
        want = baseline()
    else:
        want = mine_negatives(**CORPUS, **BASE_SETTINGS, tier_proportions=[2, 2, 1, 1])
    kw = {**BASE_SETTINGS, "n_neg": n_neg, "batch_size": batch_size}
    kw["tier_proportions"] = proportions
    assert_same_result(mine_negatives(**CORPUS, **kw), want)


# --------------------------------------------------------------------------- mining: settings

BAD_SETTINGS: list[tuple[str, Any, type[Exception]]] = [
    ("n_neg", 0, ValueError),
    ("n_neg", -1, ValueError),
    ("n_neg", 1.5, TypeError),
    ("n_neg", True, TypeError),
    ("n_neg", "6", TypeError),
    ("n_neg", None, TypeError),
    ("n_neg", np.float64(6.0), TypeError),
    ("n_neg", MAX_N_NEG + 1, ValueError),
    ("n_neg", S, ValueError),
    ("n_neg", 10**6, ValueError),
    ("n_neg", 2**63, ValueError),
    ("n_neg", 10**30, ValueError),
    ("tier_proportions", [1, 2, 3], ValueError),
    ("tier_proportions", [1, 2, 3, 4, 5], ValueError),
    ("tier_proportions", [], ValueError),
    ("tier_proportions", [-1, 3, 3, 1], ValueError),
    ("tier_proportions", [1.0, -0.5, 1.0, 1.0], ValueError),
    ("tier_proportions", [1, float("nan"), 1, 1], ValueError),
    ("tier_proportions", np.array([1.0, 1.0, np.nan, 1.0]), ValueError),
    ("tier_proportions", [1, 1, float("inf"), 1], ValueError),
    ("tier_proportions", [1, 1, 1, float("-inf")], ValueError),
    ("tier_proportions", [0, 0, 0, 0], ValueError),
    ("tier_proportions", [0.0, 0.0, 0.0, 0.0], ValueError),
    ("tier_proportions", ["3", "1", "1", "1"], TypeError),
    ("tier_proportions", [None, 1, 1, 1], TypeError),
    ("tier_proportions", [1j, 1, 1, 1], TypeError),
    ("tier_proportions", [True, 1, 1, 1], TypeError),
    ("tier_proportions", "3111", TypeError),
    ("tier_proportions", 6, TypeError),
    ("adjacent_k", -1, ValueError),
    ("adjacent_k", 2.5, TypeError),
    ("adjacent_k", "3", TypeError),
    ("adjacent_k", None, TypeError),
    ("seed", -1, ValueError),
    ("seed", "x", TypeError),
    ("seed", 1.5, TypeError),
    ("seed", None, TypeError),
    ("batch_size", 0, ValueError),
    ("batch_size", -5, ValueError),
    ("batch_size", 2.5, TypeError),
    ("batch_size", True, TypeError),
    ("batch_size", "1024", TypeError),
]


@settings(max_examples=60, deadline=None)
@given(
    bad=st.sampled_from(BAD_SETTINGS),
    others=st.fixed_dictionaries({"adjacent_k": st.integers(0, 4), "seed": st.integers(0, 2**32)}),
    via_class=st.booleans(),
)
def test_bad_settings_are_refused(bad, others, via_class):
    name, value, exc = bad
    kw = {**BASE_SETTINGS, **others, name: value}
    with pytest.raises((ValueError, TypeError)) as info:
        mine(CORPUS, kw, via_class)
    assert_clear_error(info.value, (name,))
    assert isinstance(info.value, exc), f"{name}={value!r}: {info.value!r}"


@st.composite
def valid_settings(draw) -> dict[str, Any]:
    n_neg = draw(st.integers(1, MAX_N_NEG))
    kind = draw(st.sampled_from(["none", "counts", "weights"]))
    props: Any = None
    if kind == "counts":
        cuts = sorted(draw(st.lists(st.integers(0, n_neg), min_size=3, max_size=3)))
        props = [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], n_neg - cuts[2]]
    elif kind == "weights":
        w = st.floats(0, 1e6, allow_nan=False, allow_infinity=False)
        props = draw(st.lists(w, min_size=4, max_size=4).filter(lambda p: sum(p) > 0))
    return {
        "n_neg": n_neg,
        "tier_proportions": props,
        "adjacent_k": draw(st.integers(0, 12)),  # >= C - 1 means every other cluster
        "seed": draw(st.integers(0, 2**64)),
        "batch_size": draw(st.integers(1, 5000)),
    }


@FAST
@given(kw=valid_settings())
def test_edge_settings_give_correct_results(kw):
    """n_neg up to the corpus limit, adjacent_k past C, odd weights: full, valid rows."""
    res = mine_negatives(**CORPUS, **kw)
    assert_correct(res, CORPUS, kw)


@pytest.mark.parametrize(
    "props",
    [
        [10**400, 1, 1, 1],  # beyond the float range
        np.ones((4, 2)),  # 2-D
        np.array(6),  # 0-D
        {"a": 1, "b": 1, "c": 1, "d": 1},  # a mapping's keys are no weights
    ],
    ids=["10**400", "2-D", "0-D", "dict"],
)
def test_extreme_tier_proportions_are_named(props):
    with pytest.raises((ValueError, TypeError)) as info:
        mine_negatives(**CORPUS, **{**BASE_SETTINGS, "tier_proportions": props})
    assert_clear_error(info.value, ("tier_proportions",))


@pytest.mark.parametrize(
    ("props", "expected"),
    [([1e308, 1.0, 1.0, 1.0], (6, 0, 0, 0)), ([1e308, 1e308, 0.0, 0.0], (3, 3, 0, 0))],
)
def test_huge_finite_weights_are_weights(props, expected):
    from negmine.config import resolve_tier_counts

    assert resolve_tier_counts(6, props) == expected
    kw = {**BASE_SETTINGS, "n_neg": 6, "tier_proportions": props}
    assert_correct(mine_negatives(**CORPUS, **kw), CORPUS, {**kw, "tier_proportions": expected})


# --------------------------------------------------------------------------- validate_negatives


def _context() -> dict[str, Any]:
    return {
        "pair_indices": CORPUS["pair_indices"],
        "pair_cluster_ids": CORPUS["pair_cluster_ids"],
        "source_cluster_ids": CORPUS["source_cluster_ids"],
        "centroid_embeddings": CORPUS["centroid_embeddings"],
        "adjacent_k": ADJ,
        "tier_proportions": list(resolve_tier_counts(N_NEG, None)),
    }


def _validate(ids: Any, tiers: Any, **changes: Any):
    return validate_negatives(ids, tiers, **{**_context(), **changes})


def test_validator_accepts_the_baseline():
    res = baseline()
    assert _validate(res["hard_negatives"], res["negative_tiers"]).ok


@st.composite
def corrupted_outputs(draw) -> tuple[str, Any, Any]:
    ids = baseline()["hard_negatives"].numpy().copy()
    tiers = baseline()["negative_tiers"].numpy().copy()
    r, j = draw(st.integers(0, P - 1)), draw(st.integers(0, N_NEG - 1))
    kind = draw(
        st.sampled_from(
            ["id out of range", "positive", "duplicate", "label value", "label vs cluster",
             "float ids with NaN", "dtype", "shape", "tiers shape"]
        )
    )  # fmt: skip
    q, c = CORPUS["pair_indices"][r, 0], CORPUS["pair_cluster_ids"][r]
    scl = CORPUS["source_cluster_ids"]
    if kind == "id out of range":
        ids[r, j] = draw(st.sampled_from([-1, S, S + 1, 2**40, -(2**40)]))
    elif kind == "positive":
        positives = CORPUS["pair_indices"][CORPUS["pair_indices"][:, 0] == q, 1]
        ids[r, j] = draw(st.sampled_from(sorted(positives.tolist())))
    elif kind == "duplicate":
        other = draw(st.integers(0, N_NEG - 1).filter(lambda x: x != j))
        ids[r, j] = ids[r, other]
    elif kind == "label value":
        tiers[r, j] = draw(st.sampled_from([0, 5, -1, 99]))
    elif kind == "label vs cluster":
        own = scl[ids[r, j]] == c
        # An own-cluster id may only be tier 1; any other id never is.
        tiers[r, j] = draw(st.sampled_from([2, 3, 4])) if own else 1
    elif kind == "float ids with NaN":
        ids = ids.astype(np.float64)
        ids[r, j] = np.nan
    elif kind == "dtype":
        ids = ids.astype(draw(st.sampled_from([bool, np.complex128, object, str])))
    elif kind == "shape":
        ids, tiers = draw(
            st.sampled_from(
                [(ids[:-1], tiers[:-1]), (ids[:, :, None], tiers[:, :, None]),
                 (ids.ravel(), tiers.ravel()), (ids.T, tiers.T), (ids[0], tiers[0])]
            )
        )  # fmt: skip
    else:
        tiers = draw(st.sampled_from([tiers[:, :-1], tiers[:-1], tiers.ravel()]))
    if draw(st.booleans()) and ids.dtype.kind in "iuf":
        ids = torch.from_numpy(np.ascontiguousarray(ids))
    return kind, ids, tiers


@FAST
@given(bad=corrupted_outputs())
def test_validator_reports_every_corrupted_output(bad):
    """A broken output is reported (never ok, never an exception) and named."""
    kind, ids, tiers = bad
    report = _validate(ids, tiers)
    assert not report.ok, kind
    assert all(_named(e, "hard_negatives") or _named(e, "negative_tiers") for e in report.errors)
    with pytest.raises(ValidationError):
        report.raise_if_failed()


@st.composite
def corrupted_contexts(draw) -> Case:
    """One context argument of validate_negatives broken; each must be refused."""
    ctx = _context()
    name = draw(
        st.sampled_from(["pair_indices", "pair_cluster_ids", "source_cluster_ids",
                         "centroid_embeddings", "adjacent_k", "tier_proportions"])
    )  # fmt: skip
    names: tuple[str, ...] = (name,)
    if name == "adjacent_k":
        kind, bad = "bad value", draw(st.sampled_from([-1, 2.5, True, "3", None]))
    elif name == "tier_proportions":
        kind = "bad value"
        bad = draw(st.sampled_from([[2, 2, 1], [2, -1, 4, 1], [1.5, 1.5, 1.5, 1.5], "2211"]))
    elif name == "centroid_embeddings":
        kind = draw(st.sampled_from(["nan", "-inf", "zero row", "int", "1-D", "empty"]))
        bad = CORPUS[name].copy()
        row = draw(st.integers(0, C - 1))
        if kind == "nan":
            bad[row, 0] = np.nan
        elif kind == "-inf":
            bad[row, 1] = -np.inf
        elif kind == "zero row":
            bad[row] = 0.0
        elif kind == "int":
            bad = bad.astype(np.int64)
        elif kind == "1-D":
            bad = bad[0]
        else:
            bad = bad[:0]
    else:
        kind = draw(st.sampled_from(["negative", "huge", "float", "bool", "rank", "short"]))
        bad = CORPUS[name].copy()
        row = draw(st.integers(0, len(bad) - 1))
        if kind in ("negative", "huge"):
            upper = S if name == "pair_indices" else C
            value = -1 if kind == "negative" else draw(st.sampled_from([upper, 2**40]))
            if name == "pair_indices":
                bad[row, 1] = value  # column 0 has no bound here: Q is unknown
            else:
                bad[row] = value
        elif kind == "float":
            bad = bad.astype(np.float64)
        elif kind == "bool":
            bad = bad.astype(bool)
        elif kind == "rank":
            bad = bad[None]
        elif name == "source_cluster_ids":
            # S comes from this table: cutting it below a paired source shows up
            # as that pair's source id being out of range.
            bad = bad[: int(CORPUS["pair_indices"][:, 1].max())]
            names = (name, "pair_indices")
        else:
            bad = bad[:-1]
            names = ("pair_indices", "pair_cluster_ids")
    ctx[name] = bad
    return Case(f"{name}: {kind}", ctx, names=names)


@FAST
@given(case=corrupted_contexts())
def test_validator_refuses_a_malformed_context(case):
    res = baseline()
    with pytest.raises((ValueError, TypeError)) as info:
        validate_negatives(res["hard_negatives"], res["negative_tiers"], **case.changes)
    assert_clear_error(info.value, case.names)


@FAST
@given(data=st.data())
def test_validator_context_variants_give_the_plain_report(mmap_dir, data):
    res = baseline()
    changes, plain = {}, {}
    for n in ("pair_indices", "pair_cluster_ids", "source_cluster_ids", "centroid_embeddings"):
        kind = data.draw(st.sampled_from(VARIANTS[n]), label=n)
        changes[n], plain[n] = _variant(n, kind, mmap_dir)
    want = _validate(res["hard_negatives"], res["negative_tiers"], **plain).to_dict()
    ids = data.draw(st.sampled_from(["numpy", "torch", "fortran", "read-only"]), label="ids")
    hn, nt = res["hard_negatives"].numpy(), res["negative_tiers"].numpy()
    if ids == "torch":
        hn, nt = res["hard_negatives"], res["negative_tiers"]
    elif ids == "fortran":
        hn, nt = np.asfortranarray(hn), np.asfortranarray(nt)
    elif ids == "read-only":
        hn, nt = hn.copy(), nt.copy()
        hn.setflags(write=False)
        nt.setflags(write=False)
    assert _validate(hn, nt, **changes).to_dict() == want


# --------------------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "negmine", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )


def _nan_source() -> dict[str, Any]:
    a = CORPUS["source_embeddings"].copy()
    a[11, 2] = np.nan
    return {"source_embeddings": a}


CLI_CASES = [
    # (id, format, changed arrays, extra args, argument an error must name or None)
    ("nan-source", "npy", _nan_source(), [], "source_embeddings"),
    ("float-pair-ids", "jasper", {"pair_indices": CORPUS["pair_indices"].astype(np.float64)},
     [], "pair_indices"),
    ("short-pair-clusters", "npy", {"pair_cluster_ids": CORPUS["pair_cluster_ids"][:-2]},
     [], "pair_cluster_ids"),
    ("n-neg-0", "npy", {}, ["--n-neg", "0"], "n_neg"),
    ("three-proportions", "npy", {}, ["--tier-proportions", "1,2,3"], "tier_proportions"),
    ("benign-containers", "npy",
     {"source_embeddings": CORPUS["source_embeddings"].astype(np.float16),
      "question_embeddings": np.asfortranarray(CORPUS["question_embeddings"].astype(np.float64)),
      "pair_indices": np.asfortranarray(CORPUS["pair_indices"].astype(np.int32)),
      "source_cluster_ids": CORPUS["source_cluster_ids"].astype(np.uint16)},
     ["--tier-proportions", "2,1,2,1", "--adjacent-k", "1"], None),
]  # fmt: skip


def _assert_cli_outcome(tmp: Path, fmt: str, changes: dict, args: list[str], name: str | None):
    data, out = tmp / "data", tmp / "out"
    inputs = _with(**changes)
    save_dataset(data, inputs, format=fmt)
    proc = _cli("mine", str(data), "--out", str(out), "--n-neg", "6", "--quiet", *args)
    if name is None:
        assert proc.returncode == 0, proc.stderr
        res = load_outputs(out)
        tensors = {k: torch.from_numpy(np.asarray(res[k])) for k in res if k != "manifest"}
        cfg = res["manifest"]["config"]
        kw = {
            "n_neg": 6,
            "adjacent_k": cfg["adjacent_k"],
            "tier_proportions": cfg["tier_counts"],
            "seed": cfg["seed"],
        }
        assert_correct(tensors, inputs, kw)
        plain = {
            k: _plain(v).astype(np.float32 if k in EMB else np.int64) for k, v in inputs.items()
        }
        assert_same_result(tensors, mine_negatives(**plain, **kw))
        return
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert f"`{name}" in lines[0], lines[0]
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize(
    ("fmt", "changes", "args", "name"),
    [c[1:] for c in CLI_CASES],
    ids=[c[0] for c in CLI_CASES],
)
def test_cli_bad_input_is_one_named_line_and_no_manifest(tmp_path, fmt, changes, args, name):
    _assert_cli_outcome(tmp_path, fmt, changes, args, name)


def test_cli_non_integer_n_neg_is_one_line(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    save_dataset(data, _with())
    proc = _cli("mine", str(data), "--out", str(out), "--n-neg", "1.5")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "--n-neg" in lines[0] and "1.5" in lines[0]


def test_cli_huge_weights_mine(tmp_path):
    _assert_cli_outcome(tmp_path, "npy", {}, ["--tier-proportions", "1e308,1e308,0,0"], None)
