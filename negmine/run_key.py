"""The key of a mining run: a digest of everything its output depends on."""

from __future__ import annotations

import hashlib
import json

from ._version import __version__
from .io.runs import hash_arrays
from .plan import PAIR_BLOCK, MiningPlan

__all__ = ["input_fingerprints", "run_key"]


def input_fingerprints(plan: MiningPlan) -> dict[str, str]:
    """sha256 of each input array of the plan (and of the adjacency it derives).

    Returns
    -------
    dict of str to str
        ``sources``, ``questions``, ``centroids``, ``pair_question``,
        ``pair_source``, ``pair_cluster``, ``source_cluster``, ``adjacent`` ->
        ``"sha256:<hex>"`` of the array's dtype, shape and bytes.
    """
    inp = plan.inputs
    arrays = {
        "sources": inp.sources,
        "questions": inp.questions,
        "centroids": inp.raw_centroids,
        "pair_question": inp.pair_question,
        "pair_source": inp.pair_source,
        "pair_cluster": inp.pair_cluster,
        "source_cluster": inp.source_cluster,
        "adjacent": plan.layout.adjacent,
    }
    out = {}
    for name, a in arrays.items():
        h = hashlib.sha256()
        hash_arrays(h, {name: a})
        out[name] = "sha256:" + h.hexdigest()
    return out


def run_key(plan: MiningPlan, fingerprints: dict[str, str] | None = None) -> str:
    """sha256 of the inputs, the settings that shape the result, and the search.

    Covers the six input arrays (the centroids included: they decide tier 2
    and which clusters a probe visits), every setting of
    :meth:`~negmine.config.MiningConfig.result_dict`, the description of
    the tier-3 search (index manifest and search parameters) and the block
    sizes (checkpoints are stored by block number). The executor,
    ``batch_size``, progress and thread count are left out: the output does
    not depend on them.

    Parameters
    ----------
    plan : MiningPlan
    fingerprints : dict, optional
        :func:`input_fingerprints` of the plan, when already computed.

    Returns
    -------
    str
        ``"sha256:<hex>"``.
    """
    fps = fingerprints if fingerprints is not None else input_fingerprints(plan)
    h = hashlib.sha256(f"negmine-run:{__version__}:".encode())
    desc = json.dumps(plan.describe_search(), sort_keys=True)
    blocks = {"tier3": plan.t3_block, "pairs": PAIR_BLOCK}
    h.update(json.dumps({"config": plan.config.result_dict(), "index": desc, "inputs": fps,
                         "blocks": blocks}, sort_keys=True).encode())  # fmt: skip
    return "sha256:" + h.hexdigest()
