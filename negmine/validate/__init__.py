"""Check mined hard negatives against the tier rules.

A miner returns, for ``P`` positive pairs, ``hard_negatives`` int64 ``[P, n_neg]``
(source ids) and ``negative_tiers`` int64 ``[P, n_neg]`` (labels 1..4).
:func:`validate_negatives` checks every entry against the rules below and
returns a :class:`ValidationReport`; it never trusts the miner.

For row ``r`` with pair cluster ``c`` and question ``q``, ``A(c)`` the clusters
adjacent to ``c`` and the *distant* clusters all others except ``c``:

========  =================  ==============================================
label     tier               the id's source cluster must be
========  =================  ==============================================
1         in-cluster         ``c``
2         adjacent           in ``A(c)``
3         high-similarity    not ``c``
4         random             distant; in ``A(c)`` only once the row already
                             holds every non-positive source of the distant
                             clusters (the miner widened its pool)
========  =================  ==============================================

Every row must also hold ids in ``[0, S)``, no positive of ``q`` (a source of
any pair whose question is ``q``) and no id twice.

With ``near_duplicate_threshold`` (and the source embeddings) the validator
also checks that no row holds a source whose cosine to a positive of its
question is above the threshold, and the tier-4 rule above counts only the
distant sources that are neither positives nor such near-duplicates. Cosines
are recomputed here from the embeddings, with a tolerance of
:data:`NEAR_TOLERANCE` for float32 round-off.

Modules: ``report`` (the outcome), ``inputs`` (checking what the rules are
checked against), ``rows`` and ``near`` (row kernels), ``rules`` (the
per-entry rules) and ``check`` (:func:`validate_negatives`).
"""

from __future__ import annotations

from ..config import TIER_NAMES
from .check import validate_negatives
from .near import NEAR_TOLERANCE
from .report import ValidationError, ValidationReport

__all__ = [
    "NEAR_TOLERANCE",
    "TIER_NAMES",
    "ValidationError",
    "ValidationReport",
    "validate_negatives",
]
