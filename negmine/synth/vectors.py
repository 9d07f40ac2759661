"""Sources and questions, generated in row chunks on a few threads."""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .params import (
    _CHUNK_ROWS,
    _MAX_WORKERS,
    _NOISE_W,
    _QUESTION_COS,
    _QUESTION_LOCAL,
    _add_local,
    _fill_noise,
    _normalize_rows,
    _runs,
)


class _Scratch(threading.local):
    """Per-thread reusable float32 buffers, so chunks do not keep allocating."""

    def get(self, name: str, n: int, d: int) -> np.ndarray:
        buf = self.__dict__.get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] != d:
            buf = np.empty((n, d), dtype=np.float32)
            self.__dict__[name] = buf
        return buf[:n]


def _n_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(_MAX_WORKERS, cpus))


def _run_chunks(
    task: Callable[[int, int], Any], n_rows: int, rows: int, consume: Callable[[Any], None]
) -> None:
    """Run ``task(k, start)`` for row chunks ``k``, consuming results in chunk order.

    Chunks run on a few threads (numpy releases the GIL in the heavy loops);
    the output never depends on their number or timing, because every chunk
    draws from its own generator and results are consumed in order.
    """
    starts = range(0, n_rows, rows)
    workers = min(_n_workers(), len(starts))
    if workers <= 1:
        for k, j0 in enumerate(starts):
            consume(task(k, j0))
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[Any]] = deque()
        for k, j0 in enumerate(starts):
            pending.append(pool.submit(task, k, j0))
            if len(pending) >= 2 * workers:
                consume(pending.popleft().result())
        while pending:
            consume(pending.popleft().result())


def _make_sources(
    stream: int,
    label: np.ndarray,
    centres: np.ndarray,
    cluster_topic: np.ndarray,
    bases: np.ndarray,
    mix_table: np.ndarray | None,
    spread_w: float,
    mix_w: float,
    shape: tuple[np.ndarray, np.ndarray] | None = None,
    noise_w: float = _NOISE_W,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the sources of generating clusters ``label`` (int64 [S]).

    Each chunk of rows is generated sorted by topic and cluster, so topic
    subspaces and cluster sums work on contiguous slices, and is put back in
    row order at the end. ``shape``, a map float32 [d, d] and an offset
    float32 [d] (see ``spectrum.py``), is applied to each row before it is
    normalised: ``row @ map + offset``. ``noise_w`` is the expected norm of
    the isotropic noise added to each row.

    Returns
    -------
    sources : float32 [S, d]
        Unit-norm sources.
    sums : float64 [C, d]
        Sum of each generating cluster's sources.
    """
    f32 = np.float32
    n_c, d = centres.shape
    n_s = label.size
    r = bases.shape[1]
    # sort key grouping a chunk's rows by topic, then by cluster
    key = cluster_topic * n_c + np.arange(n_c)
    sources = np.empty((n_s, d), dtype=f32)
    sums = np.zeros((n_c, d), dtype=np.float64)
    rows = min(_CHUNK_ROWS, n_s)
    scratch = _Scratch()
    spread = f32(spread_w / math.sqrt(r))

    def task(k: int, j0: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([stream, k])
        order = np.argsort(key[label[j0 : j0 + rows]], kind="stable")
        lab = label[j0 : j0 + rows][order]
        n = lab.size
        blk, t = scratch.get("blk", n, d), scratch.get("tmp", n, d)
        _fill_noise(rng, blk, noise_w)
        np.take(centres, lab, axis=0, out=t, mode="clip")
        blk += t
        if mix_table is not None:
            other = mix_table[lab, rng.integers(0, mix_table.shape[1], size=n)]
            np.take(centres, other, axis=0, out=t, mode="clip")
            t *= (rng.random(n, dtype=f32) * f32(mix_w))[:, None]
            blk += t
        coords = rng.standard_normal((n, r), dtype=f32)
        coords *= spread
        _add_local(blk, coords, cluster_topic[lab], bases, t)
        if shape is not None:
            np.matmul(blk, shape[0], out=t)
            t += shape[1]
            blk, t = t, blk
        _normalize_rows(blk)
        run_starts, run_ends = _runs(lab)
        part = np.empty((run_starts.size, d), dtype=np.float64)
        for i, (a, b) in enumerate(zip(run_starts, run_ends, strict=True)):
            part[i] = blk[a:b].sum(axis=0)
        # back to the chunk's row order, written sequentially
        np.take(blk, np.argsort(order), axis=0, out=sources[j0 : j0 + n], mode="clip")
        return lab[run_starts], part

    def consume(result: tuple[np.ndarray, np.ndarray]) -> None:
        ids, part = result
        sums[ids] += part

    _run_chunks(task, n_s, rows, consume)
    return sources, sums


def _make_questions(
    stream: int,
    sources: np.ndarray,
    first_pos: np.ndarray,
    source_topic: np.ndarray,
    bases: np.ndarray,
    shape_map: np.ndarray | None = None,
) -> np.ndarray:
    """Questions float32 [Q, d]: unit vectors at a drawn cosine to their first positive.

    Each question turns its positive towards a random direction that is
    partly isotropic and partly inside the positive's topic subspace (which
    moves it towards other sources of the cluster). ``shape_map`` (float32
    [d, d]), when given, shapes that direction like the sources.
    """
    f32 = np.float32
    n_q = first_pos.size
    d = sources.shape[1]
    r = bases.shape[1]
    questions = np.empty((n_q, d), dtype=f32)
    rows = min(_CHUNK_ROWS, n_q)
    scratch = _Scratch()
    lo, hi = _QUESTION_COS
    local = f32(_QUESTION_LOCAL / math.sqrt(r))

    def task(k: int, j0: int) -> None:
        rng = np.random.default_rng([stream, k])
        pos = first_pos[j0 : j0 + rows]
        order = np.argsort(source_topic[pos], kind="stable")
        pos = pos[order]
        n = pos.size
        p, m, t = scratch.get("p", n, d), scratch.get("m", n, d), scratch.get("tmp", n, d)
        np.take(sources, pos, axis=0, out=p, mode="clip")
        _fill_noise(rng, m, 1.0 - _QUESTION_LOCAL)
        coords = rng.standard_normal((n, r), dtype=f32)
        coords *= local
        _add_local(m, coords, source_topic[pos], bases, t)
        if shape_map is not None:
            np.matmul(m, shape_map, out=t)
            m, t = t, m
        # keep the part orthogonal to the positive, then rotate towards it
        np.multiply(p, np.einsum("ij,ij->i", m, p)[:, None], out=t)
        m -= t
        _normalize_rows(m)
        cos = rng.uniform(lo, hi, size=n).astype(f32)
        m *= np.sqrt(f32(1.0) - cos * cos)[:, None]
        np.multiply(p, cos[:, None], out=t)
        m += t
        _normalize_rows(m)
        np.take(m, np.argsort(order), axis=0, out=questions[j0 : j0 + n], mode="clip")

    _run_chunks(task, n_q, rows, lambda _: None)
    return questions
