"""negmine: tiered hard-negative mining for contrastive retrieval training.

Importing the package is cheap: torch, faiss and the miner load on first use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "MiningConfig",
    "NegativeMiner",
    "SourceIndex",
    "ValidationError",
    "ValidationReport",
    "__version__",
    "epoch_negatives",
    "load_dataset",
    "mine_negatives",
    "read_manifest",
    "remine",
    "validate_negatives",
]

_LAZY = {
    "MiningConfig": "config",
    "NegativeMiner": "miner",
    "mine_negatives": "miner",
    "SourceIndex": "index",
    "read_manifest": "index",
    "validate_negatives": "validate",
    "ValidationError": "validate",
    "ValidationReport": "validate",
    "load_dataset": "io.datasets",
    "remine": "remine",
    "epoch_negatives": "remine",
}

logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from .config import MiningConfig
    from .index import SourceIndex, read_manifest
    from .io.datasets import load_dataset
    from .miner import NegativeMiner, mine_negatives
    from .remine import epoch_negatives, remine
    from .validate import ValidationError, ValidationReport, validate_negatives


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'negmine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
