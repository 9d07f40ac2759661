"""Files: atomic writes, single-tensor ``.pt`` files and mining output directories.

Every file this module writes goes through :func:`atomic_path`: it is written
to a temporary name in the destination directory, flushed to disk and renamed
into place, so a reader never sees a half-written file. Output directories get
their ``manifest.json`` last; a directory without one is incomplete.

``torch`` and ``faiss`` are imported only by the functions that need them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import secrets
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._checks import as_numpy, fail
from ._fs import fsync_dir, install_dir

__all__ = [
    "check_output_dir",
    "replace_dir",
    "staging_dir",
    "MANIFEST_NAME",
    "TENSOR_FILES_KEY",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_outputs",
    "load_pt_tensor",
    "save_outputs",
    "save_pt_tensor",
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


# --------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def replace_dir(new: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Put the complete directory ``new`` at ``target``, replacing what was there.

    A reader of ``target`` sees either the old directory or the new one, never a
    mix (see :func:`negmine._fs.install_dir`).
    """
    target = Path(target)
    install_dir(Path(new), target, target.exists())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Delete staging or set-aside directories of ``target`` left by dead processes."""
    import shutil

    for kind in ("staging", "old"):
        for p in target.parent.glob(f".{target.name}.{kind}-*"):
            try:
                pid = int(p.name.rsplit("-", 2)[-2])
            except ValueError:
                continue
            if p.is_dir() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


def staging_dir(target: str | os.PathLike[str]) -> Path:
    """A new empty hidden directory beside ``target`` to build its replacement in.

    Leftovers of processes that died before their swap are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    d = target.parent / f".{target.name}.staging-{os.getpid()}-{secrets.token_hex(4)}"
    d.mkdir()
    return d


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file under a temporary name and move it into place on success.

    Parameters
    ----------
    path : str or path-like
        Final location. Its directory must exist.

    Yields
    ------
    pathlib.Path
        A temporary path ``.<name>.tmp-<pid>-<random>`` in the same directory.
        The body must create the file there.

    Notes
    -----
    On normal exit the temporary file is fsynced, renamed over ``path`` with
    :func:`os.replace` and the directory is fsynced, so ``path`` holds either
    the old content or the complete new content, never a mix. If the body
    raises (or the rename fails) the temporary file is removed, ``path`` is
    left untouched and the exception propagates.
    """
    final = Path(path)
    if not final.name:
        fail("path", "name a file", repr(str(path)))
    parent = final.parent
    if not parent.is_dir():
        fail(
            "path",
            "be inside an existing directory",
            f"{str(final)!r} (directory {str(parent)!r} does not exist)",
            "Create the directory first.",
            exc=FileNotFoundError,
        )
    tmp = parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or path-like
        Destination file; its directory must exist.
    data : bytes-like
        The complete file content.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        fail("data", "be bytes", f"an object of type {type(data).__name__}", exc=TypeError)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json_text(obj: Any, name: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as e:
        fail(
            name,
            "be JSON-serialisable (str keys; str, number, bool, None, list, dict; finite floats)",
            f"an object that is not ({e})",
            "Convert the offending value to a plain Python type.",
            exc=type(e),
        )


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically.

    Parameters
    ----------
    path : str or path-like
        Destination file; its directory must exist.
    obj : Any
        JSON-serialisable object. numpy scalars and arrays and paths are
        converted to plain values; NaN and infinity are refused because strict
        JSON readers reject them.

    Notes
    -----
    Written with ``indent=2``, ``sort_keys=True`` and a trailing newline. The
    text is built before anything touches the disk, so an unserialisable
    ``obj`` leaves ``path`` untouched.
    """
    text = _json_text(obj, "obj") + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------
# single tensors
# --------------------------------------------------------------------------


def load_pt_tensor(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a ``.pt`` file holding exactly one plain tensor.

    Parameters
    ----------
    path : str or path-like
        File written with ``torch.save(tensor, path)``.

    Returns
    -------
    numpy.ndarray
        The tensor as a numpy array, same shape and dtype (bfloat16 becomes
        float32, which numpy lacks). It shares memory with the loaded tensor.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a file.
    ValueError
        If the file is not a torch file, holds anything other than a single
        tensor (a dict, a list, ...), or holds a pickle that
        ``torch.load(weights_only=True)`` refuses.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        fail(str(p), "be an existing file", "nothing at that path", exc=FileNotFoundError)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        fail(
            str(p),
            "hold a plain tensor that torch.load(..., weights_only=True) accepts",
            f"a pickle that weights_only refuses ({first})",
            "Only plain tensors are accepted: unpickling arbitrary objects can run "
            "arbitrary code, so untrusted pickles are refused rather than loaded with "
            "weights_only=False. Re-save the data as a tensor: "
            "torch.save(torch.as_tensor(array), path).",
        )
    except OSError:
        raise
    except Exception as e:
        fail(
            str(p),
            "be a file written by torch.save",
            f"an unreadable file ({type(e).__name__}: {e})",
            "Check that the file is complete and really a .pt file.",
        )
    if not isinstance(obj, torch.Tensor):
        if isinstance(obj, Mapping):
            keys = ", ".join(repr(k) for k in list(obj)[:5])
            more = ", ..." if len(obj) > 5 else ""
            what = f"a dict with keys [{keys}{more}]"
        else:
            what = f"an object of type {type(obj).__name__}"
        fail(
            str(p),
            "hold exactly one tensor",
            f"{what} from torch.load(..., weights_only=True)",
            "Save each array to its own file with torch.save(tensor, path).",
        )
    return as_numpy(obj, str(p))


def _torch_ready(array: Any, name: str) -> np.ndarray:
    """Return ``array`` as a C-contiguous, native-byte-order numpy array."""
    a = as_numpy(array, name)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a) if a.ndim else np.array(a)


def _to_tensor(a: np.ndarray, name: str) -> Any:
    import torch

    try:
        with warnings.catch_warnings():
            # Read-only inputs (memmaps) are only read by torch.save.
            warnings.filterwarnings("ignore", message=".*not writable.*")
            return torch.from_numpy(a)
    except TypeError:
        fail(
            name,
            "have a dtype torch supports (bool, integer, float or complex)",
            f"dtype {a.dtype}",
            "Convert it with .astype(...) first.",
            exc=TypeError,
        )


def save_pt_tensor(path: str | os.PathLike[str], array: Any) -> None:
    """Save one array as a single tensor in a ``.pt`` file, atomically.

    Parameters
    ----------
    path : str or path-like
        Destination file; its directory must exist.
    array : numpy.ndarray or torch.Tensor, any shape
        Saved with its dtype unchanged (bfloat16 tensors become float32).

    Notes
    -----
    The file loads with ``torch.load(path, weights_only=True)`` and with
    :func:`load_pt_tensor`.
    """
    import torch

    tensor = _to_tensor(_torch_ready(array, "array"), "array")
    with atomic_path(path) as tmp:
        torch.save(tensor, tmp)


# --------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------


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


def _safe_name(name: str) -> bool:
    return bool(name) and Path(name).name == name and name not in (".", "..")


def check_output_dir(out_dir: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an output directory that a new run must not replace.

    A missing or empty directory is fine; one holding an earlier run needs
    ``overwrite=True``; one holding files negmine did not write is refused.
    Called before mining starts, so nobody waits hours to learn it.
    """
    d = Path(out_dir)
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


def save_outputs(
    out_dir: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    manifest: Mapping[str, Any],
    overwrite: bool = False,
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
        atomic_write_bytes(stage / MANIFEST_NAME, text.encode("utf-8"))
        pause_point("before-swap")
        replace_dir(stage, d)
    except BaseException:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
        raise
    logger.debug("saved outputs %s to %s", sorted(record), d)
    return d


def pause_point(name: str) -> None:
    """Fault-injection hook for the kill tests: sleep here when asked to.

    ``NEGMINE_PAUSE_AT=<name>`` makes the process print ``paused:<name>`` to
    stderr and sleep 30 s at that point, so a test can kill it exactly there.
    """
    if os.environ.get("NEGMINE_PAUSE_AT") == name:
        import sys
        import time

        print(f"paused:{name}", file=sys.stderr, flush=True)
        time.sleep(30)


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
