"""What a mining run produced, per tier: counts, fallbacks, similarity distributions.

:func:`build_report` reads a mining output directory and, optionally, the
dataset directory it was mined from, and gathers for every tier the cosine of
the negatives to the question and to the pair's positive source, next to the
cosine of the positive itself. :func:`format_report` renders the tables the
``negmine report`` command prints and :func:`plot_report` draws the figure
(matplotlib, the optional ``negmine[plot]`` extra) a user looks at to choose
the filter thresholds.

Each quantity comes from the best origin available:

1. ``data``: recomputed exactly from the embeddings of the dataset directory
   (float32, each row normalised once);
2. ``files``: ``negative_scores.pt`` / ``positive_scores.pt`` in the output
   directory;
3. ``manifest``: the summaries and histograms ``manifest.json`` records;
4. nothing: shown as ``-``.

matplotlib and torch are imported only by the functions that need them.

Modules: ``distribution`` (one distribution and its origin), ``cosines``
(recomputing from a dataset), ``build`` (:func:`build_report`), ``text``
(:func:`format_report`) and ``plot`` (:func:`plot_report`).
"""

from __future__ import annotations

from ..stats import HIST_EDGES, SUMMARY_KEYS, summarize
from .build import Report, TierRow, build_report, default_png_path
from .cosines import pair_cosines
from .distribution import Distribution
from .plot import PlotUnavailable, plot_report
from .text import format_report

__all__ = [
    "HIST_EDGES",
    "SUMMARY_KEYS",
    "Distribution",
    "PlotUnavailable",
    "Report",
    "TierRow",
    "build_report",
    "default_png_path",
    "format_report",
    "pair_cosines",
    "plot_report",
    "summarize",
]
