"""Radial-profile section: where in the nucleus conditions differ, with bands and tested intervals.

Reads ``profile_curves.csv`` (written by the biomarkers stage, :mod:`epikit.radial_biomarkers`)
and, for the average nuclei, the aligned averages in ``maps.zarr``; lists the tested
intervals from ``biomarkers.csv`` (regions ``radial[a,b)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from epikit.report.html import Markup, element, image, join, note, table
from epikit.report.profile_figures import radial_profile_figure
from epikit.report.sections.common import ReportContext, unavailable

CAPTION = ("Left: each condition's mean over its images (the unit; replicate groups when they nest "
           "images) of the bin mean over the nucleus mean, from the outline (0) to the centre (1), "
           "with a 95% simultaneous hierarchical bootstrap band. Middle: the difference with its band; "
           "shaded: intervals where the cluster-mass permutation test over images rejects at 5% "
           "family-wise over bins. Right: the aligned average nucleus of each condition.")


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
    relative = curves[curves["scale"] == "relative"]
    for (source, explainer, channel), rows in relative.groupby(["source", "explainer", "channel"], sort=True):
        title = f"{explainer} maps ({channel} view)" if source == "map" else f"{channel} intensity"
        figure = radial_profile_figure(rows, title, _averages(report, source, channel))
        src = report.figures.save(figure, "radial", source, explainer, channel)
        body.append(image(src, f"radial profile of {title}", CAPTION if not body else None))
    if (curves["scale"] == "um").any():
        body.append(note("Micrometre profiles (bins from the outline in um) are in profile_curves.csv "
                         "and epikit.profiles(run, level='condition')."))
    biomarkers = report.run.biomarkers
    if biomarkers is not None and len(biomarkers):
        tested = biomarkers[biomarkers["region"].astype(str).str.startswith("radial")]
        body.append(element("h3", "Tested intervals"))
        if len(tested):
            columns = ["source", "explainer", "channel", "region", "condition", "reference", "effect",
                       "p_value", "q_value", "unit", "n_condition", "n_reference"]
            body.append(table(columns, tested[columns].itertuples(index=False)))
        else:
            body.append(note("No stretch of radius passed the cluster-forming threshold in any curve."))
    return join(body)
