"""Findings section: ranked findings with their trust checks, the checks, the biomarker table.

Reads what :mod:`epikit.analysis.biomarkers` and :mod:`epikit.analysis.trust` write:
``metrics.json`` keys ``biomarkers`` (summary), ``findings`` (ranked image-level rows, each
with ``trust``; map findings with their ``target_swap`` control, and ``opposite`` where map and
intensity findings localise the change at opposite ends), ``channel_attribution`` and ``trust`` (faithfulness, sanity, mask-edge
control), and ``biomarkers.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.report.html import Markup, element, image, join, mapping_table, note, paragraph, table
from epikit.runfolder.reader import RunFolder
from epikit.report.sections.common import (
    SIGNIFICANCE,
    ReportContext,
    finding_text,
    findings,
    is_number,
    records_table,
    scalars,
    unavailable,
)

#: Biomarker rows and findings shown before their "more" fold-outs.
BIOMARKER_ROWS = 25
FINDINGS_SHOWN = 3
#: Finding fields shown in its detail table (the sentence already holds the rest).
FINDING_DETAILS = ("localisation", "source", "explainer", "channel", "region", "target", "effect", "cliffs_delta",
                   "p_value", "q_value", "n_condition", "n_reference")


def _trust_rows(trust: Mapping[str, Any]) -> list[list[Any]]:
    """One row per trust check of a finding: check, result, numbers."""
    rows: list[list[Any]] = []
    if trust.get("top_channel") is not None:
        attribution = trust.get("channel_attribution") or {}
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in attribution.items() if is_number(v))
        rows.append(["channel attribution", f"decision rests most on {trust['top_channel']}", numbers])
    control = trust.get("mask_control")
    if isinstance(control, Mapping):
        same = control.get("shows_same_difference")
        rows.append(["mask-edge control",
                     "the mask-only model shows the same difference (possible edge artefact)" if same
                     else "the mask-only model does not show it",
                     f"effect {control.get('effect', math.nan):+.3f}, p {control.get('p_value', math.nan):.2g}"])
    faithful = trust.get("faithfulness")
    if isinstance(faithful, Mapping):
        rows.append(["faithfulness", "better than a random pixel order" if faithful.get("better_than_random")
                     else "not better than a random pixel order",
                     f"deletion AUC {faithful.get('deletion_auc', math.nan):.3f} "
                     f"(random {faithful.get('random_deletion_auc', math.nan):.3f}), insertion AUC "
                     f"{faithful.get('insertion_auc', math.nan):.3f} "
                     f"(random {faithful.get('random_insertion_auc', math.nan):.3f})"])
    sanity = trust.get("sanity")
    if isinstance(sanity, Mapping):
        verdict = {True: "maps change when the weights are randomised",
                   False: "maps barely change when the weights are randomised"}.get(
            sanity.get("differs"), "inconclusive: no map could be compared")
        rows.append(["randomisation sanity", verdict,
                     f"rank correlation {sanity.get('rank_correlation', math.nan):.3f}"])
    return rows


def _finding_block(finding: Any) -> Markup:
    text = finding_text(finding)
    if not isinstance(finding, Mapping):
        return element("div", element("b", text), class_="finding")
    rank = finding.get("rank")
    parts: list[Any] = [element("b", f"{rank}. {text}" if rank is not None else text)]
    details = {k: finding[k] for k in FINDING_DETAILS if k in finding}
    if details:
        parts.append(element("details", element("summary", "details"), mapping_table(details, "field", "value", 4)))
    trust = finding.get("trust")
    flags = [str(f) for f in (trust.get("flags") or [])] if isinstance(trust, Mapping) else []
    if flags:
        parts.append(paragraph(element("b", "Flags: "), "; ".join(flags)))
    if finding.get("opposite"):
        parts.append(paragraph(element("b", "Opposite localisation: "), str(finding["opposite"])))
    swap = finding.get("target_swap")
    if isinstance(swap, Mapping) and swap.get("text"):  # computed, or not needed (one target on both sides)
        parts.append(paragraph(element("b", "Target-swap control: "), str(swap.get("text", ""))))
    if isinstance(trust, Mapping):
        rows = _trust_rows(trust)
        if rows:
            parts.append(table(["check", "result", "numbers"], rows))
    return element("div", *parts, class_="finding flagged" if flags else "finding")


def _findings(run: RunFolder) -> list[Any]:
    found = findings(run)
    summary = run.metrics.get("biomarkers")
    if found:
        blocks = [_finding_block(f) for f in found]
        if len(blocks) <= FINDINGS_SHOWN:
            return blocks
        rest = element("details", element("summary", f"{len(blocks) - FINDINGS_SHOWN} more findings"),
                       *blocks[FINDINGS_SHOWN:])
        return [*blocks[:FINDINGS_SHOWN], rest]
    if isinstance(summary, Mapping):
        alpha = summary.get("alpha", SIGNIFICANCE)
        return [note(f"No image-level biomarker passes q < {alpha}: no finding.")]
    return [unavailable("Findings", "metrics.json['findings'] (the biomarkers stage)")]


def _attribution(report: ReportContext) -> list[Any]:
    attribution = report.run.metrics.get("channel_attribution")
    if not isinstance(attribution, Mapping) or not attribution:
        return [unavailable("Channel attribution", "metrics.json['channel_attribution']")]
    numeric = {str(c): {str(ch): float(v) for ch, v in values.items() if is_number(v)}
               for c, values in attribution.items() if isinstance(values, Mapping)}
    numeric = {c: v for c, v in numeric.items() if v}
    if not numeric:
        return [note("Channel attribution holds no numbers.")]
    channels = sorted({ch for values in numeric.values() for ch in values})
    src = report.figures.save(fig.attribution_plot(numeric), "attribution")
    return [table(["condition", *channels], ([c, *(v.get(ch) for ch in channels)] for c, v in numeric.items())),
            image(src, "channel attribution", "Mean drop in the target-class probability when one channel "
                  "is occluded (set to its mean inside the nucleus): which marker the decision rests on.")]


def _trust_checks(report: ReportContext) -> list[Any]:
    trust = report.run.metrics.get("trust")
    if not isinstance(trust, Mapping) or not trust:
        return [unavailable("Trust checks", "metrics.json['trust']")]
    body: list[Any] = []
    if trust.get("view"):
        body.append(paragraph(f"Checked on the maps of view {trust['view']}."))
    faithfulness = trust.get("faithfulness")
    if isinstance(faithfulness, Mapping) and faithfulness:
        keys = ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc",
                "better_than_random", "n_cells")
        body += [element("h4", "Faithfulness (deletion / insertion)"),
                 table(["explainer", *keys], ([m, *(v.get(k) for k in keys)] for m, v in faithfulness.items()
                                              if isinstance(v, Mapping)))]
        curves = {m: v for m, v in faithfulness.items()
                  if isinstance(v, Mapping) and isinstance(v.get("fractions"), list)}
        if curves:
            src = report.figures.save(fig.faithfulness_plot(curves), "faithfulness")
            body.append(image(src, "deletion and insertion curves",
                              "Target probability as nucleus pixels are removed (deletion: lower is more "
                              "faithful) or added back (insertion: higher is better) in map order; dashed: "
                              "a random order."))
    sanity = trust.get("sanity")
    if isinstance(sanity, Mapping):
        body += [element("h4", "Model-randomisation sanity check"), mapping_table(scalars(sanity), "item", "value")]
    control = trust.get("mask_control")
    if isinstance(control, Mapping):
        body += [element("h4", "Mask-edge control (classifier trained on nucleus masks only)"),
                 mapping_table(scalars(control, skip=("rows",)), "item", "value")]
        rows = records_table(control.get("rows"))
        if rows is not None:
            body.append(rows)
    return body


def _biomarker_table(run: RunFolder) -> Markup:
    frame = run.biomarkers
    if frame is None:
        return unavailable("Biomarker table", "biomarkers.csv")
    if frame.empty:
        return note("biomarkers.csv has no rows.")
    alpha = (run.metrics.get("biomarkers") or {}).get("alpha", SIGNIFICANCE)
    if "role" in frame:
        primary = frame["role"].astype(str) == "design"
    else:
        primary = frame["unit"].astype(str) == "image" if "unit" in frame else np.ones(len(frame), bool)
    image_rows, cell_rows = frame[primary], frame[~primary]
    unit = str(image_rows["unit"].iloc[0]) if "unit" in frame and len(image_rows) else "image"
    parts = [paragraph(f"{len(image_rows)} {unit}-level rows (the {unit} is the independent unit of this "
                       f"design), sorted by q-value; "
                       f"{int((image_rows.get('q_value', np.array([])) < alpha).sum())} with q < {alpha} "
                       "(highlighted). q-values: Benjamini-Hochberg within each unit.")]
    parts += _rows_table(image_rows, alpha)
    if len(cell_rows):
        lower = ", ".join(sorted(set(cell_rows["unit"].astype(str)))) if "unit" in cell_rows else "lower"
        parts.append(element("details", element("summary", f"{len(cell_rows)} {lower}-level rows (for comparison "
                                                f"only: units below the {unit} are not independent)"),
                             *_rows_table(cell_rows, alpha)))
    return join(parts)


def _rows_table(frame: Any, alpha: float) -> list[Markup]:
    sort_by = [c for c in ("q_value", "p_value") if c in frame]
    if sort_by:
        frame = frame.sort_values(sort_by, na_position="last", kind="mergesort")
    columns = list(frame.columns)
    significant = (frame["q_value"] < alpha).to_numpy() if "q_value" in frame else np.zeros(len(frame), bool)

    def render(part: Any, flags: np.ndarray) -> Markup:
        rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row]
                for row in part.itertuples(index=False)]
        return table(columns, rows, row_classes=["significant" if f else None for f in flags], digits=4)

    shown = [render(frame.iloc[:BIOMARKER_ROWS], significant[:BIOMARKER_ROWS])]
    if len(frame) > BIOMARKER_ROWS:
        shown.append(element("details", element("summary", f"{len(frame) - BIOMARKER_ROWS} more rows"),
                             render(frame.iloc[BIOMARKER_ROWS:], significant[BIOMARKER_ROWS:])))
    return shown


def biomarkers_section(report: ReportContext) -> Markup:
    """Findings with their trust checks, channel attribution, the checks, the biomarker table."""
    run = report.run
    body: list[Any] = []
    summary = run.metrics.get("biomarkers")
    if isinstance(summary, Mapping):
        facts = {k: summary[k] for k in ("reference", "target", "alpha", "image_test", "shell_method", "n_shells",
                                          "n_significant_image_level", "n_significant_cell_level",
                                          "n_target_driven") if k in summary}
        design = summary.get("design")
        if isinstance(design, Mapping):
            facts.update({"design unit": design.get("unit"), "why": design.get("reason"),
                          "test at the unit": design.get("test"),
                          "units per condition": design.get("units_per_condition", {}).get(design.get("unit"))})
        body.append(mapping_table(facts, "biomarker analysis", "value"))
    body += [element("h3", "Findings"), *_findings(run)]
    body += [element("h3", "Channel attribution"), *_attribution(report)]
    body += [element("h3", "Trust checks"), *_trust_checks(report)]
    body += [element("h3", "Biomarker table"), _biomarker_table(run)]
    return join(body)
