"""`epikit compare` on a 2 x 1 x 2 grid: shared work, one row per combination, a report."""

from __future__ import annotations

import pandas as pd
from typer.testing import CliRunner

from epikit.cli import app

TINY = ["-p", "demo.fields=4", "-p", "demo.size=160", "-p", "demo.min_nuclei=6", "-p", "demo.max_nuclei=9",
        "-p", "train.folds=2", "-p", "train.epochs=2", "-p", "explain.max_cells=6",
        "-p", "biomarkers.trust=false", "-p", "report.enabled=false"]


def test_compare_grid_writes_table_and_report(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["compare", "--segmenters", "watershed,maskrcnn",
                                      "--classifiers", "cnn", "--explainers", "gradcam,gradcampp",
                                      "--out", str(out), "-q", *TINY])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 4
    assert set(zip(table["segmenter"], table["explainer"])) == {
        (s, e) for s in ("watershed", "maskrcnn") for e in ("gradcam", "gradcampp")}
    for column in ("nuclei", "seg_ap50", "accuracy", "roc_auc", "deletion_auc", "top_finding", "agrees",
                   "seconds_segment", "seconds_explain"):
        assert column in table, column
    assert table["seg_ap50"].between(0, 1).all()  # scored against the demo's ground truth
    # One training per (segmenter, classifier): both explainers see the same predictions.
    for _, pair in table.groupby("segmenter"):
        assert pair["accuracy"].nunique() == 1
    html = (out / "comparison.html").read_text()
    # 4 specification rows and 2 explainer pairs, each table with its header row
    assert html.count("<tr") == 5 + 3 and "no report" in html  # per-run reports were switched off
    for run in table["run"]:
        assert (tmp_path / "cmp" / "runs").as_posix() in run


def test_unknown_name_fails_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--segmenters", "watershed,maskrcn", "--out",
                                      str(tmp_path / "cmp"), "-q"])
    assert result.exit_code == 2
    assert "did you mean 'maskrcnn'" in result.output
    assert not (tmp_path / "cmp").exists()
