"""Findings section: findings with their trust checks, channel attribution, biomarker table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.report.html import Markup, element, image, join, mapping_table, note, paragraph, table
from epikit.report.run_folder import RunFolder
from epikit.report.sections.common import (
    SIGNIFICANCE,
    ReportContext,
    finding_text,
    findings,
    records_table,
    scalars,
    unavailable,
)

#: Biomarker rows shown before the "more rows" fold-out.
BIOMARKER_ROWS = 25


def _finding_block(finding: Any) -> Markup:
    text = finding_text(finding)
    details: list[Any] = []
    flagged = False
    if isinstance(finding, Mapping):
        rest = {k: v for k, v in finding.items() if not (isinstance(v, str) and v == text)}
        flat = scalars(rest)
        flagged = any(("artefact" in k or "artifact" in k or "flag" in k) and v is True for k, v in flat.items())
        if flat:
            details.append(mapping_table(flat, "detail", "value"))
    return element("div", element("b", text), *details, class_="finding flagged" if flagged else "finding")


def _trust(run: RunFolder) -> list[tuple[str, Any]]:
    """Trust-check blocks found in metrics.json (top-level or under explanation/biomarkers)."""
    found = []
    for scope in (run.metrics, run.metrics.get("explanation") or {}, run.metrics.get("biomarkers") or {}):
        if not isinstance(scope, Mapping):
            continue
        for key, value in scope.items():
            if any(word in key for word in ("trust", "sanity", "faithful", "control", "edge")) and value:
                found.append((key, value))
    return found


def _nested(value: Any) -> Markup:
    """A nested JSON value as tables (dicts of scalars) or text."""
    records = records_table(value)
    if records is not None:
        return records
    if isinstance(value, Mapping):
        flat = scalars(value)
        rest = {k: v for k, v in value.items() if k not in flat and not any(s.startswith(f"{k}.") for s in flat)}
        return join([mapping_table(flat, "item", "value") if flat else "",
                     *(join([element("h4", k), _nested(v)]) for k, v in rest.items())])
    return paragraph(str(value))


def biomarkers_section(report: ReportContext) -> Markup:
    """Findings with their trust checks, channel attribution and the biomarker table."""
    run = report.run
    body: list[Any] = [element("h3", "Findings")]
    found = findings(run)
    body += [_finding_block(f) for f in found] if found else [
        unavailable("Findings", "metrics.json['findings']")]
    trust = _trust(run)
    body.append(element("h3", "Trust checks"))
    if trust:
        for key, value in trust:
            body += [element("h4", key.replace("_", " ")), _nested(value)]
    else:
        body.append(unavailable("Trust checks", "the trust-check entries of metrics.json"))
    attribution = run.metrics.get("channel_attribution")
    body.append(element("h3", "Channel attribution"))
    if isinstance(attribution, Mapping) and attribution and all(isinstance(v, Mapping) for v in attribution.values()):
        numeric = {str(c): {str(ch): float(v) for ch, v in values.items() if isinstance(v, (int, float))}
                   for c, values in attribution.items()}
        numeric = {c: v for c, v in numeric.items() if v}
        if numeric:
            channels = sorted({ch for values in numeric.values() for ch in values})
            body += [table(["condition", *channels], ([c, *(v.get(ch) for ch in channels)] for c, v in numeric.items())),
                     image(report.figures.save(fig.attribution_plot(numeric), "attribution"),
                           "channel attribution", "Drop in the target-class probability when one channel is "
                           "occluded (set to its mean inside the nucleus).")]
    else:
        body.append(unavailable("Channel attribution", "metrics.json['channel_attribution']"))
    body += [element("h3", "Biomarker table"), _biomarker_table(run)]
    return join(body)


def _biomarker_table(run: RunFolder) -> Markup:
    frame = run.biomarkers
    if frame is None:
        return unavailable("Biomarker table", "biomarkers.csv")
    if frame.empty:
        return note("biomarkers.csv has no rows.")
    sort_by = [c for c in ("q_value", "p_value") if c in frame]
    if sort_by:
        frame = frame.sort_values(sort_by, na_position="last", kind="mergesort")
    columns = list(frame.columns)
    significant = (frame["q_value"] < SIGNIFICANCE).to_numpy() if "q_value" in frame else np.zeros(len(frame), bool)

    def render(part: Any, flags: np.ndarray) -> Markup:
        rows = [[None if isinstance(v, float) and math.isnan(v) else v for v in row]
                for row in part.itertuples(index=False)]
        return table(columns, rows, row_classes=["significant" if f else None for f in flags], digits=4)

    summary = paragraph(f"{len(frame)} rows, sorted by q-value; {int(significant.sum())} with "
                        f"q < {SIGNIFICANCE} (highlighted). Benjamini-Hochberg q-values; the unit column "
                        "says whether images or cells were compared.")
    head = render(frame.iloc[:BIOMARKER_ROWS], significant[:BIOMARKER_ROWS])
    if len(frame) <= BIOMARKER_ROWS:
        return join([summary, head])
    rest = render(frame.iloc[BIOMARKER_ROWS:], significant[BIOMARKER_ROWS:])
    return join([summary, head, element("details", element("summary", f"{len(frame) - BIOMARKER_ROWS} more rows"), rest)])
