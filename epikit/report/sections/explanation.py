"""Explanation section: a gallery of crops with their maps, and aligned average maps per condition."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.report import summaries
from epikit.report.html import Markup, element, image, join, mapping_table, note
from epikit.runfolder.maps import StoredMaps
from epikit.runfolder.reader import RunFolder
from epikit.report.sections.common import ReportContext, records_table, scalars, unavailable

#: Example cells per condition in the gallery.
MAPS_PER_CONDITION = 6


def map_rows(run: RunFolder, map_set: StoredMaps) -> Any | None:
    """cells.parquet rows of the explained cells, with their row in the map array (``map_row``)."""
    import pandas as pd

    cells = run.cells
    if cells is None or "cell_id" not in cells:
        return None
    positions = pd.DataFrame({"cell_id": map_set.cell_ids, "map_row": np.arange(len(map_set.cell_ids))})
    return positions.merge(cells, on="cell_id", how="inner")


def view_channels(map_set: StoredMaps, channel_names: list[str]) -> list[int]:
    """Crop channels of a view (``channel_names`` attribute of its maps), else all channels."""
    names = map_set.attrs.get("channel_names")
    names = [names] if isinstance(names, str) else list(names or [])
    found = [channel_names.index(n) for n in names if n in channel_names]
    return found or list(range(len(channel_names)))


def explanation_section(report: ReportContext) -> Markup:
    """Explainer summary; per view a gallery of crops and maps, and aligned average maps."""
    run = report.run
    if not run.map_sets:
        return unavailable("Explanation maps", "maps.zarr")
    if run.crops is None or run.cells is None:
        return unavailable("Explanation gallery", "crops.zarr or cells.parquet")
    body: list[Any] = []
    explanation = run.metrics.get("explanation")
    if isinstance(explanation, Mapping) and explanation:
        body.append(mapping_table(scalars(explanation, skip=("views",)), "explanation", "value"))
        per_view = records_table({v: scalars(m) for v, m in (explanation.get("views") or {}).items()
                                  if isinstance(m, Mapping)}, "view")
        if per_view is not None:
            body.append(per_view)
    for map_set in run.map_sets:
        rows = map_rows(run, map_set)
        described = ", ".join(f"{k} {map_set.attrs[k]}" for k in ("explainer", "layer", "target")
                              if map_set.attrs.get(k))
        body.append(element("h3", f"View: {map_set.view}" + (f" ({described})" if described else "")))
        if rows is None or rows.empty:
            body.append(note("The maps' cell ids do not match cells.parquet."))
            continue
        channels = view_channels(map_set, run.crops.channel_names)
        body += [_gallery(report, map_set, rows, channels), _averages(report, map_set, channels)]
    return join(body)


def _gallery(report: ReportContext, map_set: StoredMaps, rows: Any, channels: list[int]) -> Markup:
    run = report.run
    picks = {c: rows[rows["condition"].astype(str) == c].sort_values("cell_id") for c in run.conditions}
    picks = {c: frame.iloc[summaries.spread_indices(len(frame), MAPS_PER_CONDITION)]
             for c, frame in picks.items() if len(frame)}
    if not picks:
        return note("No explained cells.")
    crop_rows = np.concatenate([f["crop_index"].to_numpy() for f in picks.values()])
    crops = run.crops.read(crop_rows)[:, channels]
    masks = run.crops.read_masks(crop_rows)
    maps = map_set.maps[np.concatenate([f["map_row"].to_numpy() for f in picks.values()])]
    if maps.shape[-2:] != crops.shape[-2:]:
        return note(f"Maps ({maps.shape[-1]} px) and crops ({crops.shape[-1]} px) differ in size.")
    ranges = [fig.display_range(crops[:, c], masks) for c in range(crops.shape[1])]
    shown = fig.composite(crops, ranges)
    gallery, start = {}, 0
    for condition, frame in picks.items():
        stop = start + len(frame)
        gallery[condition] = [(shown[i], maps[i], None if masks is None else masks[i]) for i in range(start, stop)]
        start = stop
    src = report.figures.save(fig.explanation_gallery(gallery), "gallery", map_set.view)
    names = [run.crops.channel_names[c] for c in channels]
    colours = " (red, green, blue)" if len(names) > 1 else ""
    caption = (f"Crops ({', '.join(names[:3])}{colours}) and their explanation maps over the grey "
               "crop, for cells spread over each condition.")
    return image(src, f"explanation gallery, view {map_set.view}", caption)


def _averages(report: ReportContext, map_set: StoredMaps, channels: list[int]) -> Markup:
    """Aligned average map (and the view's channels) per condition, as the explain stage stored them."""
    run = report.run
    averages = run.map_averages(map_set.view)
    if not averages:
        return unavailable("Aligned average maps", "the average/ group of maps.zarr")
    names = [run.crops.channel_names[c] for c in channels]
    rows = {"map": {c: (a["map"], a["n_cells"]) for c, a in averages.items()}}
    for index, name in enumerate(names):
        if all(a["channels"] is not None and len(a["channels"]) == len(names) for a in averages.values()):
            rows[name] = {c: (a["channels"][index], a["n_cells"]) for c, a in averages.items()}
    src = report.figures.save(fig.average_maps(rows), "average-maps", map_set.view)
    return image(src, f"aligned average maps, view {map_set.view}",
                 "Mean per condition over nuclei rotated to their major axis and scaled to fill the "
                 "square (the study's Fig. 3): the map, then each channel of the view; one colour "
                 "scale per row.")
