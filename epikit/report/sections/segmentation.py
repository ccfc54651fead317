"""Segmentation section: nuclei per image and condition, label outlines over sample fields."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.report import summaries
from epikit.report.html import Markup, element, image, join, mapping_table, note, table
from epikit.runfolder.reader import RunFolder
from epikit.report.sections.common import ReportContext, scalars, unavailable

#: Sample fields overlaid per condition.
FIELDS_PER_CONDITION = 2


def _image_table(run: RunFolder) -> tuple[Any, str] | None:
    """Per image: condition, path and a count; from segmentation.csv, else cells.parquet."""
    import pandas as pd

    table_ = run.segmentation
    if table_ is not None and "condition" in table_:
        count = next((c for c in ("n_nuclei", "nuclei") if c in table_), None)
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
        body += [mapping_table(scalars(seg_metrics), "metric", "value")]
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


def _nuclear_channel(run: RunFolder) -> int | str:
    """The segment stage's nuclear channel (index or name) from the manifest; default 0."""
    parameters = run.manifest.get("parameters")
    segment = parameters.get("segment") if isinstance(parameters, Mapping) else None
    return segment.get("nuclear_channel", 0) if isinstance(segment, Mapping) else 0


def _overlays(report: ReportContext, frame: Any) -> list[Markup]:
    """Label outlines over the nuclear channel of a few fields per condition."""
    from epikit.errors import EpikitError
    from epikit.io import read_image, read_labels, read_record
    from epikit.segmentation import resolve_channel

    run = report.run
    if "path" not in frame or "image_id" not in frame:
        return [unavailable("Segmentation overlays", "the image path and id columns")]
    shown: list[Markup] = []
    for condition in sorted(frame["condition"].unique()):
        subset = frame[frame["condition"] == condition].sort_values("path")
        for index in summaries.spread_indices(len(subset), FIELDS_PER_CONDITION):
            path, image_id = str(subset["path"].iloc[index]), str(subset["image_id"].iloc[index])
            mask = run.mask_file(image_id)
            if not mask.is_file():
                shown.append(note(f"No mask for {path} ({mask.relative_to(run.path)} missing)."))
                continue
            try:
                record = run.input_record(image_id)
                pixels = read_record(record) if record is not None else read_image(path)
                channel = pixels.array[resolve_channel(_nuclear_channel(run), pixels.channel_names)]
            except EpikitError as error:
                shown.append(note(f"No overlay for {path}: {error}"))
                continue
            labels = read_labels(mask)
            title = f"{condition}: {mask.stem} ({int(len(np.unique(labels)) - (labels == 0).any())} nuclei)"
            src = report.figures.save(fig.segmentation_overlay(channel, labels, title), "overlay",
                                      mask.relative_to(run.path).as_posix())  # no absolute path in names
            shown.append(image(src, f"segmentation of {path}", title))
    return shown or [note("No sample fields to show.")]
