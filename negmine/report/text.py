"""format_report: the tables ``negmine report`` prints."""

from __future__ import annotations

from ..stats import SUMMARY_KEYS
from .build import Report
from .distribution import Distribution

__all__ = ["format_report"]

_ORIGIN_TEXT = {
    "data": "recomputed from the embeddings in {data}",
    "files": "from {file}",
    "manifest": "from the manifest's summaries",
    "none": "not available",
}

_NEED_DATA = "not available: pass --data DATA_DIR"
# Width of the label column, and the summary columns' header.
_W = 22
_HEAD = "".join(f"{k:>8}" for k in SUMMARY_KEYS)


def _num(v: float | None, width: int = 7) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.3f}"


def _int(v: int | None, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}}"


def _summary_cells(d: Distribution) -> str:
    return "".join(_num(d.summary[k], 8) for k in SUMMARY_KEYS)


def _title(report: Report, what: str, which: str, file: str) -> str:
    o = report.origins()[which]
    return f"{what}: " + _ORIGIN_TEXT[o].format(data=report.data_dir, file=file)


def format_report(report: Report) -> str:
    """The tables ``negmine report`` prints.

    Parameters
    ----------
    report : Report

    Returns
    -------
    str
        Per tier: the count, requested count, fallbacks and the summary of
        cos(question, negative), with cos(question, positive) as a reference
        row; the summary of cos(negative, positive); when the positive's cosine
        is known pair by pair, the summary of cos(question, negative) -
        cos(question, positive); and the candidates each filter removed. Each
        table names where its numbers come from. Cosines have three decimals;
        ``-`` marks what is unknown.
    """
    lines = [f"{report.out_dir}: {report.n_pairs} pairs x {report.n_neg} negatives", ""]
    lines += _question_table(report)
    lines.append("")
    lines += _tier_table(report, "cos(negative, positive)", "positive", "")
    if report.origins()["margin"] != "none":
        lines.append("")
        lines += _tier_table(
            report,
            "cos(question, negative) - cos(question, positive)",
            "margin",
            "negative_scores.pt and positive_scores.pt",
        )
    lines.append("")
    lines += _filter_table(report)
    sf = {k: v for k, v in report.shortfalls.items() if v}
    lines.append("")
    lines.append(f"shortfalls moved along the fallback: {sf or 'none'}")
    return "\n".join(lines)


def _question_table(report: Report) -> list[str]:
    """cos(question, negative) per tier, with the counts and the positive as reference."""
    lines = [_title(report, "cos(question, negative)", "question", "negative_scores.pt")]
    lines.append(f"{'tier':<{_W}}{'count':>9}{'requested':>10}{'fallback':>9}{_HEAD}")
    for r in report.tiers:
        lines.append(
            f"{f'{r.tier} {r.name}':<{_W}}{r.count:>9}{_int(r.requested, 10)}"
            f"{_int(r.fallback, 9)}{_summary_cells(r.question)}"
        )
    ref = report.positive
    if not ref.known:
        lines.append(f"  cos(question, positive): {_NEED_DATA}")
        return lines
    lines.append(f"{'positive (reference)':<{_W}}{report.n_pairs:>9}{'':>19}{_summary_cells(ref)}")
    what = "positive (reference) = cos(question, positive) of each pair"
    lines.append("  " + _title(report, what, "reference", "positive_scores.pt"))
    return lines


def _tier_table(report: Report, what: str, which: str, file: str) -> list[str]:
    """The summary of one per-negative distribution (``which``) per tier."""
    if report.origins()[which] == "none":
        return [f"{what}: {_NEED_DATA}"]
    lines = [_title(report, what, which, file), f"{'tier':<{_W}}{'count':>9}{_HEAD}"]
    for r in report.tiers:
        d = getattr(r, which)
        lines.append(f"{f'{r.tier} {r.name}':<{_W}}{r.count:>9}{_summary_cells(d)}")
    return lines


def _filter_table(report: Report) -> list[str]:
    if not report.filters:
        return ["filters: none recorded in the manifest"]
    lines = ["candidates removed by each filter, per tier"]
    lines.append(
        f"{'filter':<{_W + 4}}{'value':>12}"
        + "".join(f"{f'tier {t}':>9}" for t in range(1, 5))
        + f"{'shortfall':>11}"
    )
    for name, f in report.filters.items():
        v = f["value"]
        vtext = "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
        cells = "".join(_int(f["removed"][t], 9) for t in range(1, 5))
        lines.append(f"{name:<{_W + 4}}{vtext:>12}{cells}{_int(f['shortfall'], 11)}")
    return lines
