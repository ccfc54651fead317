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
    picked: dict[str, np.ndarray] = {}
    for condition in run.conditions:
        subset = cells[cells["condition"].astype(str) == condition]
        if len(subset):
            picked[condition] = subset["crop_index"].to_numpy()[
                summaries.spread_indices(len(subset), CROPS_PER_CONDITION)]
    if not picked:
        return note("No cells in cells.parquet.")
    all_indices = np.concatenate(list(picked.values()))
    crops = run.crops.read(all_indices)
    ranges = _channel_ranges(crops, run.crops.read_masks(all_indices))
    bounds = np.cumsum([0, *(len(v) for v in picked.values())])
    examples = {condition: crops[bounds[i]:bounds[i + 1]] for i, condition in enumerate(picked)}
    src = report.figures.save(fig.crop_grid(examples, run.crops.channel_names, ranges), "crops")
    caption = (f"Cells spread over each condition ({CROPS_PER_CONDITION} per row block); each channel "
               "uses one intensity scale for all conditions.")
    extraction = run.metrics.get("extraction")
    described = scalars(extraction) if isinstance(extraction, Mapping) else {
        k: v for k, v in run.crops.attrs.items() if isinstance(v, (str, int, float, bool))}
    return join([image(src, "example crops per condition and channel", caption),
                 element("h3", "Extraction"), mapping_table(described, "item", "value")])
