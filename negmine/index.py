"""``SourceIndex``: a FAISS index over the L2-normalised sources.

An index on disk is a directory holding ``index.faiss`` and ``manifest.json``.
The manifest records the FAISS factory string, metric, dimension, size, the
versions that built it and a fingerprint of the normalised source embeddings;
loading it against other embeddings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import check_embeddings, fail, normalized_float32

__all__ = ["FORMAT_VERSION", "SourceIndex", "fingerprint", "read_manifest"]

FORMAT_VERSION = 1
_FP_CHUNK = 1 << 16


def _fingerprint_start(n: int, d: int):
    return hashlib.sha256(f"negmine-sources:{n}x{d}:".encode())


def fingerprint(source_embeddings: np.ndarray) -> str:
    """sha256 of the L2-normalised float32 sources ``[S, d]`` (shape included).

    Normalises chunk by chunk, so it never holds a second full copy.
    """
    n, d = source_embeddings.shape
    h = _fingerprint_start(n, d)
    for s in range(0, n, _FP_CHUNK):
        h.update(normalized_float32(source_embeddings[s : s + _FP_CHUNK]).data)
    return "sha256:" + h.hexdigest()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the JSON manifest of an index directory."""
    mpath = Path(path) / "manifest.json"
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        fail("path", "be an index directory holding manifest.json", f"'{path}'")
    except json.JSONDecodeError as e:
        fail("path", "hold a valid manifest.json", f"'{mpath}' ({e})")
    return manifest


class SourceIndex:
    """A FAISS inner-product index over L2-normalised source embeddings.

    Build with :meth:`build`, persist with :meth:`save`, reopen with :meth:`load`.

    Parameters
    ----------
    index : faiss.Index
        Holds the normalised sources, ids ``0..S-1``.
    manifest : dict
        Description, see the module docstring.
    """

    def __init__(self, index: Any, manifest: dict[str, Any]):
        self.index = index
        self.manifest = manifest

    @property
    def is_exact(self) -> bool:
        """True for a flat index (exact search)."""
        return self.manifest["factory"] == "Flat"

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    @classmethod
    def build(
        cls,
        source_embeddings: Any,
        spec: str = "flat",
        *,
        train_size: int = 262144,
        seed: int = 1234,
    ) -> SourceIndex:
        """Build an index over ``source_embeddings``.

        Parameters
        ----------
        source_embeddings : float [S, d]
            Raw embeddings; a normalised float32 copy is indexed.
        spec : str
            ``"flat"`` (exact) or a FAISS factory string such as ``"HNSW32"`` or
            ``"IVF1024,Flat"`` (inner-product metric).
        train_size : int
            At most this many sources train a trainable index.
        seed : int
            Seed of the training sample.

        Returns
        -------
        SourceIndex
        """
        import faiss

        src = check_embeddings(source_embeddings, "source_embeddings")
        n, d = src.shape
        factory = "Flat" if spec.lower() == "flat" else spec
        t0 = time.perf_counter()
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            fail("spec", "be 'flat' or a valid FAISS factory string", repr(spec), str(e).strip())
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            take = np.sort(rng.choice(n, size=min(n, train_size), replace=False))
            index.train(normalized_float32(src[take]))
        h = _fingerprint_start(n, d)
        for s in range(0, n, _FP_CHUNK):
            blk = normalized_float32(src[s : s + _FP_CHUNK])
            h.update(blk.data)
            index.add(blk)
        manifest = {
            "format_version": FORMAT_VERSION,
            "factory": factory,
            "spec": spec,
            "metric": "inner_product",
            "normalized": True,
            "d": d,
            "ntotal": n,
            "fingerprint": "sha256:" + h.hexdigest(),
            "build_seconds": round(time.perf_counter() - t0, 3),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return cls(index, manifest)

    def vectors(self) -> np.ndarray:
        """The stored normalised sources, float32 [S, d], without a copy (flat only)."""
        import faiss

        if not self.is_exact:
            raise TypeError("vectors() needs a flat index; this one is " + self.manifest["factory"])
        flat = faiss.downcast_index(self.index)
        ptr = flat.get_xb()
        return faiss.rev_swig_ptr(ptr, self.ntotal * self.d).reshape(self.ntotal, self.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN by inner product. ``queries`` float32 [n, d] normalised."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def check_matches(self, fp: str, d: int, what: str = "source_embeddings") -> None:
        """Refuse use with embeddings other than those it was built from."""
        m = self.manifest
        if m["d"] != d:
            fail(what, f"have width d={m['d']} like the index", f"d={d}")
        if m["fingerprint"] != fp:
            fail(
                "index",
                f"be built from the `{what}` in use (fingerprint {fp})",
                f"an index built from other embeddings (fingerprint {m['fingerprint']})",
                "Rebuild the index from these embeddings.",
            )

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``index.faiss`` then ``manifest.json`` into directory ``path``."""
        import faiss

        from .io import atomic_path, atomic_write_json

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        target = out / "index.faiss"
        with atomic_path(target) as tmp:
            faiss.write_index(self.index, str(tmp))
        h = hashlib.sha256()
        with open(target, "rb") as f:
            for blk in iter(lambda: f.read(1 << 22), b""):
                h.update(blk)
        manifest = dict(self.manifest, index_sha256=h.hexdigest())
        atomic_write_json(out / "manifest.json", manifest)
        self.manifest = manifest
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False) -> SourceIndex:
        """Open an index directory written by :meth:`save`.

        ``mmap=True`` memory-maps the file where the index type allows it.
        """
        import faiss

        manifest = read_manifest(path)
        target = Path(path) / "index.faiss"
        if not target.is_file():
            fail("path", "hold index.faiss", f"'{path}' without it")
        expected = os.path.getsize(target)
        if manifest.get("format_version") != FORMAT_VERSION:
            fail("path", f"hold format_version {FORMAT_VERSION}", manifest.get("format_version"))
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(target), flags)
        except RuntimeError as e:
            fail("path", "hold a readable FAISS index", f"'{target}' ({expected} bytes)", str(e))
        if index.ntotal != manifest["ntotal"] or index.d != manifest["d"]:
            fail(
                "path",
                "hold an index matching its manifest",
                f"ntotal={index.ntotal}, d={index.d} "
                f"(manifest: ntotal={manifest['ntotal']}, d={manifest['d']})",
            )
        return cls(index, manifest)


def _versions() -> dict[str, str]:
    import faiss

    from . import __version__

    return {"negmine": __version__, "faiss": faiss.__version__, "numpy": np.__version__}
