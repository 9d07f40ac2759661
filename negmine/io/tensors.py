"""Single-tensor ``.pt`` files: load one plain tensor, save one array atomically.

``torch`` is imported only by the functions that need it.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import as_numpy, fail
from .atomic import atomic_path

__all__ = ["load_pt_tensor", "save_pt_tensor"]


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
