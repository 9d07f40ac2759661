"""The key of a mining run: a digest of everything its output depends on."""

from __future__ import annotations

import hashlib
import json

from ._version import __version__
from .io.runs import hash_arrays
from .plan import MiningPlan

__all__ = ["run_key"]


def run_key(plan: MiningPlan) -> str:
    """sha256 of the inputs, the settings that shape the result, and the search.

    Covers the six input arrays (the centroids included: they decide tier 2
    and which clusters a probe visits), every setting of
    :meth:`~negmine.config.MiningConfig.result_dict` and the description of
    the tier-3 search (index manifest and search parameters). The executor,
    ``batch_size``, progress and thread count are left out: the output does
    not depend on them.

    Returns
    -------
    str
        ``"sha256:<hex>"``.
    """
    h = hashlib.sha256(f"negmine-run:{__version__}:".encode())
    desc = json.dumps(plan.describe_search(), sort_keys=True)
    h.update(json.dumps({"config": plan.config.result_dict(), "index": desc},
                        sort_keys=True).encode())  # fmt: skip
    inp = plan.inputs
    hash_arrays(
        h,
        {
            "sources": inp.sources,
            "questions": inp.questions,
            "centroids": inp.raw_centroids,
            "pair_question": inp.pair_question,
            "pair_source": inp.pair_source,
            "pair_cluster": inp.pair_cluster,
            "source_cluster": inp.source_cluster,
            "adjacent": plan.layout.adjacent,
        },
    )
    return "sha256:" + h.hexdigest()
