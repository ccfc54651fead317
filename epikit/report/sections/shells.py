"""Shell-profile section: each shell's share (rim ... centre) per channel and per map view.

Plots the profiles the biomarker stage stored in ``metrics.json["biomarkers"]["profiles"]``
(:func:`epikit.analysis.biomarkers.shell_profiles`): per source, channel and condition the
mean over images of each shell's share with a bootstrap band over images, the unit the
biomarker statistics use. Map profiles come per comparison (their ``target``: the class
both sides explain, or the policy), one panel each, so a panel never mixes maps explained
for different classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.analysis.targets import TARGET_POLICIES
from epikit.report.html import Markup, element, image, join, note
from epikit.report.sections.common import ReportContext, unavailable

#: Heading and y-axis label of each profile source.
SOURCES = {"image": ("Image intensity", "share of shell means"),
           "map": ("Explanation maps", "share of map")}


def _panels(profiles: list[Mapping[str, Any]], source: str) -> dict[str, dict[str, tuple]]:
    """``{panel: {condition: (mean, low, high, n_images)}}`` for one source."""
    panels: dict[str, dict[str, tuple]] = {}
    for profile in profiles:
        if profile.get("source") != source:
            continue
        panel = str(profile.get("channel"))
        if source == "map" and profile.get("explainer"):
            panel = f"{profile['explainer']}: {panel}"
        target = str(profile.get("target") or "")
        if source == "map" and target:
            panel += f" ({target} targets)" if target in TARGET_POLICIES else f" (evidence for {target})"
        panels.setdefault(panel, {})[str(profile.get("condition"))] = tuple(
            np.asarray(profile[k], dtype=float) for k in ("mean", "low", "high")) + (int(profile.get("n_images", 0)),)
    return panels


def shells_section(report: ReportContext) -> Markup:
    """Shell profiles of the image channels and of the maps, bands over images."""
    biomarkers = report.run.metrics.get("biomarkers")
    profiles = biomarkers.get("profiles") if isinstance(biomarkers, Mapping) else None
    if not isinstance(profiles, list) or not profiles:
        return unavailable("Shell profiles", "metrics.json['biomarkers']['profiles'] (the biomarkers stage)")
    method = biomarkers.get("shell_method", "scaled")
    body: list[Any] = []
    for source, (heading, ylabel) in SOURCES.items():
        body.append(element("h3", heading))
        panels = _panels(profiles, source)
        if not panels:
            body.append(note(f"No {source} profiles in metrics.json."))
            continue
        src = report.figures.save(fig.shell_profiles(panels, ylabel), "shells", source)
        body.append(image(src, f"{source} shell profiles",
                          f"Each shell's share of the summed shell means ({method} shells; shell 1 = rim); "
                          "line: mean over images, band: 95% bootstrap interval over images."))
    return join(body)
