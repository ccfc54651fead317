"""The page's opening sections: overview, warnings, inputs and parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from epikit.report.html import Markup, element, join, mapping_table, note, paragraph, table, warning
from epikit.runfolder.reader import RunFolder
from epikit.report.sections.common import (
    ReportContext,
    finding_text,
    findings,
    is_number,
    records_table,
    unavailable,
    walk,
)


def overview(report: ReportContext) -> Markup:
    """Headline numbers: conditions, images, cells, accuracy, top finding."""
    run = report.run
    cards: list[tuple[str, Any]] = [("conditions", len(run.conditions))]
    if run.cells is not None:
        cards.append(("images", int(run.cells["image_id"].nunique()) if "image_id" in run.cells else "?"))
        cards.append(("cells", len(run.cells)))
    elif run.manifest.get("inputs"):
        cards.append(("images", len(run.manifest["inputs"])))
    classification = run.metrics.get("classification") or {}
    for key, label in (("balanced_accuracy", "balanced accuracy"), ("roc_auc", "ROC AUC")):
        if isinstance(classification.get(key), (int, float)):
            cards.append((label, f"{classification[key]:.3f}"))
    body = [element("div", *(element("div", element("b", str(v)), k, class_="card") for k, v in cards),
                    class_="cards")]
    if run.conditions:
        body.append(paragraph("Conditions: ", ", ".join(run.conditions),
                              ". Channels: ", ", ".join(run.channel_names) or "unknown", ". ",
                              reading_text(run.manifest.get("reading"))))
    found = findings(run)
    if found:
        trust = found[0].get("trust") if isinstance(found[0], Mapping) else None
        flags = [str(f) for f in trust.get("flags") or []] if isinstance(trust, Mapping) else []
        body.append(paragraph(element("b", "Top finding: "), finding_text(found[0]),
                              f" (flags: {'; '.join(flags)})" if flags else ""))
    return join(body)


def reading_text(reading: Any) -> str:
    """Pixel size (with its source) and the Z projection of a run, as the manifest records them."""
    if not isinstance(reading, Mapping):
        return ""
    size = reading.get("pixel_size_um")
    text = (f"Pixel size: {size:.4g} µm (from {reading.get('pixel_size_source')}); lengths in µm, areas in µm²."
            if is_number(size) else "Pixel size: unknown (lengths and areas in pixels; set --pixel-size for µm).")
    planes = reading.get("max_z_planes")
    if is_number(planes) and planes > 1:
        how = {"max": "maximum projection", "mean": "mean projection",
               "best": "the sharpest plane of the nuclear channel"}.get(str(reading.get("z")),
                                                                      f"plane {reading.get('z')}")
        default = " (the default; choose with --z max|mean|best|N)" if reading.get("z_default") else ""
        text += f" Z-stacks (up to {planes:g} planes) were reduced by {how}{default}."
    return text


def warning_texts(run: RunFolder) -> list[str]:
    """Skipped input files, and every warning the stages recorded in metrics.json.

    Stages record warnings as strings in a ``warnings`` list anywhere in their metrics
    section; clipped nuclei (``n_clipped``), label images without nuclei
    (``empty_images``) and ``confounded: true`` are recognised too.
    """
    texts: list[str] = []
    for skipped in run.manifest.get("skipped_inputs") or []:
        if isinstance(skipped, Mapping):
            texts.append(f"Skipped input file {skipped.get('path')}: {skipped.get('reason')}")
    for path, value in walk(run.metrics):
        key = path[-1].lower() if path else ""
        where = ".".join(path)
        if key in {"warning", "warnings"}:
            items = value if isinstance(value, list) else [value]
            texts.extend(str(item) for item in items if isinstance(item, str) and item)
        elif "clipped" in key and is_number(value) and value > 0:
            texts.append(f"{value:g} nuclei were clipped by the crop size ({where}); "
                         "raise the crop size or use --scale fit.")
        elif key == "empty_images" and isinstance(value, list) and value:
            shown = ", ".join(str(v) for v in value[:5]) + (" ..." if len(value) > 5 else "")
            texts.append(f"{len(value)} label image(s) hold no nucleus ({shown}).")
        elif key == "confounded" and value is True:
            texts.append(f"Confound check ({where}): condition is confounded with a batch column.")
    return list(dict.fromkeys(texts))  # each once, in order


def warnings_section(report: ReportContext) -> Markup:
    """Skipped files, stage warnings (confounds, leaky splits, clipped nuclei), report problems."""
    items = [warning(text) for text in warning_texts(report.run)] + report.warnings
    return join(items) if items else note("No warnings.")


def inputs_section(report: ReportContext) -> Markup:
    """Software, plugins, seed, stage timings, input files per condition and the configuration."""
    run = report.run
    manifest = run.manifest
    if not manifest and run.config_text is None:
        return unavailable("Inputs and parameters", "manifest.json (and config.toml)")
    body: list[Any] = []
    environment = {k: manifest[k] for k in ("epikit", "python", "platform", "torch", "device", "seed")
                   if k in manifest}
    if environment:
        body += [element("h3", "Environment"), mapping_table(environment, "item", "value")]
    plugins = records_table(manifest.get("plugins"))
    if plugins is not None:
        body += [element("h3", "Plugins"), plugins]
    seconds = manifest.get("stage_seconds")
    if isinstance(seconds, Mapping) and seconds:
        body += [element("h3", "Seconds per stage"), mapping_table(seconds, "stage", "seconds", digits=2)]
    inputs = [i for i in manifest.get("inputs") or [] if isinstance(i, Mapping)]
    if inputs:
        per_condition: dict[str, int] = {}
        for item in inputs:
            per_condition[str(item.get("condition"))] = per_condition.get(str(item.get("condition")), 0) + 1
        rows = [[i.get("path"), i.get("condition"), i.get("group"), str(i.get("sha256", ""))[:16]]
                for i in inputs]
        body += [element("h3", f"Input images ({len(inputs)})"),
                 mapping_table(per_condition, "condition", "images"),
                 element("details", element("summary", "all input files"),
                         table(["path", "condition", "group", "sha256 (first 16)"], rows))]
    if run.config_text is not None:
        body += [element("h3", "Configuration (config.toml)"), element("pre", run.config_text)]
    elif manifest.get("parameters") is not None:
        body += [element("h3", "Parameters"),
                 element("pre", json.dumps(manifest["parameters"], indent=2, default=str))]
    return join(body)
