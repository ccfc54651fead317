"""The comparison report of ``epikit compare``: specifications, their curves, agreement, scores, timing.

Sections: a summary table (one row per specification, with its top finding, top map
finding, the compared feature's effects and links to each run's report), the specification
curves for the intensity and the map feature (:mod:`epikit.report.specification_figure`)
with their summaries and joint tests, the agreement of explainers, scores and seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epikit.io.store import atomic_path
from epikit.report import html
from epikit.report.figures import FigureWriter, short, subplots
from epikit.report.specification_figure import specification_curve

COMPARISON_REPORT = "comparison.html"
SCORE_COLUMNS = ("balanced_accuracy", "roc_auc", "seg_ap50", "deletion_auc", "insertion_auc")
#: The comparison table's analysis-choice columns (the axes of epikit.compare.grid), in pipeline order.
CHOICE_COLUMNS = ("segmenter", "crop_size", "scale", "classifier", "target", "explainer", "shell")


def _label(row: pd.Series) -> str:
    if "name" in row:
        return str(row["name"]).replace("__", " / ")
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


SOURCE_LABELS = {"intensity": "intensity", "map": "map"}


def _interval(row: pd.Series, source: str) -> str:
    """``effect [low, high]`` of one source's feature effect (empty without an effect)."""
    effect, low, high = (row.get(f"{source}_{k}") for k in ("effect", "low", "high"))
    if effect is None or pd.isna(effect):
        return ""
    return f"{html.format_value(effect, 4)} [{html.format_value(low, 4)}, {html.format_value(high, 4)}]"


def _curve_section(writer: FigureWriter, curves: dict[str, Any], source: str) -> list[Any]:
    """The curve of one source: its numbers in words, the figure, the joint test."""
    curve = curves.get(source) or {}
    feature, condition, reference = curves.get("feature", ""), curves.get("condition", ""), curves.get("reference", "")
    what = f"{feature} {SOURCE_LABELS[source]}: {condition} minus {reference}"
    if not curve.get("specifications"):
        return [html.element("h3", what), html.note("No specification has values for this feature (no maps?).")]
    test = curve["joint_test"]
    sign = {1: "positive", -1: "negative"}.get(curve["sign"], "no")
    relabellings = (f"exact, all {test['permutations']} relabellings" if test["exact"]
                    else f"{test['permutations'] - 1} random relabellings and the observed one")
    verdict = ("rejects" if curve["rejects"] else "does not reject") + " no effect"
    figure = writer.save(specification_curve(curve, f"{SOURCE_LABELS[source]}: {condition} - {reference}"),
                         f"curve_{source}")
    return [
        html.element("h3", what),
        html.paragraph(
            f"{curve['n']} specification(s); median effect {html.format_value(curve['median_effect'], 4)}; "
            f"{html.format_value(100 * curve['share_same_sign'], 3)}% have the dominant ({sign}) sign and "
            f"{html.format_value(100 * curve['share_excluding_zero'], 3)}% also a 95% interval excluding zero "
            "(image-level bootstrap)."),
        html.paragraph(
            f"Joint test (condition labels of {test['n_images']} images permuted together for every "
            f"specification, median effect recomputed; {relabellings}): "
            f"p = {html.format_value(test['p_value'], 3)}, which {verdict} at alpha = {curves.get('alpha', 0.05)}."),
        html.image(figure, f"{SOURCE_LABELS[source]} specification curve",
                   "Above: effect and 95% interval per specification, sorted. Below: the choices that made each."),
    ]


def _agreement_section(pairs: pd.DataFrame | None) -> list[Any]:
    if pairs is None or pairs.empty:
        return [html.note("No two runs differ only in the explainer.")]
    columns = ["specification", "explainer_a", "explainer_b", "same_map_finding", "n_cells", "median_rho"]
    return [html.paragraph("Runs that differ only in the explainer: do their top map findings agree (same "
                           "condition, localisation and sign of the map feature), and do their maps rank the "
                           "pixels of each nucleus alike (Spearman rho over the same cells, median over cells)?"),
            html.table(columns, pairs[columns].itertuples(index=False))]


def build_comparison_report(out: str | Path, table: pd.DataFrame, consensus: str,
                            curves: dict[str, Any] | None = None, pairs: pd.DataFrame | None = None) -> Path:
    """Write ``out/comparison.html`` (+ ``out/comparison_figures/``) for a compare table, its
    specification ``curves`` and the explainer-agreement ``pairs`` (see :mod:`epikit.compare`)."""
    out = Path(out)
    target = out / COMPARISON_REPORT
    curves = curves or {}
    with atomic_path(out / "comparison_figures") as folder:
        writer = FigureWriter(folder, link_prefix="comparison_figures")
        scores = writer.save(_score_figure(table), "scores")
        seconds = writer.save(_seconds_figure(table), "seconds")
        curve_parts = [part for source in ("intensity", "map") for part in _curve_section(writer, curves, source)]
    axes = ([c for c in CHOICE_COLUMNS if c in table and table[c].nunique() > 1]
            or [c for c in ("segmenter", "classifier", "explainer") if c in table])
    fixed = {c: table[c].iloc[0] for c in CHOICE_COLUMNS if c in table and c not in axes}
    scores_shown = [c for c in ("nuclei", "seg_ap50", "balanced_accuracy") if c in table]
    intervals = [source for source in ("intensity", "map") if f"{source}_effect" in table]
    flags = [c for c in ("agrees", "explainers_agree") if c in table]
    rows, finding_rows = [], []
    for _, row in table.iterrows():
        report = Path(row["run"]) / "report.html"
        link = (html.element("a", "report", href=report.relative_to(out).as_posix())
                if report.exists() else html.note("no report"))
        rows.append([*(row[c] for c in axes), *(row[c] for c in scores_shown),
                     *(_interval(row, source) for source in intervals), *(row[c] for c in flags), link])
        finding_rows.append([_label(row), row.get("top_finding", ""), row.get("top_map_finding", "")])
    shown = [*axes, *scores_shown, *(f"{curves.get('feature', '')} {source} effect [95% interval]"
                                     for source in intervals), *flags]
    classes = [None if agrees else "disagrees" for agrees in table.get("agrees", [True] * len(table))]
    verdict = (f"Most common top finding: {consensus}." if consensus
               else "No specification found a biomarker at q < 0.05 (image level).")
    agreeing = int(table["agrees"].sum()) if "agrees" in table else 0
    cost = curves.get("cost") or {}
    sections = [
        ("summary", "Summary", html.section(
            "summary", "Does the conclusion survive a change of method?",
            html.paragraph(verdict),
            html.paragraph(f"{agreeing} of {len(table)} specifications agree "
                           "(same condition and localisation of the top finding)."),
            html.paragraph(f"Stage executions with shared work: {html.format_value(cost.get('executions', {}))}.")
            if cost else "",
            html.paragraph(f"Fixed choices: {html.format_value(fixed)}.") if fixed else "",
            html.table([*shown, "run"], rows, row_classes=classes))),
        ("findings", "Findings", html.section(
            "findings", "Top finding and top map finding per specification",
            html.table(["specification", "top finding", "top map finding"], finding_rows))),
        ("curves", "Specification curves", html.section(
            "curves", "Specification curves", *(curve_parts or [html.note("No curves were computed.")]))),
        ("agreement", "Explainers", html.section("agreement", "Agreement of explainers", *_agreement_section(pairs))),
        ("scores", "Scores", html.section("scores", "Scores per specification",
                                          html.image(scores, "scores per specification"))),
        ("timing", "Timing", html.section("timing", "Seconds per stage",
                                          html.image(seconds, "seconds per stage"))),
    ]
    page = html.document("epikit method comparison", f"{len(table)} specifications", sections)
    with atomic_path(target) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return target
