"""Covariance spectra the synthetic sources can be shaped after (``make_corpus(spectrum=...)``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._checks import fail
from .params import _SPECTRA, _SPECTRUM_STREAM


def _check_spectrum(spectrum: Any) -> str | None:
    """``spectrum`` if it is None or the name of a stored spectrum."""
    if spectrum is None or (isinstance(spectrum, str) and spectrum in _SPECTRA):
        return spectrum
    names = " or ".join(f'"{k}"' for k in _SPECTRA)
    fail("spectrum", f"be None or {names}", repr(spectrum), "None keeps the flat spectrum.")


def _spectrum_map(name: str, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The linear map and common offset that shape a corpus after spectrum ``name``.

    The map is ``U diag(s) U^T`` for a random orthogonal ``U`` (Haar) and scales
    ``s_i`` proportional to ``(i + shift) ** (-power / 2)`` for ranks
    ``i = 1..d``, normalised to mean square 1 so a vector keeps its expected
    norm; the offset is a random direction times the spectrum's mean weight.
    Both come from their own generator, so the rest of the corpus draws the
    same numbers as with ``spectrum=None``.

    Returns
    -------
    shape_map : float32 [d, d]
        Symmetric; applied as ``x @ shape_map``.
    offset : float32 [d]
        Added after the map, before rows are normalised.
    """
    spec = _SPECTRA[name]
    rng = np.random.default_rng([seed, _SPECTRUM_STREAM])
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q *= np.where(np.diag(r) < 0, -1.0, 1.0)  # a uniformly random rotation
    var = (np.arange(1, d + 1) + spec.shift) ** -spec.power
    scale = np.sqrt(var / var.mean())
    shape_map = (q * scale) @ q.T
    offset = rng.standard_normal(d)
    offset *= spec.mean_w / np.linalg.norm(offset)
    return shape_map.astype(np.float32), offset.astype(np.float32)
