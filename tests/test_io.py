"""Tests for negmine.io: dataset formats, cluster derivation, .pt loading, atomic writes."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import negmine.io.atomic as natomic
from negmine.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    load_outputs,
    load_pt_tensor,
    save_outputs,
    save_pt_tensor,
)
from negmine.io.datasets import (
    INPUT_NAMES,
    JASPER_FILES,
    Dataset,
    derive_source_clusters,
    load_dataset,
    save_dataset,
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_arrays(seed: int = 0, n_s: int = 12, n_q: int = 5, n_c: int = 3, d: int = 4) -> dict:
    rng = np.random.default_rng(seed)
    n_p = 9
    return {
        "source_embeddings": rng.standard_normal((n_s, d)).astype(np.float32),
        "question_embeddings": rng.standard_normal((n_q, d)).astype(np.float16),
        "centroid_embeddings": rng.standard_normal((n_c, d)),  # float64
        "pair_indices": np.stack(
            [rng.integers(0, n_q, n_p), rng.integers(0, n_s, n_p)], axis=1
        ).astype(np.int32),
        "pair_cluster_ids": rng.integers(0, n_c, n_p),
        "source_cluster_ids": rng.integers(0, n_c, n_s),
    }


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


def reference_clusters(src, cents, pairs, pair_clu) -> list[int]:
    """Brute force: loop over sources, count pairs, scan all centroids in float64."""
    src = np.asarray(src, dtype=np.float64)
    cents = np.asarray(cents, dtype=np.float64)
    out = []
    for s in range(len(src)):
        counts: dict[int, int] = {}
        for (_, ps), c in zip(pairs.tolist(), pair_clu.tolist(), strict=True):
            if ps == s:
                counts[c] = counts.get(c, 0) + 1
        if counts:
            top = max(counts.values())
            out.append(min(c for c, n in counts.items() if n == top))
        else:
            u = src[s] / np.linalg.norm(src[s])
            cos = [float(u @ (v / np.linalg.norm(v))) for v in cents]
            best = max(cos)
            out.append(min(c for c in range(len(cents)) if cos[c] >= best - 1e-9))
    return out


# --------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------


def test_import_does_not_import_torch_or_faiss(tmp_path):
    code = (
        "import sys, negmine.io, negmine.io.datasets; "
        "bad = [m for m in ('torch', 'faiss') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=False)
    assert r.returncode == 0


# --------------------------------------------------------------------------
# dataset round trips
# --------------------------------------------------------------------------


def test_npy_round_trip_is_memory_mapped(tmp_path):
    arrays = make_arrays()
    out = save_dataset(tmp_path / "a" / "b", arrays)
    assert out == tmp_path / "a" / "b"
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.npy" for n in INPUT_NAMES)
    ds = load_dataset(out)
    assert isinstance(ds, Dataset)
    assert ds.format == "npy"
    assert ds.path == out
    assert ds.notes == []
    assert tuple(ds.arrays) == INPUT_NAMES
    for name in INPUT_NAMES:
        got = ds.arrays[name]
        assert isinstance(got, np.memmap), name
        assert not got.flags.writeable
        assert got.dtype == arrays[name].dtype
        np.testing.assert_array_equal(got, arrays[name])
    assert "source_embeddings=float32[12, 4]" in repr(ds)


def test_jasper_round_trip_with_clusters(tmp_path):
    arrays = make_arrays(1)
    save_dataset(tmp_path, arrays, format="jasper")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(JASPER_FILES.values())
    for fname in JASPER_FILES.values():
        assert isinstance(torch.load(tmp_path / fname, weights_only=True), torch.Tensor)
    ds = load_dataset(tmp_path)
    assert ds.format == "jasper"
    assert ds.notes == []
    for name in INPUT_NAMES:
        got = ds.arrays[name]
        assert isinstance(got, np.ndarray)
        assert got.dtype == arrays[name].dtype
        np.testing.assert_array_equal(got, arrays[name])


def test_jasper_without_clusters_derives_them_and_notes_it(tmp_path):
    arrays = make_arrays(2, n_s=30)
    del arrays["source_cluster_ids"]
    save_dataset(tmp_path, arrays, format="jasper")
    assert not (tmp_path / "source_cluster_ids.pt").exists()
    ds = load_dataset(tmp_path)
    want = reference_clusters(
        arrays["source_embeddings"],
        arrays["centroid_embeddings"],
        arrays["pair_indices"],
        arrays["pair_cluster_ids"],
    )
    got = ds.arrays["source_cluster_ids"]
    assert got.dtype == np.int64
    assert got.tolist() == want
    n_paired = len(set(arrays["pair_indices"][:, 1].tolist()))
    assert len(ds.notes) == 1
    note = ds.notes[0]
    assert "derived" in note
    assert f"{n_paired} sources took the majority cluster" in note
    assert f"{30 - n_paired} sources in no pair took the nearest centroid" in note


def test_saving_jasper_without_clusters_removes_stale_file(tmp_path):
    arrays = make_arrays(3)
    save_dataset(tmp_path, arrays, format="jasper")
    del arrays["source_cluster_ids"]
    save_dataset(tmp_path, arrays, format="jasper")
    assert not (tmp_path / "source_cluster_ids.pt").exists()
    assert load_dataset(tmp_path).notes


def test_save_dataset_refuses_other_layout_and_bad_keys(tmp_path):
    arrays = make_arrays()
    save_dataset(tmp_path, arrays, format="npy")
    with pytest.raises(ValueError, match="npy layout"):
        save_dataset(tmp_path, arrays, format="jasper")
    with pytest.raises(ValueError, match="format"):
        save_dataset(tmp_path / "x", arrays, format="parquet")
    with pytest.raises(ValueError, match="unknown keys"):
        save_dataset(tmp_path / "x", {**arrays, "extra": np.zeros(1)})
    partial = dict(arrays)
    del partial["source_cluster_ids"]
    with pytest.raises(ValueError, match="source_cluster_ids"):
        save_dataset(tmp_path / "x", partial, format="npy")
    assert not (tmp_path / "x").exists()


def test_save_dataset_accepts_tensors(tmp_path):
    arrays = make_arrays()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    save_dataset(tmp_path, tensors)
    ds = load_dataset(tmp_path)
    np.testing.assert_array_equal(ds.arrays["pair_indices"], arrays["pair_indices"])


# --------------------------------------------------------------------------
# dataset errors
# --------------------------------------------------------------------------


def test_load_dataset_not_a_directory(tmp_path):
    f = tmp_path / "file.npy"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match="directory") as e:
        load_dataset(f)
    assert str(f) in str(e.value)
    with pytest.raises(ValueError, match="nothing"):
        load_dataset(tmp_path / "missing")


def test_load_dataset_unknown_layout_lists_both(tmp_path):
    with pytest.raises(ValueError) as e:
        load_dataset(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg
    for fname in ("source_embeddings.npy", "pair_cluster_ids.npy", "source_embs.pt"):
        assert fname in msg
    assert "pair_cluster_id.pt" in msg


@pytest.mark.parametrize("fmt", ["npy", "jasper"])
def test_load_dataset_names_missing_files(tmp_path, fmt):
    save_dataset(tmp_path, make_arrays(), format=fmt)
    gone = {"npy": ["pair_indices.npy", "centroid_embeddings.npy"], "jasper": ["pair_index.pt"]}
    for g in gone[fmt]:
        (tmp_path / g).unlink()
    with pytest.raises(ValueError) as e:
        load_dataset(tmp_path)
    msg = str(e.value)
    assert all(g in msg.split(";")[1] for g in gone[fmt])
    assert "source_embeddings.npy without" not in msg


def test_npy_object_array_refused(tmp_path):
    save_dataset(tmp_path, make_arrays())
    np.save(tmp_path / "pair_indices.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"pair_indices\.npy"):
        load_dataset(tmp_path)


# --------------------------------------------------------------------------
# cluster derivation
# --------------------------------------------------------------------------


@st.composite
def derivation_cases(draw):
    n_s = draw(st.integers(1, 20))
    n_c = draw(st.integers(1, 6))
    d = draw(st.integers(1, 3))
    vec = st.lists(st.integers(-2, 2), min_size=d, max_size=d).filter(any)
    src = np.array(draw(st.lists(vec, min_size=n_s, max_size=n_s)), dtype=np.float32)
    cents = np.array(draw(st.lists(vec, min_size=n_c, max_size=n_c)), dtype=np.float32)
    n_p = draw(st.integers(0, 30))
    # Sources drawn from a prefix leave the rest in no pair.
    hi = draw(st.integers(0, n_s - 1))
    pair_src = draw(st.lists(st.integers(0, hi), min_size=n_p, max_size=n_p))
    pair_clu = draw(st.lists(st.integers(0, n_c - 1), min_size=n_p, max_size=n_p))
    pair_q = draw(st.lists(st.integers(0, 3), min_size=n_p, max_size=n_p))
    pairs = np.array([pair_q, pair_src], dtype=np.int64).T.reshape(n_p, 2)
    return src, cents, pairs, np.array(pair_clu, dtype=np.int64)


def _unambiguous(src, cents, pairs) -> bool:
    """No cosine lies just below the best one (only exact ties or clear gaps)."""
    paired = set(pairs[:, 1].tolist())
    c = cents / np.linalg.norm(cents, axis=1, keepdims=True)
    for s in range(len(src)):
        if s in paired:
            continue
        cos = (src[s] / np.linalg.norm(src[s])) @ c.T
        gap = cos.max() - cos
        if ((gap > 1e-9) & (gap < 1e-4)).any():
            return False
    return True


@settings(max_examples=100, deadline=None, database=None)
@given(derivation_cases())
def test_derivation_matches_brute_force(case):
    src, cents, pairs, pair_clu = case
    assume(_unambiguous(src.astype(np.float64), cents.astype(np.float64), pairs))
    got = derive_source_clusters(src, cents, pairs, pair_clu)
    assert got.source_cluster_ids.dtype == np.int64
    assert got.source_cluster_ids.tolist() == reference_clusters(src, cents, pairs, pair_clu)
    n_paired = len(set(pairs[:, 1].tolist()))
    assert got.n_majority == n_paired
    assert got.n_nearest == len(src) - n_paired
    ties = 0
    for s in set(pairs[:, 1].tolist()):
        counts = np.bincount(pair_clu[pairs[:, 1] == s])
        ties += int((counts == counts.max()).sum() > 1)
    assert got.n_majority_ties == ties


def test_majority_tie_goes_to_smallest_cluster():
    src = np.ones((3, 2), dtype=np.float32)
    cents = np.eye(2, dtype=np.float32)[[0, 1, 0, 1, 0]]
    pairs = np.array([[0, 0], [1, 0], [2, 0], [0, 1], [0, 1], [0, 2]])
    clu = np.array([4, 1, 1, 3, 2, 3])
    got = derive_source_clusters(src, cents, pairs, clu)
    # source 0: clusters 4, 1, 1 -> 1; source 1: 3 and 2 tie -> 2; source 2: 3
    assert got.source_cluster_ids.tolist() == [1, 2, 3]
    assert (got.n_majority, got.n_majority_ties, got.n_nearest) == (3, 1, 0)


def test_nearest_centroid_tie_larger_than_search_width():
    # 12 identical centroids (more than one FAISS search returns), placed after
    # three other directions: the tie must still go to the smallest id, 3.
    d = 4
    others = np.eye(d, dtype=np.float32)[:3]
    dup = np.tile(np.array([[0, 0, 0, 2]], dtype=np.float32), (12, 1))
    cents = np.concatenate([others, dup])
    src = np.array([[0, 0, 0, 5], [0.1, 0, 0, 1], [1, 0, 0, 0]], dtype=np.float32)
    pairs = np.zeros((0, 2), dtype=np.int64)
    got = derive_source_clusters(src, cents, pairs, np.zeros(0, dtype=np.int64))
    assert got.source_cluster_ids.tolist() == [3, 3, 0]
    assert got.n_nearest == 3


def test_nearest_centroid_near_tie_goes_to_smallest_id():
    # Twelve centroids whose cosines with the source rise with the id but stay
    # within 1e-6 of each other: they count as tied, so the smallest id wins,
    # although a plain top-1 search would return a larger one.
    d = 4
    t = np.arange(12) * 6e-6
    near = np.zeros((12, d))
    near[:, 0] = t
    near[:, 3] = 1.0
    cents = np.concatenate([np.eye(d)[:3], near]).astype(np.float32)
    src = np.array([[1.0, 0, 0, 100.0]], dtype=np.float32)
    cos = (cents / np.linalg.norm(cents, axis=1, keepdims=True)) @ (src[0] / np.linalg.norm(src[0]))
    assert cos.argmax() > 3  # the closest centroid is not the smallest tied id
    assert cos.max() - cos[3] < 1e-6
    got = derive_source_clusters(src, cents, np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    assert got.source_cluster_ids.tolist() == [3]


def test_derivation_reads_only_unpaired_rows_and_checks_them():
    src = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    cents = np.eye(2, dtype=np.float32)
    # the zero row is paired, so it is never normalised
    got = derive_source_clusters(src, cents, np.array([[0, 0]]), np.array([1]))
    assert got.source_cluster_ids.tolist() == [1, 0]
    with pytest.raises(ValueError, match="row 0"):
        derive_source_clusters(src, cents, np.zeros((0, 2), np.int64), np.zeros(0, np.int64))


def test_derivation_checks_what_it_needs():
    src = np.ones((3, 2), dtype=np.float32)
    cents = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match=r"pair_indices\[:, 1\]"):
        derive_source_clusters(src, cents, np.array([[0, 3]]), np.array([0]))
    with pytest.raises(ValueError, match="pair_cluster_ids"):
        derive_source_clusters(src, cents, np.array([[0, 1]]), np.array([2]))
    with pytest.raises(ValueError, match="one entry per pair"):
        derive_source_clusters(src, cents, np.array([[0, 1]]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[P, 2\]"):
        derive_source_clusters(src, cents, np.array([0, 1]), np.array([0]))


def test_jasper_derivation_error_names_file(tmp_path):
    arrays = make_arrays()
    del arrays["source_cluster_ids"]
    arrays["pair_cluster_ids"] = arrays["pair_cluster_ids"] + 100
    save_dataset(tmp_path, arrays, format="jasper")
    with pytest.raises(ValueError, match=r"pair_cluster_id\.pt"):
        load_dataset(tmp_path)


# --------------------------------------------------------------------------
# .pt files
# --------------------------------------------------------------------------


class Opaque:
    pass


class Trap:
    """Unpickling this runs a function: it would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float32, np.float16, np.bool_])
def test_pt_round_trip(tmp_path, dtype):
    a = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    save_pt_tensor(tmp_path / "a.pt", a[:, ::2])  # non-contiguous input
    t = torch.load(tmp_path / "a.pt", weights_only=True)
    assert isinstance(t, torch.Tensor)
    got = load_pt_tensor(tmp_path / "a.pt")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, a[:, ::2])
    assert leftovers(tmp_path) == []


def test_pt_from_readonly_memmap_and_scalar(tmp_path):
    np.save(tmp_path / "m.npy", np.arange(5))
    mm = np.load(tmp_path / "m.npy", mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_pt_tensor(tmp_path / "m.pt", mm)
    np.testing.assert_array_equal(load_pt_tensor(tmp_path / "m.pt"), np.arange(5))
    save_pt_tensor(tmp_path / "s.pt", np.array(7))
    assert load_pt_tensor(tmp_path / "s.pt").shape == ()


def test_pt_dict_refused(tmp_path):
    f = tmp_path / "d.pt"
    torch.save({"a": torch.zeros(2), "b": torch.ones(1)}, f)
    with pytest.raises(ValueError, match="exactly one tensor") as e:
        load_pt_tensor(f)
    assert str(f) in str(e.value)
    assert "weights_only" in str(e.value)
    assert "'a'" in str(e.value)


def test_pt_list_refused(tmp_path):
    f = tmp_path / "l.pt"
    torch.save([torch.zeros(2)], f)
    with pytest.raises(ValueError, match="exactly one tensor"):
        load_pt_tensor(f)


def test_pt_custom_object_refused(tmp_path):
    f = tmp_path / "o.pt"
    torch.save(Opaque(), f)
    with pytest.raises(ValueError, match="weights_only") as e:
        load_pt_tensor(f)
    msg = str(e.value)
    assert str(f) in msg
    assert "plain tensors" in msg
    assert "arbitrary code" in msg


def test_pt_plain_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "ran"
    f = tmp_path / "p.pt"
    with open(f, "wb") as fh:
        pickle.dump(Trap(marker), fh)
    with pytest.raises(ValueError, match="weights_only"):
        load_pt_tensor(f)
    assert not marker.exists()


def test_pt_junk_and_missing(tmp_path):
    f = tmp_path / "junk.pt"
    f.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match=r"torch\.save") as e:
        load_pt_tensor(f)
    assert str(f) in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_pt_tensor(tmp_path / "nope.pt")


def test_jasper_dict_file_refused_on_load(tmp_path):
    save_dataset(tmp_path, make_arrays(), format="jasper")
    torch.save({"x": torch.zeros(3)}, tmp_path / "question_embs.pt")
    with pytest.raises(ValueError, match=r"question_embs\.pt"):
        load_dataset(tmp_path)


def test_save_pt_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="dtype"):
        save_pt_tensor(tmp_path / "x.pt", np.array(["a", "b"], dtype=object))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------


def test_atomic_path_keeps_old_file_when_body_raises(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"old")
    seen = []
    with pytest.raises(RuntimeError, match="boom"), atomic_path(f) as tmp:
        seen.append(tmp)
        tmp.write_bytes(b"half-written")
        raise RuntimeError("boom")
    assert f.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    assert not seen[0].exists()


def test_atomic_path_replaces_on_success(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"old")
    with atomic_path(f) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".data.bin.tmp-{os.getpid()}-")
        tmp.write_bytes(b"new")
        assert f.read_bytes() == b"old"
    assert f.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.bin"]


def test_atomic_path_body_that_writes_nothing(tmp_path):
    f = tmp_path / "data.bin"
    f.write_bytes(b"old")
    with pytest.raises(FileNotFoundError), atomic_path(f):
        pass
    assert f.read_bytes() == b"old"


def test_atomic_path_needs_existing_directory(tmp_path):
    with (
        pytest.raises(FileNotFoundError, match="does not exist"),
        atomic_path(tmp_path / "no" / "f"),
    ):
        pass


def test_atomic_write_bytes_and_json(tmp_path):
    atomic_write_bytes(tmp_path / "b", b"\x00\x01")
    assert (tmp_path / "b").read_bytes() == b"\x00\x01"
    obj = {"z": 1, "a": [np.int64(3), np.float32(0.5)], "p": tmp_path, "arr": np.arange(2)}
    atomic_write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_text()
    assert text.endswith("}\n")
    assert text.index('"a"') < text.index('"z"')
    assert '\n  "a": [' in text
    assert json.loads(text) == {"z": 1, "a": [3, 0.5], "p": str(tmp_path), "arr": [0, 1]}
    with pytest.raises(ValueError, match="JSON"):
        atomic_write_json(tmp_path / "m.json", {"x": float("nan")})
    with pytest.raises(TypeError, match="JSON"):
        atomic_write_json(tmp_path / "m.json", {"x": object()})
    assert json.loads((tmp_path / "m.json").read_text())["z"] == 1
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------


def make_outputs(seed: int = 0, scores: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    out = {
        "hard_negatives": rng.integers(0, 100, (6, 4)).astype(np.int32),
        "negative_tiers": rng.integers(0, 3, (6, 4)).astype(np.int8),
    }
    if scores:
        out["negative_scores"] = rng.random((6, 4), dtype=np.float32)
    return out


def test_outputs_round_trip_int64(tmp_path):
    d = tmp_path / "deep" / "out"
    tensors = make_outputs()
    assert save_outputs(d, tensors, {"k": 4, "seed": np.int64(0)}) == d
    for name in ("hard_negatives", "negative_tiers"):
        t = torch.load(d / f"{name}.pt", weights_only=True)
        assert isinstance(t, torch.Tensor)
        assert t.dtype == torch.int64
    assert torch.load(d / "negative_scores.pt", weights_only=True).dtype == torch.float32
    got = load_outputs(d)
    assert set(got) == {"hard_negatives", "negative_tiers", "negative_scores", "manifest"}
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v)
    assert got["hard_negatives"].dtype == np.int64
    assert got["manifest"]["k"] == 4
    assert got["manifest"]["tensor_files"]["hard_negatives"] == {
        "file": "hard_negatives.pt",
        "dtype": "int64",
        "shape": [6, 4],
    }
    assert leftovers(d) == []


def test_manifest_is_written_last(tmp_path, monkeypatch):
    order = []
    real_replace = os.replace

    def spy(src, dst):
        order.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(natomic.os, "replace", spy)
    save_outputs(tmp_path, make_outputs(), {"k": 4})
    assert order[-1] == "manifest.json"
    assert sorted(order[:-1]) == ["hard_negatives.pt", "negative_scores.pt", "negative_tiers.pt"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert all(mtimes["manifest.json"] >= t for t in mtimes.values())


def test_unsaveable_tensor_leaves_no_manifest(tmp_path):
    tensors = make_outputs()
    tensors["negative_scores"] = np.array([object()] * 3, dtype=object)
    with pytest.raises(TypeError):
        save_outputs(tmp_path, tensors, {})
    assert not (tmp_path / "manifest.json").exists()
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="incomplete or not a negmine output directory"):
        load_outputs(tmp_path)


def test_failure_mid_write_keeps_the_old_run(tmp_path, monkeypatch):
    out = tmp_path / "out"
    save_outputs(out, make_outputs(0), {"run": 1})
    calls = []
    real_save = torch.save

    def flaky(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", flaky)
    with pytest.raises(OSError, match="disk full"):
        save_outputs(out, make_outputs(1), {"run": 2}, overwrite=True)
    # The new run never became visible: the old one is complete and untouched,
    # and no staging directory is left beside it.
    old = load_outputs(out)
    assert old["manifest"]["run"] == 1
    for key, val in make_outputs(0).items():
        assert np.array_equal(old[key], np.asarray(val))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_is_explicit_and_foreign_files_are_kept(tmp_path):
    out = tmp_path / "out"
    save_outputs(out, make_outputs(0), {"run": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_outputs(out, make_outputs(1), {"run": 2})
    save_outputs(out, make_outputs(1), {"run": 2}, overwrite=True)
    assert load_outputs(out)["manifest"]["run"] == 2
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        save_outputs(out, make_outputs(0), {"run": 3}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_load_outputs_refuses_bad_dirs(tmp_path):
    with pytest.raises(ValueError, match="incomplete or not a negmine output directory") as e:
        load_outputs(tmp_path)
    assert str(tmp_path) in str(e.value)
    assert "manifest.json is missing" in str(e.value)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_outputs(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_outputs(tmp_path)
    with pytest.raises(ValueError, match="nothing"):
        load_outputs(tmp_path / "absent")


def test_load_outputs_without_record_uses_known_names(tmp_path):
    t = make_outputs(scores=False)
    for k, v in t.items():
        save_pt_tensor(tmp_path / f"{k}.pt", v)
    atomic_write_json(tmp_path / "manifest.json", {"k": 4})
    got = load_outputs(tmp_path)
    assert set(got) == {"hard_negatives", "negative_tiers", "manifest"}
    (tmp_path / "negative_tiers.pt").unlink()
    with pytest.raises(ValueError, match=r"negative_tiers\.pt"):
        load_outputs(tmp_path)


def test_load_outputs_detects_changed_or_missing_tensors(tmp_path):
    save_outputs(tmp_path, make_outputs(), {})
    save_pt_tensor(tmp_path / "negative_tiers.pt", np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="changed after the manifest"):
        load_outputs(tmp_path)
    (tmp_path / "negative_tiers.pt").unlink()
    with pytest.raises(ValueError, match=r"negative_tiers\.pt"):
        load_outputs(tmp_path)


def test_overwrite_removes_stale_outputs_and_respects_flag(tmp_path):
    save_outputs(tmp_path, make_outputs(0), {"run": 1})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_outputs(tmp_path, make_outputs(1), {"run": 2}, overwrite=False)
    assert load_outputs(tmp_path)["manifest"]["run"] == 1
    new = make_outputs(1, scores=False)
    save_outputs(tmp_path, new, {"run": 2}, overwrite=True)
    assert not (tmp_path / "negative_scores.pt").exists()
    got = load_outputs(tmp_path)
    assert "negative_scores" not in got
    np.testing.assert_array_equal(got["hard_negatives"], new["hard_negatives"])
    assert got["manifest"]["run"] == 2


def test_save_outputs_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="file stems"):
        save_outputs(tmp_path, {"../x": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="file stems"):
        save_outputs(tmp_path, {"manifest": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="tensor_files"):
        save_outputs(tmp_path, make_outputs(), {"tensor_files": 1})
    with pytest.raises(ValueError, match="JSON"):
        save_outputs(tmp_path, make_outputs(), {"bad": float("inf")})
    assert list(tmp_path.iterdir()) == []
