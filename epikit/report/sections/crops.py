"""Crops section: example cells per condition and channel, and the extraction summary."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from epikit.report import figures as fig
from epikit.report import summaries
from epikit.report.html import Markup, element, image, join, mapping_table, note
from epikit.report.sections.common import ReportContext, scalars, unavailable

#: Example cells shown per condition.
CROPS_PER_CONDITION = 3


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
    described = scalars(extraction) if isinstance(extraction, Mapping) else {
        k: v for k, v in run.crops.attrs.items() if isinstance(v, (str, int, float, bool))}
    return join([image(src, "example crops per condition and channel", caption),
                 element("h3", "Extraction"), mapping_table(described, "item", "value")])
