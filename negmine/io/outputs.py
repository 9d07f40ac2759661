"""Mining output directories: one ``.pt`` per tensor and ``manifest.json``, swapped in whole.

The new directory is built beside the old one and swapped in (see
:mod:`negmine.io.fs`); ``manifest.json`` is written last, so a directory
without one is incomplete.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import fail
from .._faults import pause_point
from .atomic import _json_text, atomic_path, atomic_write_bytes
from .fs import remove_tree, replace_dir, settle_dir, staging_dir
from .tensors import _to_tensor, _torch_ready, load_pt_tensor

__all__ = [
    "MANIFEST_NAME",
    "TENSOR_FILES_KEY",
    "check_output_dir",
    "load_outputs",
    "save_outputs",
]

logger = logging.getLogger(__name__)

#: Name of the file that marks an output directory as complete.
MANIFEST_NAME = "manifest.json"

#: Manifest key under which :func:`save_outputs` records the tensors it wrote.
TENSOR_FILES_KEY = "tensor_files"

#: Outputs :func:`load_outputs` requires.
REQUIRED_OUTPUTS: tuple[str, ...] = ("hard_negatives", "negative_tiers")

#: Outputs :func:`load_outputs` reads when present (manifests without a
#: ``tensor_files`` record).
OPTIONAL_OUTPUTS: tuple[str, ...] = ("negative_scores", "positive_scores")


def _check_output_key(key: Any) -> None:
    if (
        not isinstance(key, str)
        or not key
        or key in (".", "..", "manifest")
        or key.startswith(".")
        or any(c in key for c in "/\\\0")
    ):
        fail(
            "tensors",
            'have keys usable as file stems (non-empty, no path separators, not "manifest")',
            f"key {key!r}",
        )


def _read_manifest(d: Path) -> tuple[dict[str, Any] | None, str]:
    """Return (manifest, "") or (None, why it is not usable)."""
    f = d / MANIFEST_NAME
    if not f.is_file():
        return None, f"{MANIFEST_NAME} is missing"
    try:
        obj = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"{MANIFEST_NAME} is not valid JSON ({e})"
    if not isinstance(obj, dict):
        return None, f"{MANIFEST_NAME} holds a {type(obj).__name__}, not a JSON object"
    return obj, ""


def _listed_files(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    rec = manifest.get(TENSOR_FILES_KEY)
    if not isinstance(rec, dict):
        return {}
    return {k: v for k, v in rec.items() if isinstance(v, dict) and isinstance(v.get("file"), str)}


def _extra_files(manifest: Mapping[str, Any]) -> set[str]:
    """Files an entry of ``manifest`` lists under ``"files"`` (a run's pool, say)."""
    out = set()
    for entry in manifest.values():
        files = entry.get("files") if isinstance(entry, dict) else None
        if isinstance(files, dict):
            out |= {v["file"] for v in files.values()
                    if isinstance(v, dict) and isinstance(v.get("file"), str)}  # fmt: skip
    return out


def _safe_name(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


def check_output_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an output directory that a new run must not replace.

    A missing or empty directory is fine; one holding an earlier run needs
    ``overwrite=True``; one holding files negmine did not write is refused.
    Called before mining starts, so nobody waits hours to learn it.
    """
    d = Path(out_dir)
    settle_dir(d)
    if d.exists() and not d.is_dir():
        fail("output_dir", "be a directory", f"{str(d)!r}, which is a file")
    if d.is_dir():
        present = sorted(p.name for p in d.iterdir())
        if present and not overwrite:
            fail(
                "output_dir",
                "be new or empty unless overwrite=True",
                f"{str(d)!r} holding {', '.join(present[:5])}",
                "Pass overwrite=True (--overwrite) to replace the earlier run, or choose "
                "another directory.",
                exc=FileExistsError,
            )
        old, _ = _read_manifest(d)
        ours = {MANIFEST_NAME} | {e["file"] for e in _listed_files(old or {}).values()}
        ours |= _extra_files(old or {})
        ours |= {f"{k}.pt" for k in (*REQUIRED_OUTPUTS, *OPTIONAL_OUTPUTS)}
        foreign = [n for n in present if n not in ours]
        if foreign:
            fail(
                "output_dir",
                "hold only negmine outputs to be replaced",
                f"{str(d)!r} also holding {', '.join(foreign[:5])}",
                "Move those files away or choose another directory.",
                exc=FileExistsError,
            )
    return d


def _prepared(
    tensors: Mapping[str, Any], manifest: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str]:
    """Checked tensors as torch tensors, their file records and the manifest text."""
    if not isinstance(tensors, Mapping):
        fail(
            "tensors",
            "be a dict of arrays",
            f"an object of type {type(tensors).__name__}",
            exc=TypeError,
        )
    if not isinstance(manifest, Mapping):
        fail("manifest", "be a dict", f"an object of type {type(manifest).__name__}", exc=TypeError)
    if TENSOR_FILES_KEY in manifest:
        fail(
            "manifest",
            f"not contain the key {TENSOR_FILES_KEY!r}, which save_outputs fills in",
            f"a manifest with {TENSOR_FILES_KEY!r}",
            "Rename that entry.",
        )
    for key in tensors:
        _check_output_key(key)

    ready: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        a = _torch_ready(value, f"tensors[{key!r}]")
        if a.dtype != np.bool_ and np.issubdtype(a.dtype, np.integer) and a.dtype != np.int64:
            a = a.astype(np.int64)
        ready[key] = a
    converted = {k: _to_tensor(a, f"tensors[{k!r}]") for k, a in ready.items()}
    record = {
        k: {"file": f"{k}.pt", "dtype": str(a.dtype), "shape": list(a.shape)}
        for k, a in ready.items()
    }
    full_manifest = dict(manifest)
    full_manifest[TENSOR_FILES_KEY] = record
    text = _json_text(full_manifest, "manifest") + "\n"
    return converted, record, text


def save_outputs(
    out_dir: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    manifest: Mapping[str, Any],
    overwrite: bool = False,
    extra: Mapping[str, Callable[[Path], dict[str, Any]]] | None = None,
) -> Path:
    """Write mining results: one ``.pt`` per tensor, then ``manifest.json``.

    Parameters
    ----------
    out_dir : str or path-like
        Output directory; created (with parents) if needed.
    tensors : mapping of str to array
        Usually ``hard_negatives`` int [Q, k], ``negative_tiers`` int [Q, k]
        and optionally ``negative_scores`` float [Q, k] and ``positive_scores``
        float [Q]. Each is written as
        ``<key>.pt`` holding one tensor. Integer arrays are written as int64;
        other dtypes are kept.
    manifest : mapping
        JSON-serialisable run description. A copy is written with an added
        ``"tensor_files"`` entry recording each tensor's file, dtype and shape
        (that key is reserved).
    overwrite : bool
        If False, refuse (``FileExistsError``) when ``out_dir`` exists and is
        not empty. With True, a directory holding only negmine outputs is
        replaced; one holding other files is still refused.
    extra : mapping of str to callable ``(stage Path) -> dict``, optional
        More files of the run: each callable writes its files into the
        staging directory and returns the manifest entry stored under its key,
        which lists them under ``"files"`` (``{name: {"file": ...}}``), so a
        later run may replace them.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Notes
    -----
    The new directory is built beside ``out_dir`` (every file flushed, the
    manifest last) and then swapped in atomically: a reader sees the old run or
    the new one, and a process killed at any moment leaves the old outputs
    intact. Only a directory holding nothing but negmine outputs is replaced.
    """
    converted, record, text = _prepared(tensors, manifest)
    d = check_output_dir(out_dir, overwrite)

    import torch

    # Build the whole new directory aside, then swap it in: until the swap the
    # old outputs stay intact, and a reader never sees a mix of runs.
    stage = staging_dir(d)
    try:
        for key, t in converted.items():
            with atomic_path(stage / record[key]["file"]) as tmp:
                torch.save(t, tmp)
            pause_point("during-write")
        if extra:
            full = json.loads(text)
            for key, write in extra.items():
                full[key] = write(stage)
                pause_point("during-write")
            text = _json_text(full, "manifest") + "\n"
        atomic_write_bytes(stage / MANIFEST_NAME, text.encode("utf-8"))
        pause_point("before-swap")
        replace_dir(stage, d)
    except BaseException:
        remove_tree(stage)
        raise
    logger.debug("saved outputs %s to %s", sorted(record), d)
    return d


def load_outputs(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load results written by :func:`save_outputs`.

    Parameters
    ----------
    out_dir : str or path-like
        A complete output directory (one with a valid ``manifest.json``).

    Returns
    -------
    dict
        ``"hard_negatives"`` int64 [Q, k], ``"negative_tiers"`` int64 [Q, k],
        ``"negative_scores"`` float [Q, k] and ``"positive_scores"`` float [Q]
        when written (older outputs lack the latter), any other tensors the
        manifest lists, and ``"manifest"`` (the parsed manifest dict).

    Raises
    ------
    ValueError
        If ``out_dir`` is not a directory, has no valid ``manifest.json``
        (incomplete or not a negmine output directory), misses a listed or
        required tensor, or a tensor's dtype or shape differs from the
        manifest's record.
    """
    d = Path(out_dir)
    settle_dir(d)
    if not d.is_dir():
        state = "a file" if d.exists() else "nothing"
        fail("out_dir", "be an output directory", f"{str(d)!r} ({state} at that path)")
    manifest, why = _read_manifest(d)
    if manifest is None:
        fail(
            "out_dir",
            f"hold a valid {MANIFEST_NAME} (written last by save_outputs)",
            f"{str(d)!r}: {why}",
            "The directory is incomplete or not a negmine output directory; "
            "re-run the mining step that writes it.",
        )
    listed = _listed_files(manifest)
    if listed:
        wanted = {k: (v["file"], v) for k, v in listed.items()}
    else:
        wanted = {k: (f"{k}.pt", None) for k in (*REQUIRED_OUTPUTS, *OPTIONAL_OUTPUTS)}
    result: dict[str, Any] = {}
    for key, (fname, rec) in wanted.items():
        f = d / fname
        if not _safe_name(fname) or not f.is_file():
            if rec is None:
                continue  # the check after the loop names missing required outputs
            fail(
                "out_dir",
                f"hold every tensor its {MANIFEST_NAME} lists",
                f"{str(d)!r} without {fname!r}",
                "The directory is incomplete; re-run the mining step that writes it.",
            )
        a = load_pt_tensor(f)
        if rec is not None and (
            str(a.dtype) != rec.get("dtype") or list(a.shape) != list(rec.get("shape", []))
        ):
            fail(
                str(f),
                f"match its {MANIFEST_NAME} record "
                f"(dtype {rec.get('dtype')}, shape {rec.get('shape')})",
                f"dtype {a.dtype}, shape {list(a.shape)}",
                "The file changed after the manifest was written; re-run the mining step.",
            )
        result[key] = a
    absent = [k for k in REQUIRED_OUTPUTS if k not in result]
    if absent:
        fail(
            "out_dir",
            f"hold {', '.join(f'{k}.pt' for k in REQUIRED_OUTPUTS)}",
            f"{str(d)!r} without {', '.join(f'{k}.pt' for k in absent)}",
            "The directory is incomplete or not a negmine output directory.",
        )
    result["manifest"] = manifest
    return result
