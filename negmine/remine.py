"""Re-mining from a run's pool of tier-3 candidates, without searching again.

:func:`remine` takes a run mined with ``pool_depth``, changes any setting
that leaves the tier-3 search as it was (the seed, ``n_neg``, the tier
proportions, ``adjacent_k``, the filters, the rank window and the sampling)
and mines again with tier 3 read from the pool. The result is byte-identical
to mining from scratch with the same settings (``pool_depth`` included): the
rows whose filters or window reach past the pool are searched again, exactly
as that run searches them, and counted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ._checks import fail
from .config import SEARCH_SETTINGS, MiningConfig

__all__ = ["REMINE_SETTINGS", "config_of_run", "epoch_negatives", "remine"]

log = logging.getLogger(__name__)

#: Settings a re-mine may change: none of them changes the tier-3 search.
REMINE_SETTINGS = (
    "seed", "n_neg", "tier_proportions", "adjacent_k", "max_score", "relative_margin",
    "absolute_margin", "near_duplicate_threshold", "tier3_rank_window", "tier3_sampling",
    "recall_sample", "executor", "ray_address", "batch_size",
)  # fmt: skip

_WHY = {
    "nprobe": "it decides which clusters the search probes",
    "ef_search": "it decides how far the graph search explores",
    "rerank": "it decides how many candidates the search re-ranks",
    "pool_depth": "it decides how many candidates the pool holds",
}


def config_of_run(manifest: Mapping[str, Any]) -> MiningConfig:
    """The :class:`MiningConfig` a run's manifest records."""
    rec = manifest.get("config")
    if not isinstance(rec, dict):
        fail("run_dir", "hold a manifest with the run's config", "a manifest without one")
    names = {f.name for f in fields(MiningConfig) if f.init}
    return MiningConfig(**{k: v for k, v in rec.items() if k in names})


def _check_settings(base: MiningConfig, settings: dict[str, Any]) -> None:
    for name, value in settings.items():
        if name in SEARCH_SETTINGS:
            if value == getattr(base, name):
                continue
            fail(name, f"stay {getattr(base, name)!r} in a re-mine ({_WHY[name]}, so the pool "
                 "would not be what that search finds)", repr(value),
                 f"Mine from scratch with {name}={value!r} instead.")  # fmt: skip
        elif name not in REMINE_SETTINGS:
            raise TypeError(f"unexpected keyword argument {name!r}; a re-mine takes "
                            f"{', '.join(REMINE_SETTINGS)}")  # fmt: skip


def _arrays(data: Any) -> dict[str, Any]:
    if isinstance(data, (str, os.PathLike)):
        from .io.datasets import load_dataset

        return dict(load_dataset(data).arrays)
    if hasattr(data, "arrays"):
        return dict(data.arrays)
    if isinstance(data, Mapping):
        return dict(data)
    fail("data", "be a data directory, a Dataset or a dict of the six input arrays",
         f"an object of type {type(data).__name__}", exc=TypeError)  # fmt: skip


def _check_run_matches(miner: Any, record: dict[str, Any], pool: Any) -> None:
    """Refuse data, an index or tier-3 queries other than the pooled run's."""
    from .run_key import input_fingerprints

    plan = miner.plan
    fps = input_fingerprints(plan)
    for name, want in record.get("inputs", {}).items():
        if name != "adjacent" and fps.get(name) != want:  # adjacent_k may change
            fail("data", f"be the data the run was mined from ({name} recorded as {want})",
                 f"{name} with fingerprint {fps.get(name)}",
                 "Pass the run's data directory, or mine these data from scratch.")  # fmt: skip
    desc = plan.describe_search()
    if desc != record.get("search"):
        fail("index", f"search as the run did ({record.get('search')})",
             f"a search described as {desc}",
             "Pass the run's index (--index) and its search settings.")  # fmt: skip
    import numpy as np

    keys = pool.array("keys")
    if keys.shape != plan.t3_keys.shape or not np.array_equal(keys, plan.t3_keys):
        fail(str(pool.directory / pool.files["keys"]), "list the run's tier-3 queries",
             "other queries", "Mine the run again.")  # fmt: skip
    miner._fingerprints = fps


def remine(
    run_dir: str | os.PathLike,
    data: Any,
    output_dir: str | os.PathLike | None = None,
    *,
    index: Any = None,
    overwrite: bool = False,
    show_progress: bool = False,
    validate: bool = True,
    verify: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """Mine again from a pooled run's tier-3 candidates, with new settings.

    Parameters
    ----------
    run_dir : path
        Output directory of a run mined with ``pool_depth``.
    data : path, Dataset or dict
        The run's inputs (a data directory, a :class:`negmine.io.datasets.Dataset`
        or the six arrays of :class:`negmine.NegativeMiner`); checked against
        the fingerprints the run recorded.
    output_dir : path, optional
        Write the outputs here (with the pool, so it can be re-mined in turn).
    index : SourceIndex or path, optional
        The run's index, when it was mined with one.
    overwrite : bool
        Replace an earlier run in ``output_dir``.
    show_progress, validate : bool
        As :class:`negmine.NegativeMiner`.
    verify : bool
        Check the pool files' sha256 (reads them once; leave on unless the
        caller checked them this session).
    **settings
        Any of :data:`REMINE_SETTINGS`; the others keep the run's values.

    Returns
    -------
    dict
        As :func:`negmine.mine_negatives`, plus ``"stats"`` (the run's
        statistics; ``stats["pool"]["rows_searched_again"]`` counts the
        tier-3 rows the pool was too shallow for).

    Raises
    ------
    ValueError
        A setting that changes the search (``nprobe``, ``ef_search``,
        ``rerank``, ``pool_depth``), other data or another index, a run without
        a pool, or a damaged pool file (named).
    """
    from .miner import NegativeMiner
    from .pool import read_pool

    manifest, pool = read_pool(run_dir, verify=verify)
    base = config_of_run(manifest)
    _check_settings(base, settings)
    config = base.replace(**settings) if settings else base
    miner = NegativeMiner(**_arrays(data), config=config, index=index,
                          show_progress=show_progress, validate=validate)  # fmt: skip
    _check_run_matches(miner, manifest["pool"], pool)
    miner.plan.pool = pool
    if output_dir is not None:
        res = miner.mine_to(output_dir, overwrite=overwrite)
    else:
        res = miner.mine_all_negatives()
    res["stats"] = miner.last_stats
    again = (miner.last_stats or {}).get("pool", {}).get("rows_searched_again")
    log.info("re-mined %s from %s; %s tier-3 rows searched again", output_dir or "in memory",
             Path(run_dir), again)  # fmt: skip
    return res


def epoch_negatives(
    run_dir: str | os.PathLike, data: Any, epoch: int, base_seed: int = 0, **settings: Any
) -> dict[str, Any]:
    """The negatives of training epoch ``epoch``: :func:`remine` with
    ``seed = base_seed + epoch``.

    Tiers 1, 2 and 4 change with the seed every epoch; tier 3 changes too
    when ``tier3_sampling="random"`` draws from a rank window (pass
    ``tier3_rank_window`` and ``tier3_sampling`` here, or mine the run with
    them). Epoch ``e`` of one run always gives the same negatives.

    Parameters
    ----------
    run_dir, data, **settings
        As :func:`remine` (without ``seed``).
    epoch : int
        >= 0.
    base_seed : int
        >= 0.
    """
    for name, v in (("epoch", epoch), ("base_seed", base_seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            fail(name, "be an integer >= 0", repr(v))
    if "seed" in settings:
        raise TypeError("pass `base_seed` and `epoch`; the seed is base_seed + epoch")
    return remine(run_dir, data, seed=base_seed + epoch, **settings)
