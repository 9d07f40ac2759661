"""The on-disk index store: checksums before FAISS, precise mismatch errors,
atomic directory replacement under concurrent readers, memory-mapping."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

import negmine.index.store as nstore
import negmine.io.fs as nfs
from negmine.index import (
    INDEX_NAME,
    MANIFEST_NAME,
    MMAP_FACTORIES,
    SourceIndex,
    fingerprint,
    read_manifest,
)

REPO = Path(__file__).resolve().parents[1]
D = 32


def _sources(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def _leftovers(parent: Path) -> list[str]:
    return sorted(n for n in os.listdir(parent) if ".tmp-" in n or ".old-" in n)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def src() -> np.ndarray:
    return _sources(2000, 0)


@pytest.fixture
def saved(tmp_path, src) -> Path:
    return SourceIndex.build(src).save(tmp_path / "idx")


# --------------------------------------------------------------------------
# round trip and memory-mapping
# --------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["flat", "IVF16,Flat", "HNSW16"])
def test_round_trip_with_and_without_mmap(tmp_path, src, spec):
    built = SourceIndex.build(src, spec)
    out = built.save(tmp_path / "idx")
    assert sorted(os.listdir(out)) == [INDEX_NAME, MANIFEST_NAME]
    manifest = read_manifest(out)
    assert manifest["index_bytes"] == (out / INDEX_NAME).stat().st_size
    assert manifest["index_sha256"] == _digest(out / INDEX_NAME)
    assert manifest == built.manifest
    q = _unit(_sources(20, 7))
    want_scores, want_ids = built.search(q, 10)
    for mmap in (False, True):
        loaded = SourceIndex.load(out, mmap=mmap)
        assert loaded.mmapped is mmap
        assert loaded.manifest == manifest
        scores, ids = loaded.search(q, 10)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_array_equal(scores, want_scores)
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
@pytest.mark.parametrize(
    ("spec", "family"), [("flat", "Flat"), ("IVF16,Flat", "IVF<n>,Flat"), ("HNSW16", "HNSW<M>")]
)
def test_mmap_really_maps_the_file(tmp_path, src, spec, family):
    assert family in MMAP_FACTORIES
    out = SourceIndex.build(src, spec).save(tmp_path / "idx")
    target = str((out / INDEX_NAME).resolve())

    def mapped() -> bool:
        with open("/proc/self/maps") as f:
            return any(line.rstrip().endswith(target) for line in f)

    in_ram = SourceIndex.load(out)
    assert not mapped()
    on_disk = SourceIndex.load(out, mmap=True)
    assert mapped()
    q = _unit(src[:5])
    np.testing.assert_array_equal(in_ram.search(q, 3)[1], on_disk.search(q, 3)[1])


def test_mmapped_flat_vectors_are_a_read_only_view(saved, src):
    idx = SourceIndex.load(saved, mmap=True)
    vecs = idx.vectors()
    assert not vecs.flags.writeable
    np.testing.assert_allclose(vecs, _unit(src), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="read-only"):
        vecs[0, 0] = 0.0


# --------------------------------------------------------------------------
# damaged files: ValueError naming the file, before FAISS parses it
# --------------------------------------------------------------------------


def test_truncated_index_file_is_refused_before_faiss(saved):
    f = saved / INDEX_NAME
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    for mmap in (False, True):
        for verify in (True, False):  # the size check runs even without the hash
            with pytest.raises(ValueError) as ei:
                SourceIndex.load(saved, mmap=mmap, verify=verify)
            msg = str(ei.value)
            assert str(f) in msg
            assert f"size {size // 2} bytes vs expected {size}" in msg


def test_flipped_byte_is_a_sha256_mismatch(saved, src):
    f = saved / INDEX_NAME
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    bad = hashlib.sha256(data).hexdigest()
    for mmap in (False, True):
        with pytest.raises(ValueError) as ei:
            SourceIndex.load(saved, mmap=mmap)
        msg = str(ei.value)
        assert str(f) in msg and "sha256 mismatch" in msg and bad in msg
    # What the checksum guards against: FAISS itself loads the damaged vector.
    unchecked = SourceIndex.load(saved, verify=False)
    assert not np.allclose(unchecked.vectors(), _unit(src), atol=1e-6)


def test_missing_index_file(saved):
    (saved / INDEX_NAME).unlink()
    with pytest.raises(ValueError) as ei:
        SourceIndex.load(saved)
    assert str(saved) in str(ei.value) and f"without {INDEX_NAME}" in str(ei.value)


def test_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="nothing at that path"):
        SourceIndex.load(tmp_path / "nope")


def _garbage(m: dict) -> bytes:
    return b"\x00{not json"


def _list(m: dict) -> bytes:
    return b"[1, 2]"


def _without(key: str):
    def edit(m: dict) -> bytes:
        return json.dumps({k: v for k, v in m.items() if k != key}).encode()

    return edit


def _with(key: str, value):
    def edit(m: dict) -> bytes:
        return json.dumps(dict(m, **{key: value})).encode()

    return edit


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_garbage, "must hold valid JSON"),
        (_list, "must hold a JSON object; got a JSON list"),
        (_without("fingerprint"), "a manifest without fingerprint"),
        (_without("index_sha256"), "a manifest without index_sha256"),
        (_with("format_version", 99), "must have format_version 1; got format_version 99"),
        (_with("metric", "l2"), "got metric 'l2'"),
        (_with("ntotal", -3), "ntotal=-3"),
        (_with("index_sha256", "abc"), "index_sha256='abc'"),
    ],
)
def test_bad_manifest(saved, edit, problem):
    mpath = saved / MANIFEST_NAME
    mpath.write_bytes(edit(json.loads(mpath.read_text())))
    for call in (SourceIndex.load, read_manifest):
        with pytest.raises(ValueError) as ei:
            call(saved)
        assert str(mpath) in str(ei.value)
        assert problem in str(ei.value)


def test_missing_manifest(saved):
    (saved / MANIFEST_NAME).unlink()
    for call in (SourceIndex.load, read_manifest):
        with pytest.raises(ValueError) as ei:
            call(saved)
        assert str(saved) in str(ei.value) and f"without {MANIFEST_NAME}" in str(ei.value)


def test_manifest_without_index_bytes_still_loads_and_is_hashed(saved):
    mpath = saved / MANIFEST_NAME
    m = json.loads(mpath.read_text())
    del m["index_bytes"]
    mpath.write_text(json.dumps(m))
    assert SourceIndex.load(saved).ntotal == m["ntotal"]
    with open(saved / INDEX_NAME, "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        SourceIndex.load(saved)


_LOAD_ALL = """
import sys
from negmine.index import SourceIndex

for path in sys.argv[1:]:
    for mmap in (False, True):
        try:
            SourceIndex.load(path, mmap=mmap)
        except ValueError as e:
            print("ValueError:", e)
        else:
            sys.exit(3)
"""


def test_damaged_files_fail_cleanly_in_a_fresh_process(tmp_path, src):
    trunc = SourceIndex.build(src).save(tmp_path / "trunc")
    f = trunc / INDEX_NAME
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    header = SourceIndex.build(src).save(tmp_path / "header")
    data = bytearray((header / INDEX_NAME).read_bytes())
    data[8] ^= 0x40  # inside the ntotal field FAISS would size its read from
    (header / INDEX_NAME).write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_ALL, str(trunc), str(header)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    assert all(str(f) in line and "size" in line for line in lines[:2])
    assert all("sha256 mismatch" in line for line in lines[2:])


# --------------------------------------------------------------------------
# loading against other embeddings
# --------------------------------------------------------------------------


def test_other_embeddings_name_both_fingerprints(saved, src):
    idx = SourceIndex.load(saved)
    ours = fingerprint(src)
    assert idx.manifest["fingerprint"] == ours
    idx.check_matches(ours, D)
    other = fingerprint(src * 1.5 + 0.1)
    with pytest.raises(ValueError) as ei:
        idx.check_matches(other, D)
    assert (
        f"index built from sources with fingerprint {ours}; "
        f"the sources in use have fingerprint {other}"
    ) in str(ei.value)
    assert str(ei.value).startswith("`index` must be built from the `source_embeddings` in use")


def test_other_width_names_both_dimensions(saved, src):
    idx = SourceIndex.load(saved)
    narrow = src[:, :16]
    with pytest.raises(ValueError) as ei:
        idx.check_matches(fingerprint(narrow), 16)
    assert "d=32" in str(ei.value) and "d=16" in str(ei.value)


def test_other_metric_is_refused(src):
    built = SourceIndex.build(src)
    fp = fingerprint(src)
    relabelled = SourceIndex(built.index, dict(built.manifest, metric="l2"))
    with pytest.raises(ValueError, match="inner-product metric"):
        relabelled.check_matches(fp, D)
    l2 = faiss.IndexFlatL2(D)
    l2.add(_unit(src))
    with pytest.raises(ValueError, match="inner-product metric"):
        SourceIndex(l2, dict(built.manifest)).check_matches(fp, D)


# --------------------------------------------------------------------------
# atomic save and rebuild
# --------------------------------------------------------------------------


def test_overwrite_false_refuses_an_existing_path(saved, src):
    before = _digest(saved / INDEX_NAME)
    with pytest.raises(FileExistsError) as ei:
        SourceIndex.build(_sources(500, 3)).save(saved)  # overwrite=False by default
    assert str(saved) in str(ei.value) and "overwrite=True" in str(ei.value)
    assert _digest(saved / INDEX_NAME) == before
    assert _leftovers(saved.parent) == []


def test_save_never_replaces_a_directory_with_other_files(tmp_path, src):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        SourceIndex.build(src).save(data, overwrite=True)
    assert (data / "notes.txt").read_text() == "keep me"
    assert _leftovers(tmp_path) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    SourceIndex.build(src).save(empty)
    assert SourceIndex.load(empty).ntotal == len(src)


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_nothing_behind(tmp_path, src, monkeypatch, existing):
    out = tmp_path / "idx"
    if existing:
        SourceIndex.build(src).save(out)
        before = _digest(out / INDEX_NAME)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        SourceIndex.build(_sources(500, 3)).save(out, overwrite=True)
    assert _leftovers(tmp_path) == []
    if existing:
        assert _digest(out / INDEX_NAME) == before
        assert SourceIndex.load(out).ntotal == len(src)
    else:
        assert not out.exists()


def test_rebuild_uses_the_atomic_exchange(tmp_path, src, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    if not nfs.renameat2(a, b, nfs.RENAME_EXCHANGE):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    calls = []
    real = nfs.renameat2

    def spy(s, d, flags):
        ok = real(s, d, flags)
        calls.append((flags, ok))
        return ok

    monkeypatch.setattr(nfs, "renameat2", spy)
    out = tmp_path / "idx"
    SourceIndex.build(src).save(out)
    SourceIndex.build(_sources(700, 5)).save(out, overwrite=True)
    assert calls == [(nfs.RENAME_NOREPLACE, True), (nfs.RENAME_EXCHANGE, True)]
    assert SourceIndex.load(out).ntotal == 700
    assert _leftovers(tmp_path) == []


def test_rebuild_without_exchange_falls_back_to_two_renames(tmp_path, src, monkeypatch):
    monkeypatch.setattr(nfs, "renameat2", lambda s, d, flags: False)
    out = tmp_path / "idx"
    SourceIndex.build(src).save(out)
    SourceIndex.build(_sources(700, 5)).save(out, overwrite=True)
    assert SourceIndex.load(out).ntotal == 700
    assert _leftovers(tmp_path) == []

    # If the second rename fails, the old index is put back.
    real_rename = os.rename

    def failing(s, d):
        if ".tmp-" in os.fspath(s):
            raise OSError("rename refused")
        real_rename(s, d)

    monkeypatch.setattr(nfs.os, "rename", failing)
    with pytest.raises(OSError, match="rename refused"):
        SourceIndex.build(_sources(900, 6)).save(out, overwrite=True)
    monkeypatch.setattr(nfs.os, "rename", real_rename)
    assert SourceIndex.load(out).ntotal == 700
    assert _leftovers(tmp_path) == []


def test_load_rides_out_the_fallback_window(saved):
    # Mid-way through the two-rename fallback the path is missing and its old
    # copy sits next to it, set aside by a live writer (here: this process);
    # load waits for the new directory to arrive.
    old = saved.parent / f".{saved.name}.old-{os.getpid()}-abcd"
    os.rename(saved, old)
    back = threading.Timer(0.3, os.rename, (old, saved))
    back.start()
    t0 = time.monotonic()
    assert SourceIndex.load(saved).ntotal == 2000
    back.join()
    assert time.monotonic() - t0 >= 0.25
    # Without such a sibling a missing path fails at once.
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="nothing at that path"):
        SourceIndex.load(saved.parent / "other")
    assert time.monotonic() - t0 < 0.2


def test_open_index_survives_a_rebuild_of_its_directory(saved, src):
    old = SourceIndex.load(saved, mmap=True)
    q = _unit(src[:8])
    # Replaces the directory and deletes the old files.
    SourceIndex.build(_sources(700, 5)).save(saved, overwrite=True)
    _, ids = old.search(q, 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(8))
    assert SourceIndex.load(saved).ntotal == 700


@pytest.mark.skipif(os.open not in os.supports_dir_fd, reason="needs directory descriptors")
def test_load_racing_a_rebuild_starts_over(saved, src, monkeypatch):
    other = _sources(700, 5)
    real_open_in = nstore._open_in
    swapped = []

    def racing(dfd, p, name):
        if name == INDEX_NAME and not swapped:
            # The manifest of the old generation was read; now the directory
            # is replaced and the old one deleted before index.faiss opens.
            swapped.append(True)
            SourceIndex.build(other).save(saved, overwrite=True)
        return real_open_in(dfd, p, name)

    monkeypatch.setattr(nstore, "_open_in", racing)
    idx = SourceIndex.load(saved)
    assert swapped
    assert idx.ntotal == 700 == idx.manifest["ntotal"]
    assert idx.manifest["fingerprint"] == fingerprint(other)


_READER = """
import json, os, sys, time
import numpy as np
from negmine.index import SourceIndex

path, ready, stop, spec = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sets = {}
for n, (fp, seed) in spec.items():
    x = np.random.default_rng(seed).standard_normal((int(n), 32)).astype(np.float32)
    sets[int(n)] = (fp, x[:8] / np.linalg.norm(x[:8], axis=1, keepdims=True))
seen = {n: 0 for n in sets}
t0 = time.monotonic()
while True:
    last = os.path.exists(stop)
    idx = SourceIndex.load(path, mmap=True)
    n = idx.ntotal
    if n not in sets or idx.manifest["ntotal"] != n or idx.manifest["fingerprint"] != sets[n][0]:
        print("inconsistent index:", n, idx.manifest, file=sys.stderr)
        sys.exit(1)
    _, ids = idx.search(sets[n][1], 1)
    if not np.array_equal(ids[:, 0], np.arange(8)):
        print("wrong neighbours:", ids[:, 0], file=sys.stderr)
        sys.exit(1)
    seen[n] += 1
    if not os.path.exists(ready):
        open(ready, "w").close()
    elapsed = time.monotonic() - t0
    if (last and elapsed > 2.0) or elapsed > 60:
        break
print(json.dumps(seen))
"""


def test_rebuild_while_readers_load(tmp_path):
    seeds = {2000: 11, 3000: 12}
    sets = {n: _sources(n, s) for n, s in seeds.items()}
    spec = json.dumps({n: [fingerprint(x), seeds[n]] for n, x in sets.items()})
    out = tmp_path / "idx"
    SourceIndex.build(sets[2000]).save(out)
    stop = tmp_path / "stop"
    readys = [tmp_path / f"ready-{i}" for i in range(3)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(out), str(r), str(stop), spec],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for r in readys
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in readys):
            assert time.monotonic() < deadline, "readers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.02)
        for i in range(5):
            SourceIndex.build(sets[3000 if i % 2 == 0 else 2000]).save(out, overwrite=True)
            time.sleep(0.15)
        stop.touch()
        results = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (stdout, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr
        seen = json.loads(stdout.strip().splitlines()[-1])
        assert seen["2000"] > 0 and seen["3000"] > 0, seen
    assert SourceIndex.load(out).ntotal == 3000
    assert _leftovers(tmp_path) == []
