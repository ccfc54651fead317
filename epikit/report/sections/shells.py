"""Shell-profile section: each shell's share (rim ... centre) per channel and per map view.

Image profiles come from the ``<channel>_shell_<k>_share`` columns of ``cells.parquet``;
map profiles are computed here with the same shells (:mod:`epikit.analysis.shells`) on the
crop masks. Cells are averaged per image first and the band is a bootstrap over images, the
unit the biomarker statistics use.
"""

from __future__ import annotations

from typing import Any

from epikit.report import figures as fig
from epikit.report import summaries
from epikit.report.html import Markup, element, image, join
from epikit.explanation import StoredMaps
from epikit.report.sections.common import ReportContext, unavailable
from epikit.report.sections.explanation import map_rows


def _shell_columns(columns: list[str], channel: str, statistic: str = "share") -> list[str]:
    found = []
    k = 1
    while f"{channel}_shell_{k}_{statistic}" in columns:
        found.append(f"{channel}_shell_{k}_{statistic}")
        k += 1
    return found


def _map_shell_shares(report: ReportContext, map_set: StoredMaps, rows: Any) -> Any | None:
    """Per explained cell: each shell's share of the map (the image features' shells)."""
    from epikit.analysis.shells import shell_means, shell_regions, shell_shares

    run = report.run
    masks = run.crops.read_masks(rows["crop_index"].to_numpy())
    if masks is None:
        return None
    n_shells = int(run.crops.attrs.get("n_shells", 5))
    maps = map_set.maps[rows["map_row"].to_numpy()]
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
            rows = map_rows(run, map_set)
            if rows is None or rows.empty:
                continue
            shares = _map_shell_shares(report, map_set, rows)
            if shares is not None:
                map_panels[map_set.view] = summaries.profiles_by_condition(
                    shares, [c for c in shares.columns if c.startswith("shell_")])
    if map_panels:
        src = report.figures.save(fig.shell_profiles(map_panels, "share of map"), "shells-map")
        body.append(image(src, "map shell profiles",
                          "Each shell's share of the explanation map, per view; band: 95% bootstrap "
                          "interval over images."))
    else:
        body.append(unavailable("Map shell profiles", "maps.zarr with crops.zarr masks"))
    return join(body)
