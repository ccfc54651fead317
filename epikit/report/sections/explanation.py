"""Explanation section: a gallery of crops with their maps, and average maps per condition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.report import summaries
from epikit.report.html import Markup, element, image, join, mapping_table, note
from epikit.report.run_folder import MapSet, RunFolder
from epikit.report.sections.common import ReportContext, scalars, unavailable

#: Example cells per condition in the gallery.
MAPS_PER_CONDITION = 6


def map_rows(run: RunFolder, map_set: MapSet) -> Any | None:
    """cells.parquet rows of the explained cells, with their row in the map array."""
    import pandas as pd

    cells = run.cells
    if cells is None or "cell_id" not in cells:
        return None
    positions = pd.DataFrame({"cell_id": map_set.cell_ids, "map_row": np.arange(len(map_set.cell_ids))})
    return positions.merge(cells, on="cell_id", how="inner")


def _view_channel(map_set: MapSet, channel_names: list[str]) -> int:
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
        body.append(mapping_table(scalars(explanation), "explanation", "value"))
    for map_set in run.map_sets:
        rows = map_rows(run, map_set)
        described = ", ".join(f"{k} {map_set.attrs[k]}" for k in ("explainer", "layer", "target") if k in map_set.attrs)
        body.append(element("h3", f"View: {map_set.name}" + (f" ({described})" if described else "")))
        if rows is None or rows.empty:
            body.append(note("The maps' cell ids do not match cells.parquet."))
            continue
        channel = _view_channel(map_set, run.crops.channel_names)
        body.append(_gallery(report, map_set, rows, channel))
        body.append(_averages(report, map_set, rows))
    return join(body)


def _gallery(report: ReportContext, map_set: MapSet, rows: Any, channel: int) -> Markup:
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


def _averages(report: ReportContext, map_set: MapSet, rows: Any) -> Markup:
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
