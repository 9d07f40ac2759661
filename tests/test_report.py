"""negmine report: tables against numpy recomputations, the figure, old manifests, errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from reference import small_corpus, unit

from negmine import NegativeMiner
from negmine.io import load_outputs, save_outputs
from negmine.io.datasets import save_dataset
from negmine.report import (
    HIST_EDGES,
    SUMMARY_KEYS,
    build_report,
    default_png_path,
    pair_cosines,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABEL_WIDTH = 22

# Blocks every import of matplotlib in a real interpreter, then runs the CLI.
NO_MATPLOTLIB = """
import sys

class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoMatplotlib())
from negmine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run(*args: str, code: str | None = None, cwd: Path | None = None):
    head = [sys.executable, "-c", code] if code else [sys.executable, "-m", "negmine"]
    return subprocess.run([*head, *args], capture_output=True, text=True, check=False, cwd=cwd)


def _table(text: str, title: str, width: int = LABEL_WIDTH) -> dict[str, list[str]]:
    """Rows of the table whose title line starts with ``title``: label -> cells."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(title))
    rows: dict[str, list[str]] = {}
    for ln in lines[start + 2 :]:
        if not ln.strip() or ln.startswith("  "):
            break
        rows[ln[:width].strip()] = ln[width:].split()
    return rows


def _close(cell: str, value: float | None) -> bool:
    if value is None:
        return cell == "-"
    return cell != "-" and abs(float(cell) - value) <= 5.1e-4


def _check_cells(cells: list[str], values: np.ndarray) -> None:
    v = np.asarray(values, dtype=np.float64)
    expect = {
        "mean": v.mean(),
        "min": v.min(),
        "q05": np.quantile(v, 0.05),
        "q25": np.quantile(v, 0.25),
        "q50": np.median(v),
        "q75": np.quantile(v, 0.75),
        "q95": np.quantile(v, 0.95),
        "max": v.max(),
    }
    assert len(cells) == len(SUMMARY_KEYS)
    for cell, key in zip(cells, SUMMARY_KEYS, strict=True):
        assert _close(cell, float(expect[key])), (key, cell, expect[key])


def _brute_force(corpus, ids):
    """cos(question, negative), cos(positive, negative), cos(question, positive) in float64."""
    s = unit(corpus["source_embeddings"])
    q = unit(corpus["question_embeddings"])
    pairs = corpus["pair_indices"]
    qv, pv = q[pairs[:, 0]], s[pairs[:, 1]]
    qn = np.einsum("pd,pkd->pk", qv, s[ids])
    pn = np.einsum("pd,pkd->pk", pv, s[ids])
    qp = np.einsum("pd,pd->p", qv, pv)
    return qn, pn, qp


TIER_LABELS = {1: "1 in-cluster", 2: "2 adjacent", 3: "3 high-similarity", 4: "4 random"}


@pytest.fixture(scope="module")
def corpus():
    return small_corpus(n_sources=300, n_clusters=6, n_questions=80, d=12, seed=5)


@pytest.fixture(scope="module")
def mined(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("report")
    save_dataset(root / "data", corpus)
    miner = NegativeMiner(**corpus, n_neg=8, tier_proportions=[2, 2, 2, 2], seed=7)
    miner.mine_to(root / "out")
    return root


def _copy(mined: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(mined / "out", out)
    return out


def _rewrite(out: Path, drop: tuple[str, ...] = (), stats=None) -> None:
    """Rewrite ``out`` with ``drop`` tensors left out and ``stats`` as the manifest's stats."""
    res = load_outputs(out)
    manifest = res.pop("manifest")
    manifest.pop("tensor_files", None)
    if stats is not None:
        manifest["stats"] = stats
    tensors = {k: v for k, v in res.items() if k not in drop}
    save_outputs(out, tensors, manifest, overwrite=True)


def _old_stats(manifest: dict) -> dict:
    """The statistics of manifests written before per-tier distributions were recorded."""
    st = manifest["stats"]
    tiers = {
        t: {k: row[k] for k in ("name", "requested", "count", "mean_cosine")}
        for t, row in st["tiers"].items()
    }
    keep = ("n_pairs", "n_sources", "n_questions", "n_clusters", "shortfalls")
    return {**{k: st[k] for k in keep}, "tiers": tiers}


# --------------------------------------------------------------------------
# the tables
# --------------------------------------------------------------------------


def test_table_equals_numpy_on_the_output_files(mined, tmp_path):
    out = _copy(mined, tmp_path)
    _rewrite(out, drop=("positive_scores",), stats=_old_stats(load_outputs(out)["manifest"]))
    before = sorted(p.name for p in out.iterdir())
    proc = _run("report", str(out), "--no-png")
    assert proc.returncode == 0, proc.stderr
    res = load_outputs(out)
    tiers, scores = res["negative_tiers"], res["negative_scores"]
    manifest = res["manifest"]
    rows = _table(proc.stdout, "cos(question, negative): from negative_scores.pt")
    assert list(rows) == list(TIER_LABELS.values())
    counts = np.bincount(tiers.reshape(-1), minlength=5)
    for t, label in TIER_LABELS.items():
        cells = rows[label]
        assert int(cells[0]) == counts[t]
        assert int(cells[1]) == manifest["stats"]["tiers"][str(t)]["requested"]
        assert cells[2] == "-"  # no fallback count in this manifest
        _check_cells(cells[3:], scores[tiers == t])
    assert "cos(negative, positive): not available: pass --data DATA_DIR" in proc.stdout
    assert "filters: none recorded in the manifest" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == before


def test_positive_scores_file_gives_the_reference_and_the_margin(mined, corpus, tmp_path):
    out = _copy(mined, tmp_path)
    res = load_outputs(out)
    manifest = res.pop("manifest")
    manifest.pop("tensor_files")
    _, _, qp = _brute_force(corpus, res["hard_negatives"])
    res["positive_scores"] = qp.astype(np.float32)
    save_outputs(out, res, manifest, overwrite=True)
    proc = _run("report", str(out), "--no-png")
    assert proc.returncode == 0, proc.stderr
    rows = _table(proc.stdout, "cos(question, negative): from negative_scores.pt")
    assert int(rows["positive (reference)"][0]) == len(qp)
    _check_cells(rows["positive (reference)"][1:], qp.astype(np.float32))
    margin = _table(proc.stdout, "cos(question, negative) - cos(question, positive): from")
    tiers, scores = res["negative_tiers"], res["negative_scores"]
    diff = scores - qp.astype(np.float32)[:, None]
    for t, label in TIER_LABELS.items():
        _check_cells(margin[label][1:], diff[tiers == t])


def test_data_recomputation_equals_brute_force(mined, corpus):
    out = mined / "out"
    res = load_outputs(out)
    ids = res["hard_negatives"]
    qn_ref, pn_ref, qp_ref = _brute_force(corpus, ids)
    qn, pn, qp = pair_cosines(
        corpus["source_embeddings"], corpus["question_embeddings"], corpus["pair_indices"], ids,
        block=7,
    )  # fmt: skip
    assert qn.dtype == pn.dtype == qp.dtype == np.float32
    np.testing.assert_allclose(qn, qn_ref, atol=1e-5)
    np.testing.assert_allclose(pn, pn_ref, atol=1e-5)
    np.testing.assert_allclose(qp, qp_ref, atol=1e-5)
    np.testing.assert_allclose(res["negative_scores"], qn_ref, atol=1e-5)

    rep = build_report(out, data=mined / "data")
    tiers = res["negative_tiers"]
    for row in rep.tiers:
        np.testing.assert_allclose(row.positive.values, pn_ref[tiers == row.tier], atol=1e-5)
        np.testing.assert_allclose(row.question.values, qn_ref[tiers == row.tier], atol=1e-5)
    np.testing.assert_allclose(rep.positive.values, qp_ref, atol=1e-5)

    proc = _run("report", str(out), "--data", str(mined / "data"), "--no-png")
    assert proc.returncode == 0, proc.stderr
    title = "cos(negative, positive): recomputed from the embeddings in"
    rows = _table(proc.stdout, title)
    for t, label in TIER_LABELS.items():
        _check_cells(rows[label][1:], pn_ref[tiers == t])
    rows = _table(proc.stdout, "cos(question, negative): recomputed")
    _check_cells(rows["positive (reference)"][1:], qp_ref)
    rows = _table(proc.stdout, "cos(question, negative) - cos(question, positive): recomputed")
    for t, label in TIER_LABELS.items():
        _check_cells(rows[label][1:], (qn_ref - qp_ref[:, None])[tiers == t])


def test_summary_of_nothing_is_unknown():
    assert summarize(np.array([])) == dict.fromkeys(SUMMARY_KEYS)
    s = summarize(np.array([0.5, -0.5, 0.0, 1.0]))
    assert s["min"] == -0.5 and s["max"] == 1.0 and s["q50"] == 0.25 and s["mean"] == 0.25


# --------------------------------------------------------------------------
# the figure
# --------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_png_is_written_beside_out_dir_and_decodes(mined, tmp_path):
    from matplotlib.image import imread

    out = _copy(mined, tmp_path)
    before = sorted(p.name for p in out.iterdir())
    proc = _run("report", str(out), "--data", str(mined / "data"))
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "out-report.png"
    assert default_png_path(out) == png
    assert f"figure: {png}" in proc.stdout
    w, h = _png_size(png)
    assert w > 0 and h > 0
    img = imread(png)
    assert img.shape[:2] == (h, w)
    assert img.std() > 0.01  # not a blank canvas
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_png_path_option_and_refusal_inside_out_dir(mined, tmp_path):
    out = _copy(mined, tmp_path)
    target = tmp_path / "figs" / "r.png"
    target.parent.mkdir()
    assert _run("report", str(out), "--png", str(target)).returncode == 0
    assert _png_size(target)[0] > 0
    proc = _run("report", str(out), "--png", str(out / "r.png"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "outside OUT_DIR" in proc.stderr
    assert not (out / "r.png").exists()


def test_without_matplotlib_the_table_prints_and_one_line_says_how(mined, tmp_path):
    out = _copy(mined, tmp_path)
    proc = _run("report", str(out), code=NO_MATPLOTLIB)
    assert proc.returncode == 0, proc.stderr
    assert "cos(question, negative): from negative_scores.pt" in proc.stdout
    assert "3 high-similarity" in proc.stdout
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "pip install 'negmine[plot]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out-report.png").exists()
    # A figure asked for by name and not drawn is a failure.
    proc = _run("report", str(out), "--png", str(tmp_path / "x.png"), code=NO_MATPLOTLIB)
    assert proc.returncode == 2 and "3 high-similarity" in proc.stdout
    assert proc.stderr.count("\n") == 1 and "negmine[plot]" in proc.stderr
    # The finder really blocks the import.
    probe = "import sys\n" + NO_MATPLOTLIB.split("from negmine")[0] + "import matplotlib"
    blocked = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr


# --------------------------------------------------------------------------
# manifests old and new
# --------------------------------------------------------------------------


def test_old_manifest_without_scores_shows_the_recorded_means(mined, tmp_path):
    out = _copy(mined, tmp_path)
    old = _old_stats(load_outputs(out)["manifest"])
    _rewrite(out, drop=("negative_scores", "positive_scores"), stats=old)
    assert not (out / "negative_scores.pt").exists()
    proc = _run("report", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = _table(proc.stdout, "cos(question, negative): from the manifest's summaries")
    for t, label in TIER_LABELS.items():
        cells = rows[label]
        assert int(cells[0]) == old["tiers"][str(t)]["count"]
        assert _close(cells[3], old["tiers"][str(t)]["mean_cosine"])
        assert cells[4:] == ["-"] * 7
    _png_size(tmp_path / "out-report.png")


def _hist(values: np.ndarray) -> dict:
    counts, edges = np.histogram(values, bins=HIST_EDGES)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def test_new_manifest_summaries_histograms_and_filters(mined, corpus, tmp_path):
    out = _copy(mined, tmp_path)
    res = load_outputs(out)
    tiers = res["negative_tiers"]
    qn, pn, qp = _brute_force(corpus, res["hard_negatives"])
    stats = _old_stats(res["manifest"])
    for t in range(1, 5):
        sel = tiers == t
        stats["tiers"][str(t)].update(
            fallback=t - 1,
            cosine_question=summarize(qn[sel]),
            cosine_positive=summarize(pn[sel]),
            hist_question=_hist(qn[sel]),
            hist_positive=_hist(pn[sel]),
        )
    stats["positive_cosine"] = {**summarize(qp), "hist": _hist(qp)}
    stats["filters"] = {
        "max_score": {"value": 0.9, "removed": {"1": 0, "2": 1, "3": 17, "4": 0}, "shortfall": 3},
        "relative_margin": {"value": 0.05, "removed": {"3": 9}},
        "near_duplicate_threshold": {
            "value": 0.95, "removed": {"1": 4, "2": 0, "3": 2, "4": 0}, "shortfall": 0,
        },
    }  # fmt: skip
    _rewrite(out, drop=("negative_scores", "positive_scores"), stats=stats)
    proc = _run("report", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = _table(proc.stdout, "cos(question, negative): from the manifest's summaries")
    for t, label in TIER_LABELS.items():
        assert rows[label][2] == str(t - 1)
        _check_cells(rows[label][3:], qn[tiers == t])
    _check_cells(rows["positive (reference)"][1:], qp)
    rows = _table(proc.stdout, "cos(negative, positive): from the manifest's summaries")
    for t, label in TIER_LABELS.items():
        _check_cells(rows[label][1:], pn[tiers == t])
    filt = _table(proc.stdout, "candidates removed by each filter", LABEL_WIDTH + 4)
    assert filt["max_score"] == ["0.9", "0", "1", "17", "0", "3"]
    assert filt["near_duplicate_threshold"] == ["0.95", "4", "0", "2", "0", "0"]
    assert filt["relative_margin"] == ["0.05", "-", "-", "9", "-", "-"]
    # In the order the miner applies them, not the manifest's alphabetical one.
    assert list(filt) == ["max_score", "relative_margin", "near_duplicate_threshold"]
    assert _png_size(tmp_path / "out-report.png")[0] > 0

    rep = build_report(out)
    assert rep.tiers[2].question.origin == "manifest"
    edges, density = rep.tiers[2].question.histogram(HIST_EDGES)
    counts = np.histogram(qn[tiers == 3], bins=HIST_EDGES)[0]
    np.testing.assert_allclose(density * np.diff(edges) * counts.sum(), counts)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def _one_line_exit_2(proc, needle: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("negmine report: error:") and needle in proc.stderr
    assert proc.stdout == ""


def test_bad_out_dir_is_one_line_and_exit_2(mined, tmp_path):
    _one_line_exit_2(_run("report", str(tmp_path / "missing")), "nothing at that path")
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(_run("report", str(tmp_path / "empty")), "manifest.json is missing")
    (tmp_path / "file").write_text("x")
    _one_line_exit_2(_run("report", str(tmp_path / "file")), "a file at that path")
    out = _copy(mined, tmp_path)
    (out / "manifest.json").write_text("{not json")
    _one_line_exit_2(_run("report", str(out)), "not valid JSON")


def test_data_that_does_not_match_is_refused(mined, corpus, tmp_path):
    out = mined / "out"
    # The same pairs and clusters, embeddings from another model.
    rng = np.random.default_rng(0)
    src = corpus["source_embeddings"]
    other = dict(corpus, source_embeddings=src + 0.3 * rng.standard_normal(src.shape, np.float32))
    n_pairs = len(corpus["pair_indices"])
    save_dataset(tmp_path / "other", other)
    _one_line_exit_2(
        _run("report", str(out), "--data", str(tmp_path / "other"), "--no-png"),
        "not the embeddings this run was mined from",
    )
    fewer = dict(corpus, pair_indices=corpus["pair_indices"][:-1],
                 pair_cluster_ids=corpus["pair_cluster_ids"][:-1])  # fmt: skip
    save_dataset(tmp_path / "fewer", fewer)
    _one_line_exit_2(
        _run("report", str(out), "--data", str(tmp_path / "fewer"), "--no-png"),
        f"{n_pairs - 1} pairs, while OUT_DIR holds {n_pairs} rows",
    )
    more = dict(corpus)
    more["source_embeddings"] = np.concatenate(
        [corpus["source_embeddings"], corpus["source_embeddings"][:1]]
    )
    more["source_cluster_ids"] = np.concatenate([corpus["source_cluster_ids"], [0]])
    save_dataset(tmp_path / "more", more)
    _one_line_exit_2(
        _run("report", str(out), "--data", str(tmp_path / "more"), "--no-png"),
        "n_sources = 301, while the manifest records 300",
    )
