"""The comparison report of ``epikit compare``: one table, two figures, links to each run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from epikit.io.store import atomic_path
from epikit.report import html
from epikit.report.figures import FigureWriter, short, subplots

COMPARISON_REPORT = "comparison.html"
SCORE_COLUMNS = ("balanced_accuracy", "roc_auc", "seg_ap50", "deletion_auc", "insertion_auc")


def _label(row: pd.Series) -> str:
    return f"{row['segmenter']} / {row['classifier']} / {row['explainer']}"


def _score_figure(table: pd.DataFrame) -> object:
    columns = [c for c in SCORE_COLUMNS if c in table and table[c].notna().any()]
    figure, axis = subplots(figsize=(7.0, 0.45 * len(table) + 1.5))
    labels = [short(_label(row), 40) for _, row in table.iterrows()]
    height = 0.8 / max(len(columns), 1)
    for index, column in enumerate(columns):
        values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
        positions = np.arange(len(table)) + index * height
        axis.barh(positions, np.nan_to_num(values), height=height, label=column.replace("_", " "))
    axis.set_yticks(np.arange(len(table)) + 0.4 - height / 2, labels)
    axis.set_xlim(0, 1)
    axis.invert_yaxis()
    axis.legend(loc="lower right", fontsize=7)
    axis.set_xlabel("score")
    return figure


def _seconds_figure(table: pd.DataFrame) -> object:
    stages = [c for c in table.columns if c.startswith("seconds_")]
    figure, axis = subplots(figsize=(7.0, 0.45 * len(table) + 1.5))
    left = np.zeros(len(table))
    for column in stages:
        values = pd.to_numeric(table[column], errors="coerce").fillna(0).to_numpy(dtype=float)
        axis.barh(np.arange(len(table)), values, left=left, label=column.removeprefix("seconds_"))
        left += values
    axis.set_yticks(np.arange(len(table)), [short(_label(row), 40) for _, row in table.iterrows()])
    axis.invert_yaxis()
    axis.legend(loc="lower right", fontsize=7)
    axis.set_xlabel("seconds (shared stages count once per run folder that reused them)")
    return figure


def build_comparison_report(out: str | Path, table: pd.DataFrame, consensus: str) -> Path:
    """Write ``out/comparison.html`` (+ ``out/comparison_figures/``) for a compare table."""
    out = Path(out)
    target = out / COMPARISON_REPORT
    with atomic_path(out / "comparison_figures") as folder:
        writer = FigureWriter(folder, link_prefix="comparison_figures")
        scores = writer.save(_score_figure(table), "scores")
        seconds = writer.save(_seconds_figure(table), "seconds")
    shown = ["segmenter", "classifier", "explainer", "nuclei", "seg_ap50", "cells", "accuracy",
             "balanced_accuracy", "roc_auc", "deletion_auc", "insertion_auc", "top_finding", "agrees"]
    shown = [c for c in shown if c in table]
    rows = []
    for _, row in table.iterrows():
        report = Path(row["run"]) / "report.html"
        link = (html.element("a", "report", href=report.relative_to(out).as_posix())
                if report.exists() else html.note("no report"))
        rows.append([*(row[c] for c in shown), link])
    classes = [None if agrees else "disagrees" for agrees in table.get("agrees", [True] * len(table))]
    verdict = (f"Most common top finding: {consensus}." if consensus
               else "No combination found a biomarker at q < 0.05 (image level).")
    agreeing = int(table["agrees"].sum()) if "agrees" in table else 0
    sections = [
        ("summary", "Summary", html.section(
            "summary", "Does the conclusion survive a change of method?",
            html.paragraph(verdict),
            html.paragraph(f"{agreeing} of {len(table)} combinations agree "
                           "(same condition and localisation of the top finding)."),
            html.table([*shown, "run"], rows, row_classes=classes))),
        ("scores", "Scores", html.section("scores", "Scores per combination",
                                          html.image(scores, "scores per combination"))),
        ("timing", "Timing", html.section("timing", "Seconds per stage",
                                          html.image(seconds, "seconds per stage"))),
    ]
    page = html.document("epikit method comparison", f"{len(table)} combinations", sections)
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
