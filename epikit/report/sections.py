"""The report's sections, each rendered from whatever the run folder holds.

Every section is a function ``(report: ReportContext) -> Markup``. A section whose
artefact is missing returns a short "not available" note; it never fails because an
earlier stage did not run. User strings reach the page only through
:mod:`epikit.report.html` (escaped) and reach figure file names only through
:func:`epikit.report.figures.safe_name`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.report import summaries
from epikit.report.html import (
    Markup,
    element,
    image,
    join,
    mapping_table,
    note,
    paragraph,
    table,
    warning,
)
from epikit.report.run_folder import RunFolder

#: Examples shown per condition in the crop grid and the explanation gallery.
CROPS_PER_CONDITION = 3
MAPS_PER_CONDITION = 6
#: Sample fields overlaid per condition.
FIELDS_PER_CONDITION = 2
#: Biomarker rows shown before the "all rows" fold-out.
BIOMARKER_ROWS = 25
SIGNIFICANCE = 0.05


@dataclass
class ReportContext:
    """What sections share: the run folder, the figure writer and collected warnings."""

    run: RunFolder
    figures: fig.FigureWriter
    warnings: list[Markup] = field(default_factory=list)


def unavailable(what: str, needs: str) -> Markup:
    """The note a section shows when its artefact is missing."""
    return note(f"{what} not available: {needs} is missing from this run folder.")


def _scalars(mapping: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Scalar entries of a mapping, one nesting level flattened as ``outer.inner``."""
    found: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in skip:
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            found[str(key)] = value
        elif isinstance(value, Mapping):
            for inner, inner_value in value.items():
                if isinstance(inner_value, (str, int, float, bool)):
                    found[f"{key}.{inner}"] = inner_value
    return found


def _walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (key path, value) pair in nested dicts and lists."""
    yield path, value
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _walk(inner, (*path, str(key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _walk(inner, (*path, str(index)))


def _records_table(records: Any) -> Markup | None:
    """A list of flat dicts, or a dict of flat dicts, as a table (``None`` if neither)."""
    if isinstance(records, Mapping) and records and all(isinstance(v, Mapping) for v in records.values()):
        records = [{"": key, **value} for key, value in records.items()]
    if not isinstance(records, list) or not records or not all(isinstance(r, Mapping) for r in records):
        return None
    columns: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in columns and not isinstance(value, (Mapping, list)):
                columns.append(key)
    return table(columns, ([r.get(c) for c in columns] for r in records))


# ---------------------------------------------------------------------------- overview


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
                              ". Channels: ", ", ".join(run.channel_names) or "unknown", "."))
    findings = _findings(run)
    if findings:
        body.append(paragraph(element("b", "Top finding: "), _finding_text(findings[0])))
    return join(body)


# ---------------------------------------------------------------------------- warnings


def _warning_texts(run: RunFolder) -> list[str]:
    texts: list[str] = []
    for skipped in run.manifest.get("skipped_inputs") or []:
        if isinstance(skipped, Mapping):
            texts.append(f"Skipped input file {skipped.get('path')}: {skipped.get('reason')}")
    parameters = run.manifest.get("parameters") or {}
    train = parameters.get("train") if isinstance(parameters, Mapping) else None
    if isinstance(train, Mapping) and train.get("split") == "cell":
        texts.append("Cells were split at random (split = cell): cells of one field sit in both "
                     "training and test sets, which can overestimate accuracy.")
    for path, value in _walk(run.metrics):
        key = path[-1].lower() if path else ""
        where = ".".join(path)
        if "clipped" in key and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            texts.append(f"{value:g} nuclei were clipped by the crop size ({where}); "
                         "raise the crop size or use --scale fit.")
        elif "confound" in key and value and isinstance(value, (str, bool)):
            texts.append(f"Confound check ({where}): {value if isinstance(value, str) else 'condition is confounded with a batch column'}")
        elif key == "confounded" and value is True:
            texts.append(f"Confound check ({where}): condition is confounded with a batch column.")
        elif key == "empty_images" and isinstance(value, list) and value:
            shown = ", ".join(str(v) for v in value[:5]) + (" ..." if len(value) > 5 else "")
            texts.append(f"{len(value)} label image(s) hold no nucleus ({shown}).")
        elif key in {"warning", "warnings"}:
            items = value if isinstance(value, list) else [value]
            texts.extend(str(item) for item in items if isinstance(item, str) and item)
        elif key == "message" and len(path) >= 2 and "confound" in path[-2].lower() and value:
            texts.append(f"Confound check: {value}")
    unique: list[str] = []
    for text in texts:
        if text not in unique:
            unique.append(text)
    return unique


def warnings_section(report: ReportContext) -> Markup:
    """Confounds, clipped nuclei, skipped files, leaky splits and report problems."""
    items = [warning(text) for text in _warning_texts(report.run)] + report.warnings
    return join(items) if items else note("No warnings.")


# ---------------------------------------------------------------------------- inputs


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
    plugins = _records_table(manifest.get("plugins"))
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


# ---------------------------------------------------------------------------- segmentation


def _image_table(run: RunFolder) -> tuple[Any, str] | None:
    """Per image: condition, path and a count; from segmentation.csv, else cells.parquet."""
    import pandas as pd

    table_ = run.segmentation
    if table_ is not None and "condition" in table_:
        count = next((c for c in ("nuclei", "n_nuclei", "count", "cells") if c in table_), None)
        if count is not None:
            frame = table_.rename(columns={count: "count"})
            return frame, "nuclei segmented"
    cells = run.cells
    if cells is not None and {"image_id", "condition"} <= set(cells):
        extra = ["path"] if "path" in cells else []
        frame = cells.groupby(["image_id", "condition", *extra], sort=True).size().rename("count").reset_index()
        return pd.DataFrame(frame), "cells kept after extraction"
    return None


def segmentation_section(report: ReportContext) -> Markup:
    """Counts per image and condition, and label outlines over sample fields."""
    run = report.run
    body: list[Any] = []
    seg_metrics = run.metrics.get("segmentation")
    if isinstance(seg_metrics, Mapping) and seg_metrics:
        body += [mapping_table(_scalars(seg_metrics), "metric", "value")]
    found = _image_table(run)
    if found is None:
        body.append(unavailable("Counts per image", "segmentation.csv (and cells.parquet)"))
        return join(body)
    frame, what = found
    frame["condition"] = frame["condition"].astype(str)
    counts = {c: frame.loc[frame["condition"] == c, "count"].to_numpy() for c in sorted(frame["condition"].unique())}
    rows = [[c, len(v), int(v.sum()), float(v.mean()) if len(v) else math.nan,
             int(v.min()) if len(v) else 0, int(v.max()) if len(v) else 0] for c, v in counts.items()]
    body += [element("h3", f"Counts ({what})"),
             table(["condition", "images", what, "mean per image", "min", "max"], rows),
             image(report.figures.save(fig.counts_per_image(counts, what), "counts"),
                   f"{what} per image", f"{what.capitalize()} per image; bar = median.")]
    id_column = "image_id" if "image_id" in frame else ("path" if "path" in frame else None)
    if id_column is not None:
        body.append(element("details", element("summary", "counts for every image"),
                            table([id_column, "condition", "count"],
                                  frame[[id_column, "condition", "count"]].itertuples(index=False))))
    body += [element("h3", "Sample fields")] + _overlays(report, frame)
    return join(body)


def _overlays(report: ReportContext, frame: Any) -> list[Markup]:
    from epikit.errors import InputError
    from epikit.io import read_image, read_labels

    run = report.run
    if "path" not in frame:
        return [unavailable("Segmentation overlays", "the image path column")]
    parameters = run.manifest.get("parameters") or {}
    nuclear = int(((parameters.get("segment") or {}) if isinstance(parameters, Mapping) else {}).get("nuclear_channel", 0))
    shown: list[Markup] = []
    for condition in sorted(frame["condition"].unique()):
        subset = frame[frame["condition"] == condition].sort_values("path")
        for index in summaries.spread_indices(len(subset), FIELDS_PER_CONDITION):
            path = str(subset["path"].iloc[index])
            mask = run.mask_file(path, condition)
            if not mask.is_file():
                shown.append(note(f"No mask for {path} ({mask.relative_to(run.path)} missing)."))
                continue
            try:
                pixels = read_image(path).array
            except InputError as error:
                shown.append(note(f"Input image not readable for the overlay: {error}"))
                continue
            labels = read_labels(mask)
            channel = pixels[min(nuclear, pixels.shape[0] - 1)]
            title = f"{condition}: {mask.stem} ({int(len(np.unique(labels)) - (labels == 0).any())} nuclei)"
            src = report.figures.save(fig.segmentation_overlay(channel, labels, title), "overlay", path)
            shown.append(image(src, f"segmentation of {path}", title))
    return shown or [note("No sample fields to show.")]


# ---------------------------------------------------------------------------- crops


def _channel_ranges(crops: np.ndarray, masks: np.ndarray | None) -> list[tuple[float, float]]:
    inside = None if masks is None else np.broadcast_to(masks, crops[:, 0].shape)
    return [fig.display_range(crops[:, c], inside) for c in range(crops.shape[1])]


def crops_section(report: ReportContext) -> Markup:
    """A few crops per condition, one column per channel, on a shared intensity scale."""
    run = report.run
    if run.crops is None or run.cells is None or "crop_index" not in run.cells:
        return unavailable("Example crops", "crops.zarr or cells.parquet")
    cells = run.cells.sort_values("cell_id" if "cell_id" in run.cells else "crop_index")
    picked: dict[str, tuple[list[int], list[str]]] = {}
    for condition in run.conditions:
        subset = cells[cells["condition"].astype(str) == condition]
        rows = [subset.iloc[i] for i in summaries.spread_indices(len(subset), CROPS_PER_CONDITION)]
        picked[condition] = ([int(r["crop_index"]) for r in rows], [str(r.get("cell_id", "")) for r in rows])
    all_indices = [i for indices, _ in picked.values() for i in indices]
    if not all_indices:
        return note("No cells in cells.parquet.")
    crops = run.crops.read(all_indices)
    masks = run.crops.read_masks(all_indices)
    ranges = _channel_ranges(crops, masks)
    examples, start = {}, 0
    for condition, (indices, ids) in picked.items():
        examples[condition] = (crops[start:start + len(indices)], ids)
        start += len(indices)
    src = report.figures.save(fig.crop_grid(examples, run.crops.channel_names, ranges), "crops")
    caption = (f"Cells spread over each condition ({CROPS_PER_CONDITION} per row block); each channel "
               "uses one intensity scale for all conditions.")
    extraction = run.metrics.get("extraction")
    described = _scalars(extraction) if isinstance(extraction, Mapping) else {
        k: v for k, v in run.crops.attrs.items() if isinstance(v, (str, int, float, bool))}
    return join([image(src, "example crops per condition and channel", caption),
                 element("h3", "Extraction"), mapping_table(described, "item", "value")])


# ---------------------------------------------------------------------------- classification


#: Numeric per-epoch keys that are not curves.
_NOT_CURVES = {"epoch", "epochs", "fold", "lr", "learning_rate", "seconds", "time", "step"}


def _curves(training: Any) -> dict[str, dict[str, list[float]]]:
    """Per-epoch series found anywhere in training.json, labelled by their key path.

    Accepts lists of numbers (``{"train_loss": [...]}``) and lists of flat per-epoch records
    (``[{"epoch": 1, "train_loss": ...}, ...]``).
    """
    curves: dict[str, dict[str, list[float]]] = {}

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    for path, value in _walk(training):
        if not isinstance(value, list) or len(value) < 2 or not path:
            continue
        if all(number(v) for v in value) and path[-1] not in _NOT_CURVES:
            curves.setdefault(" ".join(path[:-1]) or "training", {})[path[-1]] = [float(v) for v in value]
        elif all(isinstance(r, Mapping) and not any(isinstance(v, (Mapping, list)) for v in r.values())
                 for r in value):
            keys = [k for k, v in value[0].items() if number(v) and k not in _NOT_CURVES]
            for key in keys:
                series = [r.get(key) for r in value]
                if all(number(v) for v in series):
                    curves.setdefault(" ".join(path), {})[key] = [float(v) for v in series]
    return curves


def _classes(run: RunFolder) -> list[str]:
    cells = run.cells
    if cells is None:
        return []
    prob = [c[len("prob_"):] for c in cells.columns if c.startswith("prob_")]
    return prob or sorted(str(c) for c in cells["condition"].unique())


def _tested_cells(run: RunFolder) -> Any | None:
    cells = run.cells
    if cells is None or "prediction" not in cells:
        return None
    if "fold" in cells:
        cells = cells[cells["fold"].fillna(-1).astype(int) >= 0]
    return cells[cells["prediction"].notna()]


def _roc(report: ReportContext, tested: Any, classes: list[str]) -> Markup:
    probability_columns = [f"prob_{c}" for c in classes]
    if not all(c in tested for c in probability_columns) or len(classes) < 2:
        return unavailable("ROC curve", "the out-of-fold prob_<class> columns of cells.parquet")
    truth = tested["condition"].astype(str).to_numpy()
    curves, thin = [], []
    targets = classes[1:] if len(classes) == 2 else classes
    for target in targets:
        positive = truth == target
        if positive.all() or not positive.any():
            continue
        fpr, tpr, auc = summaries.roc_points(positive, tested[f"prob_{target}"].to_numpy())
        label = f"{target} vs {classes[0]}" if len(classes) == 2 else f"{target} vs rest"
        curves.append((label, fpr, tpr, auc))
        if len(classes) == 2 and "fold" in tested:
            for _, fold in tested.groupby("fold"):
                fold_positive = fold["condition"].astype(str).to_numpy() == target
                if fold_positive.any() and not fold_positive.all():
                    thin.append(summaries.roc_points(fold_positive, fold[f"prob_{target}"].to_numpy())[:2])
    if not curves:
        return note("ROC curve not available: the tested cells hold a single condition.")
    src = report.figures.save(fig.roc_plot(curves, thin), "roc")
    return image(src, "ROC curve", "Out-of-fold ROC over all test cells (grey: each fold).")


def _confusion(report: ReportContext, tested: Any | None, classification: Mapping[str, Any],
               classes: list[str]) -> Markup:
    if tested is not None and len(tested):
        names = sorted(set(classes) | set(tested["condition"].astype(str)) | set(tested["prediction"].astype(str)))
        matrix = summaries.confusion_counts(tested["condition"].astype(str), tested["prediction"].astype(str), names)
    elif isinstance(classification.get("confusion_matrix"), list):
        matrix = np.asarray(classification["confusion_matrix"])
        names = [str(c) for c in classification.get("classes") or classification.get("labels") or range(len(matrix))]
        if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
            return note("Confusion matrix in metrics.json has an unexpected shape.")
    else:
        return unavailable("Confusion matrix", "the prediction column of cells.parquet")
    src = report.figures.save(fig.confusion_plot(matrix, names), "confusion", *names)
    return image(src, "confusion matrix", "Out-of-fold confusion matrix (cells; rows: true condition).")


def classification_section(report: ReportContext) -> Markup:
    """Headline metrics, training curves, ROC, confusion matrix and per-fold table."""
    run = report.run
    classification = run.metrics.get("classification") or {}
    if not classification and run.cells is not None and "prediction" not in run.cells and not run.training:
        return unavailable("Classification", "metrics.json['classification'] (and the prediction columns)")
    body: list[Any] = []
    headline = _scalars(classification, skip=("folds", "confusion_matrix", "classes", "labels"))
    if headline:
        body += [element("h3", "Metrics (out-of-fold)"), mapping_table(headline, "metric", "value")]
    curves = _curves(run.training)
    body.append(element("h3", "Training curves"))
    if curves:
        body.append(image(report.figures.save(fig.training_curves(curves), "training-curves"),
                          "training curves", "Per epoch; dashed: validation."))
    else:
        body.append(unavailable("Training curves", "model/training.json"))
    tested = _tested_cells(run)
    classes = _classes(run)
    body.append(element("h3", "ROC and confusion matrix"))
    body.append(_roc(report, tested, classes) if tested is not None and len(tested)
                else unavailable("ROC curve", "the out-of-fold columns of cells.parquet"))
    body.append(_confusion(report, tested, classification, classes))
    folds = _records_table(classification.get("folds"))
    body.append(element("h3", "Per fold"))
    body.append(folds if folds is not None else unavailable("Per-fold table", "metrics.json['classification']['folds']"))
    return join(body)


# ---------------------------------------------------------------------------- explanations


def _map_rows(run: RunFolder, map_set: Any) -> Any | None:
    """cells.parquet rows of the explained cells, with their row in the map array."""
    import pandas as pd

    cells = run.cells
    if cells is None or "cell_id" not in cells:
        return None
    positions = pd.DataFrame({"cell_id": map_set.cell_ids, "map_row": np.arange(len(map_set.cell_ids))})
    return positions.merge(cells, on="cell_id", how="inner")


def _view_channel(map_set: Any, channel_names: list[str]) -> int:
    """Which crop channel to show under a view's maps: the view's channel, else the first."""
    names = map_set.attrs.get("channels") or [map_set.name]
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name in channel_names:
            return channel_names.index(name)
    return 0


def explanation_section(report: ReportContext) -> Markup:
    """Per view: a gallery of crops with their maps, and the average map per condition."""
    run = report.run
    if not run.map_sets:
        return unavailable("Explanation maps", "maps.zarr")
    if run.crops is None or run.cells is None:
        return unavailable("Explanation gallery", "crops.zarr or cells.parquet")
    body: list[Any] = []
    explanation = run.metrics.get("explanation")
    if isinstance(explanation, Mapping) and explanation:
        body.append(mapping_table(_scalars(explanation), "explanation", "value"))
    for map_set in run.map_sets:
        rows = _map_rows(run, map_set)
        described = ", ".join(f"{k} {map_set.attrs[k]}" for k in ("explainer", "layer", "target") if k in map_set.attrs)
        body.append(element("h3", f"View: {map_set.name}" + (f" ({described})" if described else "")))
        if rows is None or rows.empty:
            body.append(note("The maps' cell ids do not match cells.parquet."))
            continue
        channel = _view_channel(map_set, run.crops.channel_names)
        body.append(_gallery(report, map_set, rows, channel))
        body.append(_averages(report, map_set, rows))
    return join(body)


def _gallery(report: ReportContext, map_set: Any, rows: Any, channel: int) -> Markup:
    run = report.run
    picks = {c: rows[rows["condition"].astype(str) == c].sort_values("cell_id") for c in run.conditions}
    picks = {c: frame.iloc[summaries.spread_indices(len(frame), MAPS_PER_CONDITION)]
             for c, frame in picks.items() if len(frame)}
    if not picks:
        return note("No explained cells.")
    crop_rows = np.concatenate([f["crop_index"].to_numpy() for f in picks.values()])
    map_rows = np.concatenate([f["map_row"].to_numpy() for f in picks.values()])
    crops = run.crops.read(crop_rows)[:, channel]
    masks = run.crops.read_masks(crop_rows)
    maps = map_set.read(map_rows)
    if maps.shape[-2:] != crops.shape[-2:]:
        return note(f"Maps ({maps.shape[-1]} px) and crops ({crops.shape[-1]} px) differ in size.")
    gallery, start = {}, 0
    for condition, frame in picks.items():
        stop = start + len(frame)
        gallery[condition] = [(crops[i], maps[i], None if masks is None else masks[i]) for i in range(start, stop)]
        start = stop
    range_ = fig.display_range(crops, masks)
    src = report.figures.save(fig.explanation_gallery(gallery, range_), "gallery", map_set.name)
    caption = (f"Channel {run.crops.channel_names[channel]} (top) and the explanation map over it "
               "(bottom) for cells spread over each condition.")
    return image(src, f"explanation gallery, view {map_set.name}", caption)


def _averages(report: ReportContext, map_set: Any, rows: Any) -> Markup:
    """Average map per condition; maps are aligned when crops.zarr says the crops were."""
    run = report.run
    averages = {}
    for condition in run.conditions:
        subset = rows[rows["condition"].astype(str) == condition]
        if subset.empty:
            continue
        maps = map_set.read(subset["map_row"].to_numpy())
        averages[condition] = (maps.mean(axis=0), len(subset))
    if not averages:
        return note("No maps to average.")
    aligned = str(run.crops.attrs.get("align", "none")).lower() not in {"none", "", "false"}
    caption = ("Mean map per condition over nuclei aligned to their major axis."
               if aligned else "Mean map per condition (crops were not aligned; run with "
               "extract.align = \"major-axis\" for aligned averages).")
    src = report.figures.save(fig.average_maps(averages), "average-maps", map_set.name)
    return image(src, f"average maps, view {map_set.name}", caption)


# ---------------------------------------------------------------------------- shells


def _shell_columns(columns: list[str], channel: str, statistic: str = "share") -> list[str]:
    found = []
    k = 1
    while f"{channel}_shell_{k}_{statistic}" in columns:
        found.append(f"{channel}_shell_{k}_{statistic}")
        k += 1
    return found


def _map_shell_shares(report: ReportContext, map_set: Any, rows: Any) -> Any | None:
    """Per explained cell: each shell's share of the map (the image features' shells)."""
    from epikit.analysis.shells import shell_means, shell_regions, shell_shares

    run = report.run
    masks = run.crops.read_masks(rows["crop_index"].to_numpy())
    if masks is None:
        return None
    n_shells = int(run.crops.attrs.get("n_shells", 5))
    maps = map_set.read(rows["map_row"].to_numpy())
    shares = shell_shares(shell_means(maps, shell_regions(masks, n_shells), n_shells))
    frame = rows[["image_id", "condition"]].copy()
    for k in range(n_shells):
        frame[f"shell_{k + 1}"] = shares[:, k]
    return frame


def shells_section(report: ReportContext) -> Markup:
    """Shell profiles (rim ... centre) per channel for images and maps, bands over images."""
    run = report.run
    body: list[Any] = [element("h3", "Image intensity")]
    cells = run.cells
    panels = {}
    if cells is not None and "image_id" in cells:
        columns = list(cells.columns)
        for channel in run.channel_names:
            shell_columns = _shell_columns(columns, channel)
            if shell_columns:
                frame = cells.assign(condition=cells["condition"].astype(str))
                panels[channel] = summaries.profiles_by_condition(frame, shell_columns)
    if panels:
        src = report.figures.save(fig.shell_profiles(panels, "share of shell means"), "shells-image")
        body.append(image(src, "image shell profiles",
                          "Each shell's share of the summed shell means (shell 1 = rim); line: mean over "
                          "images, band: 95% bootstrap interval over images."))
    else:
        body.append(unavailable("Image shell profiles", "the <channel>_shell_<k>_share columns of cells.parquet"))
    body.append(element("h3", "Explanation maps"))
    map_panels = {}
    if run.crops is not None:
        for map_set in run.map_sets:
            rows = _map_rows(run, map_set)
            if rows is None or rows.empty:
                continue
            shares = _map_shell_shares(report, map_set, rows)
            if shares is not None:
                map_panels[map_set.name] = summaries.profiles_by_condition(
                    shares, [c for c in shares.columns if c.startswith("shell_")])
    if map_panels:
        src = report.figures.save(fig.shell_profiles(map_panels, "share of map"), "shells-map")
        body.append(image(src, "map shell profiles",
                          "Each shell's share of the explanation map, per view; band: 95% bootstrap "
                          "interval over images."))
    else:
        body.append(unavailable("Map shell profiles", "maps.zarr with crops.zarr masks"))
    return join(body)


# ---------------------------------------------------------------------------- biomarkers


def _findings(run: RunFolder) -> list[Any]:
    findings = run.metrics.get("findings")
    return list(findings) if isinstance(findings, list) else []


def _finding_text(finding: Any) -> str:
    if isinstance(finding, Mapping):
        for key in ("text", "summary", "finding", "description", "message"):
            if isinstance(finding.get(key), str):
                return finding[key]
        return ", ".join(f"{k}={fig_value}" for k, fig_value in _scalars(finding).items())
    return str(finding)


def _finding_block(finding: Any) -> Markup:
    text = _finding_text(finding)
    details: list[Any] = []
    flagged = False
    if isinstance(finding, Mapping):
        rest = {k: v for k, v in finding.items() if not (isinstance(v, str) and v == text)}
        scalars = _scalars(rest)
        flagged = any(("artefact" in k or "artifact" in k or "flag" in k) and v is True for k, v in scalars.items())
        if scalars:
            details.append(mapping_table(scalars, "detail", "value"))
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
    records = _records_table(value)
    if records is not None:
        return records
    if isinstance(value, Mapping):
        scalars = _scalars(value)
        rest = {k: v for k, v in value.items() if k not in scalars and not any(s.startswith(f"{k}.") for s in scalars)}
        return join([mapping_table(scalars, "item", "value") if scalars else "",
                     *(join([element("h4", k), _nested(v)]) for k, v in rest.items())])
    return paragraph(str(value))


def biomarkers_section(report: ReportContext) -> Markup:
    """Findings with their trust checks, channel attribution and the biomarker table."""
    run = report.run
    body: list[Any] = [element("h3", "Findings")]
    findings = _findings(run)
    body += [_finding_block(f) for f in findings] if findings else [
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


#: (anchor, navigation label, title, section function) in page order.
SECTIONS: tuple[tuple[str, str, str, Callable[[ReportContext], Markup]], ...] = (
    ("overview", "Overview", "Overview", overview),
    ("inputs", "Inputs", "Inputs and parameters", inputs_section),
    ("segmentation", "Segmentation", "Segmentation", segmentation_section),
    ("crops", "Crops", "Example crops", crops_section),
    ("classification", "Classification", "Classification", classification_section),
    ("explanation", "Explanations", "Explanation maps", explanation_section),
    ("shells", "Shell profiles", "Shell profiles", shells_section),
    ("biomarkers", "Biomarkers", "Findings and biomarkers", biomarkers_section),
)
