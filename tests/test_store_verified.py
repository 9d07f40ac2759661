"""The record of verified index files: an unchanged file is not hashed again, a changed one is.

The record trusts (device, inode, size, mtime_ns, ctime_ns) as ``fstat`` gives
them. These tests change the file's content while keeping as many of those as
a user can keep (size, inode, even the modification time via ``os.utime``) and
expect the hash to run again and refuse the file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import negmine.index.verify as nverify
from negmine.index import INDEX_NAME, MANIFEST_NAME, VERIFIED_NAME, SourceIndex

D = 16


def _sources(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)


@pytest.fixture
def hashes(monkeypatch) -> list[int]:
    """Counts the hashes of index files (wraps negmine's own hashing function)."""
    calls: list[int] = []
    real = nverify.sha256_fd

    def counting(fd: int) -> str:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(nverify, "sha256_fd", counting)
    return calls


def _settled(tmp_path: Path, hashes: list[int]) -> Path:
    """A saved index whose file is older than the racy window; hashes counted from here."""
    path = SourceIndex.build(_sources(3000, 0)).save(tmp_path / "idx")
    time.sleep(nverify.RACY_SECONDS + 0.05)
    hashes.clear()
    return path


def _record(path: Path) -> dict:
    return json.loads((path / VERIFIED_NAME).read_text())


def _flip_in_place(f: Path, keep_mtime: bool) -> os.stat_result:
    before = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(before.st_size - 8)
        b = fh.read(1)
        fh.seek(before.st_size - 8)
        fh.write(bytes([b[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    return before


def test_reopening_an_unchanged_file_skips_the_hash(tmp_path, hashes):
    path = _settled(tmp_path, hashes)
    first = SourceIndex.load(path)
    assert len(hashes) == 1
    rec = _record(path)
    st = (path / INDEX_NAME).stat()
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert rec["sha256"] == manifest["index_sha256"]
    assert (rec["ino"], rec["size"], rec["mtime_ns"], rec["ctime_ns"]) == (
        st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
    )  # fmt: skip
    again = SourceIndex.load(path, mmap=True)
    assert len(hashes) == 1  # not hashed again
    q = first.vectors()[:5]
    np.testing.assert_array_equal(again.search(q, 1)[1][:, 0], np.arange(5))


def test_a_byte_flipped_in_place_with_the_mtime_restored_is_refused(tmp_path, hashes):
    path = _settled(tmp_path, hashes)
    SourceIndex.load(path)
    rec = _record(path)
    f = path / INDEX_NAME
    _flip_in_place(f, keep_mtime=True)
    st = f.stat()
    # Same inode, size and modification time: only the status-change time
    # (which no user call can set back) tells the change.
    assert (st.st_ino, st.st_size, st.st_mtime_ns) == (rec["ino"], rec["size"], rec["mtime_ns"])
    assert st.st_ctime_ns != rec["ctime_ns"]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        SourceIndex.load(path)
    assert len(hashes) == 2


def test_a_replaced_file_is_rehashed(tmp_path, hashes):
    path = _settled(tmp_path, hashes)
    SourceIndex.load(path)
    rec = _record(path)
    f = path / INDEX_NAME
    copy = tmp_path / "copy.faiss"
    shutil.copyfile(f, copy)
    _flip_in_place(copy, keep_mtime=False)
    os.utime(copy, ns=(rec["mtime_ns"], rec["mtime_ns"]))
    os.replace(copy, f)
    assert f.stat().st_ino != rec["ino"] and f.stat().st_mtime_ns == rec["mtime_ns"]
    with pytest.raises(ValueError, match="sha256 mismatch"):
        SourceIndex.load(path)
    assert len(hashes) == 2


def test_a_file_changed_just_now_is_hashed_but_not_recorded(tmp_path, hashes):
    path = SourceIndex.build(_sources(3000, 0)).save(tmp_path / "idx")
    hashes.clear()
    SourceIndex.load(path)
    SourceIndex.load(path)
    assert len(hashes) == 2
    assert not (path / VERIFIED_NAME).exists()


@pytest.mark.parametrize("damage", ["not json", "other sha256", "other inode"])
def test_a_damaged_or_foreign_record_is_ignored(tmp_path, hashes, damage):
    path = _settled(tmp_path, hashes)
    SourceIndex.load(path)
    rec = _record(path)
    if damage == "not json":
        (path / VERIFIED_NAME).write_text("{not json")
    else:
        key, value = ("sha256", "0" * 64) if damage == "other sha256" else ("ino", rec["ino"] + 1)
        (path / VERIFIED_NAME).write_text(json.dumps(dict(rec, **{key: value})))
    SourceIndex.load(path)
    assert len(hashes) == 2
    assert _record(path) == rec  # recorded again from the file itself


def test_verify_false_skips_the_hash_and_records_nothing(tmp_path, hashes):
    path = _settled(tmp_path, hashes)
    SourceIndex.load(path, verify=False)
    assert hashes == [] and not (path / VERIFIED_NAME).exists()


def test_a_rebuild_replaces_the_record_with_the_directory(tmp_path, hashes):
    path = _settled(tmp_path, hashes)
    SourceIndex.load(path)
    assert (path / VERIFIED_NAME).exists()
    SourceIndex.build(_sources(500, 1)).save(path, overwrite=True)
    assert sorted(os.listdir(path)) == [INDEX_NAME, MANIFEST_NAME]
    hashes.clear()
    assert SourceIndex.load(path).ntotal == 500
    assert len(hashes) == 1
