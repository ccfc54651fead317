"""Radial-profile section: where in the nucleus conditions differ, with bands and tested intervals.

Reads ``profile_curves.csv`` (written by the biomarkers stage, :mod:`epikit.radial_biomarkers`)
and, for the average nuclei, the aligned averages in ``maps.zarr``; lists the tested
intervals from ``biomarkers.csv`` (regions ``radial[a,b)``). Map curves are drawn per
explained class (``target``): under the ``contrast`` policy with three or more conditions
the reference's cells have one map per comparison, and curves of different classes never
share a figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from epikit.report.html import Markup, element, image, join, note, table
from epikit.report.profile_figures import radial_profile_figure
from epikit.report.sections.common import ReportContext, unavailable

CAPTION = ("Left: each condition's mean over its design units (images, or groups or replicates "
           "when the design has enough of them; legend: the count) of the bin mean over the nucleus "
           "mean, from the outline (0) to the centre (1), with a 95% simultaneous hierarchical "
           "bootstrap band. Middle: the difference with its band; shaded: intervals where the "
           "cluster-mass permutation test over the units rejects at 5% family-wise over bins. "
           "Right: the aligned average nucleus of each condition.")
#: Columns of the tested-interval table.
INTERVAL_COLUMNS = ("source", "explainer", "channel", "target", "region", "condition", "reference", "effect",
                    "p_value", "q_value", "unit", "n_condition", "n_reference")


def _targets(frame: Any) -> Any:
    """``frame`` with a string ``target`` column ("" for image rows, and for tables written without one)."""
    return frame.assign(target=frame["target"].fillna("").astype(str) if "target" in frame else "")


def _title(source: str, explainer: str, channel: str, target: str) -> str:
    """``H3K27ac intensity`` or ``gradcam maps (H3K27ac view): evidence for vpa``."""
    if source != "map":
        return f"{channel} intensity"
    return f"{explainer} maps ({channel} view)" + (f": evidence for {target}" if target else "")


def _averages(report: ReportContext, source: str, channel: str) -> dict[str, tuple[np.ndarray, int]]:
    """Per condition the aligned average (of a channel, or of a view's map) and its cell count."""
    sets = report.run.map_sets
    if not sets:
        return {}
    view = channel if source == "map" else sets[0].view
    if view not in {s.view for s in sets}:
        return {}
    names = report.run.channel_names
    out = {}
    for condition, parts in report.run.map_averages(view).items():
        if source == "map":
            out[condition] = (parts["map"], parts["n_cells"])
        elif parts["channels"] is not None and channel in names and len(parts["channels"]) == len(names):
            out[condition] = (parts["channels"][names.index(channel)], parts["n_cells"])
    return out


def profiles_section(report: ReportContext) -> Markup:
    """One figure per channel and map view (relative scale), then the table of tested intervals."""
    curves = report.run.profile_curves
    if curves is None or not len(curves):
        return unavailable("Radial profiles", "profile_curves.csv (the biomarkers stage)")
    body: list[Any] = []
    relative = _targets(curves[curves["scale"] == "relative"])
    keys = ["source", "explainer", "channel", "target"]
    classes = relative.groupby(keys[:3], sort=True)["target"].nunique()
    for (source, explainer, channel, target), rows in relative.groupby(keys, sort=True):
        title = _title(source, explainer, channel, target)
        # the stored average nuclei take each cell's first map: one class only when the view explains one
        mixed = source == "map" and classes[(source, explainer, channel)] > 1
        figure = radial_profile_figure(rows, title, {} if mixed else _averages(report, source, channel))
        src = report.figures.save(figure, "radial", source, explainer, channel, target)
        body.append(image(src, f"radial profile of {title}", CAPTION if not body else None))
    if (relative["source"] == "map").any() and (classes.loc["map"] > 1).any():
        body.append(note("Average nuclei are left out of the map figures of a view that explains several "
                         "classes: the stored averages take each cell's first map, whatever its class."))
    if (curves["scale"] == "um").any():
        body.append(note("Micrometre profiles (bins from the outline in um) are in profile_curves.csv "
                         "and epikit.profiles(run, level='condition')."))
    biomarkers = report.run.biomarkers
    if biomarkers is not None and len(biomarkers):
        tested = _targets(biomarkers[biomarkers["region"].astype(str).str.startswith("radial")])
        body.append(element("h3", "Tested intervals"))
        if len(tested):
            columns = list(INTERVAL_COLUMNS)
            body.append(table(columns, tested[columns].itertuples(index=False)))
        else:
            body.append(note("No stretch of radius passed the cluster-forming threshold in any curve."))
    return join(body)
