"""The miner: one object that plans a run, runs its blocks and keeps the result.

The steps read top to bottom: settings (:class:`~negmine.config.MiningConfig`)
and the six arrays (:func:`~negmine.inputs.check_inputs`) make a plan
(:func:`~negmine.plan.make_plan`: layout, index, tier-3 back-end); an executor
runs its blocks (:mod:`negmine.executor`, :mod:`negmine.blocks`); the
validator checks the result; :meth:`NegativeMiner.mine_to` saves it durably.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import as_numpy
from ._compiled import compiled_version
from ._rowfile import file_rows
from .config import MiningConfig
from .executor import MinedBlocks, make_executor, run_blocks
from .inputs import check_inputs
from .plan import PAIR_BLOCK, T3_BLOCK, IndexArg, make_plan
from .recall import check_recall, measure_recall
from .run_stats import StageClock, run_stats
from .tuning import tune_plan

__all__ = ["PAIR_BLOCK", "T3_BLOCK", "NegativeMiner", "mine_negatives"]

if TYPE_CHECKING:
    from .io import Checkpoints

log = logging.getLogger(__name__)

_CONFIG_NAMES = frozenset(f.name for f in fields(MiningConfig) if f.init)


def _config(config: MiningConfig | None, settings: dict[str, Any]) -> MiningConfig:
    """``config`` with ``settings`` applied; ``random_seed`` is an alias of ``seed``."""
    if "random_seed" in settings:
        if "seed" in settings:
            raise TypeError("pass `seed` or its old name `random_seed`, not both")
        warnings.warn("`random_seed` is now `seed`", DeprecationWarning, stacklevel=3)
        settings["seed"] = settings.pop("random_seed")
    unknown = sorted(set(settings) - _CONFIG_NAMES)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    if config is None:
        return MiningConfig(**settings)
    if not isinstance(config, MiningConfig):
        raise TypeError(f"`config` must be a MiningConfig; got {type(config).__name__}")
    return config.replace(**settings) if settings else config


class NegativeMiner:
    """Mine ``n_neg`` negatives in four tiers for every (question, source) pair.

    Parameters
    ----------
    source_embeddings : float [S, d]
        numpy array, memmap or torch tensor.
    question_embeddings : float [Q, d]
    centroid_embeddings : float [C, d]
    pair_indices : int [P, 2]
        Positive pairs (question index, source index).
    pair_cluster_ids : int [P]
        Cluster of each pair, in [0, C).
    source_cluster_ids : int [S]
        Cluster of each source, in [0, C).
    config : MiningConfig, optional
        Every setting; keywords below override its fields.
    index : SourceIndex or path, optional
        A prebuilt source index. Default: the built-in search over the
        sources, held here in cluster order (exact, or over the user's
        clusters with ``nprobe``).
    show_progress : bool
        Draw tqdm progress bars on stderr.
    validate : bool
        Check the result with :func:`negmine.validate_negatives` before
        returning it (raises ``ValidationError`` on a violation).
    **settings
        Fields of :class:`~negmine.config.MiningConfig`: ``n_neg``,
        ``tier_proportions``, ``adjacent_k``, ``seed``, the filters
        (``max_score``, ``relative_margin``, ``absolute_margin``,
        ``near_duplicate_threshold``, ``tier3_rank_window``,
        ``tier3_sampling``), the search (``nprobe``, ``ef_search``,
        ``rerank``, ``recall_sample``, ``target_recall``), the pool (``pool_depth``: keep each
        tier-3 query's candidates with the outputs, for
        :func:`negmine.remine.remine`) and the run (``executor``,
        ``ray_address``, ``batch_size``). ``random_seed`` is accepted as an
        old name of ``seed``.

    Notes
    -----
    An approximate search runs at measured settings: with ``target_recall``,
    or with an approximate index and no search settings, the plan is tuned on
    construction (:func:`negmine.tuning.tune_plan`) and :attr:`tuning` holds
    the record (None when nothing was tuned).

    All filters are off by default; see :mod:`negmine.filters` for their exact
    semantics and how the removed candidates and shortfalls are counted.
    """

    def __init__(
        self,
        source_embeddings: Any,
        question_embeddings: Any,
        centroid_embeddings: Any,
        pair_indices: Any,
        pair_cluster_ids: Any,
        source_cluster_ids: Any,
        *,
        config: MiningConfig | None = None,
        index: IndexArg = None,
        show_progress: bool = False,
        validate: bool = True,
        **settings: Any,
    ):
        self.config = _config(config, settings)
        self.show_progress = bool(show_progress)
        self.validate = bool(validate)
        inputs = check_inputs(source_embeddings, question_embeddings, centroid_embeddings,
                              pair_indices, pair_cluster_ids, source_cluster_ids)  # fmt: skip
        # An approximate search runs at measured settings: tuned here unless given.
        self.plan, self.tuning = tune_plan(make_plan(self.config, inputs, index))
        self.inputs = inputs
        self.layout = self.plan.layout
        self.index = self.plan.index
        self._run_key: str | None = None
        self._positive_scores: np.ndarray | None = None
        self._fingerprints: dict[str, str] | None = None
        self._pool: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        self.last_stats: dict[str, Any] | None = None

    # ------------------------------------------------------------------ mining
    def mine_all_negatives(self) -> dict[str, Any]:
        """Mine every pair.

        Returns
        -------
        dict
            ``hard_negatives`` int64 tensor [P, n_neg] of source ids,
            ``negative_tiers`` int64 tensor [P, n_neg] of tier labels 1-4,
            ``negative_scores`` float32 tensor [P, n_neg], the cosine of each
            negative to the pair's question, ``positive_scores`` float32
            tensor [P], the cosine of each pair's question to its source.
            Statistics of the run are kept in :attr:`last_stats`.
        """
        ids, tiers, scores, _stats = self.mine_arrays()
        return self._results(ids, tiers, scores)

    def _results(self, ids: np.ndarray, tiers: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
        import torch

        res = {
            "hard_negatives": torch.from_numpy(ids),
            "negative_tiers": torch.from_numpy(tiers),
            "negative_scores": torch.from_numpy(scores),
        }
        if self._positive_scores is not None:
            res["positive_scores"] = torch.from_numpy(self._positive_scores)
        return res

    def mine_arrays(
        self, checkpoints: Checkpoints | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Like :meth:`mine_all_negatives`, as numpy arrays plus the statistics dict.

        Parameters
        ----------
        checkpoints : negmine.io.Checkpoints, optional
            Where finished blocks are stored and, on resume, found.
        """
        clock = StageClock()
        recall: dict[str, Any] = {}

        def after_tier3(mined: MinedBlocks) -> None:
            clock.lap("tier3_search")
            recall["value"] = measure_recall(self.plan, mined.t3_ids)
            clock.lap("tier3_recall")

        executor = make_executor(self.config.executor, self.config.ray_address)
        try:
            mined = run_blocks(self.plan, executor, checkpoints, self._progress, after_tier3)
            described = executor.describe()
        finally:
            executor.close()
        clock.lap("sampling_and_scores")
        self._positive_scores = mined.pos
        ok = None
        if self.validate:
            ok = self._validate(mined.ids, mined.tiers)
            clock.lap("validate")
        clock.finish()
        timings = clock.wall
        described["blocks"] = mined.workers
        described["block_seconds"] = {k: [round(x, 4) for x in v] for k, v in mined.seconds.items()}
        stats = run_stats(self.plan, mined, timings, recall["value"], ok, described, clock.cpu)
        stats["tuning"] = self.tuning
        stats["products"] = self.plan.products
        # numba's version when compiled kernels served this run: the 8-bit scan's
        # push, or the reads and cosines of embeddings memory-mapped from a file.
        inputs = self.plan.inputs
        mapped = any(file_rows(a) is not None for a in (inputs.sources, inputs.questions))
        stats["compiled"] = compiled_version() if self.plan.integer_pass or mapped else None
        if self.config.pool_depth is not None:
            self._pool = (mined.pool_scores, mined.pool_ids)
            stats["pool"] = {
                "depth": self.config.pool_depth,
                "width": self.plan.pool_width,
                "read_from": None if self.plan.pool is None else str(self.plan.pool.directory),
                "rows_searched_again": mined.searched_again,
            }
        self.last_stats = stats
        log.info("mined %d pairs in %.2f s", len(mined.ids), timings["total"])
        return mined.ids, mined.tiers, mined.scores, stats

    def _progress(self, desc: str, total: int) -> Callable[[int], None]:
        if not self.show_progress:
            return lambda n: None
        from tqdm.auto import tqdm

        unit = "query" if desc.startswith("tier 3") else "pair"
        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, mininterval=0.5)

        def update(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return update

    def check_recall(
        self, sample: int = 2000, k: int | None = None, held_out: bool = False
    ) -> dict[str, Any]:
        """Measure tier-3 recall@k of this miner's search against exact search.

        ``held_out=True`` checks queries tuning never searched. See
        :func:`negmine.recall.check_recall`.
        """
        return check_recall(self.plan, sample, k, held_out)

    def _validate(self, ids: np.ndarray, tiers: np.ndarray) -> bool:
        """Check the result against every rule; a violation is a bug, raised."""
        from .validate import validate_negatives

        inp, cfg = self.inputs, self.config
        report = validate_negatives(
            ids,
            tiers,
            pair_indices=inp.pair_indices(),
            pair_cluster_ids=inp.pair_cluster,
            source_cluster_ids=inp.source_cluster,
            adjacent=self.layout.adjacent,
            adjacent_k=cfg.adjacent_k,
            tier_proportions=list(cfg.tier_counts),
            source_embeddings=inp.sources,
            near_duplicate_threshold=cfg.near_duplicate_threshold,
        )
        report.raise_if_failed()
        return report.ok

    # ------------------------------------------------------------------ durable runs
    def run_key(self) -> str:
        """sha256 of everything the output depends on: inputs, settings, index.

        The executor, ``batch_size``, progress and thread count are left out:
        the output does not depend on them.
        """
        from .run_key import input_fingerprints, run_key

        if self._fingerprints is None:
            self._fingerprints = input_fingerprints(self.plan)
        return run_key(self.plan, self._fingerprints)

    def mine_to(
        self, output_dir: str | os.PathLike, *, overwrite: bool = False, resume: bool = False
    ) -> dict[str, Any]:
        """Mine every pair and write the outputs to ``output_dir``, durably.

        Finished blocks are checkpointed beside ``output_dir`` (see
        :mod:`negmine.io.runs`); the outputs are built aside and swapped in only
        when complete, so a killed run never leaves half-written outputs and
        never harms an earlier run's.

        Parameters
        ----------
        output_dir : path
        overwrite : bool
            Replace an earlier run's outputs (refused otherwise, before any work).
        resume : bool
            Reuse the finished blocks of an interrupted run of the same inputs
            and settings; the result is byte-identical to an uninterrupted run.
            A complete run of the same key is returned as it is, without
            validating it again.

        Returns
        -------
        dict
            As :meth:`mine_all_negatives`.
        """
        from .io import check_output_dir
        from .io.runs import Checkpoints, completed_run, partial_dir

        key = self.run_key()
        if resume:
            done = completed_run(output_dir, key)
            if done is not None:
                log.info("%s already holds this run; nothing to do", output_dir)
                self.last_stats = done[1].get("stats")
                return done[0]
        check_output_dir(output_dir, overwrite)
        # A re-mine from a stored pool takes seconds: it keeps no checkpoints
        # (nor may its blocks, which lack the pool, pass for a mining run's).
        ckpt = None
        if self.plan.pool is None:
            ckpt = Checkpoints(partial_dir(output_dir), key, resume)
        self._run_key = key
        ids, tiers, scores, stats = self.mine_arrays(checkpoints=ckpt)
        if ckpt is not None:
            stats["checkpoint_blocks"] = {"reused": ckpt.reused, "computed": ckpt.computed}
        res = self._results(ids, tiers, scores)
        self.save(output_dir, res, overwrite=overwrite)
        if ckpt is not None:
            ckpt.finish()
        return res

    # ------------------------------------------------------------------ output
    def save(
        self, output_dir: str | os.PathLike, results: dict[str, Any], overwrite: bool = False
    ) -> Path:
        """Write ``hard_negatives.pt``, ``negative_tiers.pt``, ``negative_scores.pt``,
        ``positive_scores.pt``, the pool's files (with ``pool_depth``, see
        :mod:`negmine.pool`) and ``manifest.json`` (last) into ``output_dir``,
        swapped in whole.

        Returns
        -------
        pathlib.Path
            The output directory.
        """
        from .io import save_outputs
        from .pool import POOL_KEY

        tensors = {
            k: as_numpy(v, k)
            for k, v in results.items()
            if k.startswith(("hard_", "negative_", "positive_"))
        }
        extra = {POOL_KEY: self._write_pool} if self.config.pool_depth is not None else None
        return save_outputs(output_dir, tensors, self.manifest(), overwrite=overwrite, extra=extra)

    def _write_pool(self, stage: Path) -> dict[str, Any]:
        """Put the pool's files into ``stage``; the manifest's ``pool`` entry."""
        from .pool import link_pool_files, write_pool_files
        from .run_key import input_fingerprints

        plan = self.plan
        if plan.pool is not None:
            files = link_pool_files(plan.pool, stage)
        else:
            scores, ids = self._pool
            if ids is None:
                raise RuntimeError("mine before saving: this miner holds no pool yet")
            files = write_pool_files(stage, plan.t3_keys, scores, ids)
        if self._fingerprints is None:
            self._fingerprints = input_fingerprints(plan)
        stats = self.last_stats or {}
        return {
            "depth": self.config.pool_depth,
            "width": plan.pool_width,
            "search": plan.describe_search(),
            "inputs": self._fingerprints,
            "files": files,
            "rows_searched_again": (stats.get("pool") or {}).get("rows_searched_again"),
        }

    def manifest(self) -> dict[str, Any]:
        """What a mining output directory records about this run."""
        import faiss

        from ._version import __version__

        return {
            "format": "negmine-output",
            "format_version": 1,
            "run_key": self._run_key,
            "config": self.config.to_dict(),
            "seed": self.config.seed,
            "stats": self.last_stats,
            "versions": {
                "negmine": __version__,
                "faiss": faiss.__version__,
                "numpy": np.__version__,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def mine_negatives(
    source_embeddings: Any,
    question_embeddings: Any,
    centroid_embeddings: Any,
    pair_indices: Any,
    pair_cluster_ids: Any,
    source_cluster_ids: Any,
    *,
    output_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Mine negatives in one call and optionally save them to ``output_dir``.

    Takes the arguments of :class:`NegativeMiner` and returns the dict of
    :meth:`NegativeMiner.mine_all_negatives`. With ``output_dir`` the run is
    durable (:meth:`NegativeMiner.mine_to`): ``overwrite`` replaces an earlier
    run's outputs, ``resume`` continues an interrupted run.
    """
    miner = NegativeMiner(
        source_embeddings,
        question_embeddings,
        centroid_embeddings,
        pair_indices,
        pair_cluster_ids,
        source_cluster_ids,
        **kwargs,
    )
    if output_dir is not None:
        return miner.mine_to(output_dir, overwrite=overwrite, resume=resume)
    return miner.mine_all_negatives()
