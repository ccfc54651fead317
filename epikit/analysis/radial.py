"""Radial profiles compared between conditions: curves with bands and the intervals that differ.

Input: per-cell curves ``(n_cells, n_bins)`` of one quantity (a channel's or a map's radial
profile, :mod:`epikit.nuclei.profiles`) with each cell's image, condition and the design
columns (``group``, ``replicate``). :func:`compare_profiles` gives, per condition, the
hierarchical mean curve with a 95% simultaneous bootstrap band (:mod:`epikit.analysis.curves`),
per non-reference condition the difference curve (condition minus reference) with its band,
and the cluster-mass permutation test of the unit curves: each supra-threshold run of bins is
an interval ``[a, b)`` of radius with a p-value controlling the family-wise error over bins.
The unit is the design unit (:func:`epikit.analysis.design.describe_design`: the image, or the
group or replicate when every condition has ``min_units`` of them), with the design's unit ids
(well ``A01`` of plate 1 and of plate 2 are two units), so the curves and the test replicate at
the same level as the shell rows.

Example on a wide table with columns ``image_id, condition, group, b0 .. b19``::

    result = compare_profiles(table[bins].to_numpy(), table, reference="ctrl", edges=np.linspace(0, 1, 21))
    result.curves        # tidy: curve, kind, bin, start, stop, value, low, high, n_units
    result.intervals     # one dict per interval: start, stop, p_value, difference, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from epikit.analysis.curves import (
    bootstrap_curves,
    cluster_test,
    hierarchical_mean,
    simultaneous_band,
    unit_curves,
)
from epikit.analysis.design import Design, describe_design, level_labels
from epikit.analysis.stats import cliffs_delta, hedges_g
from epikit.errors import DataError

LEVEL = 0.95
TEST_NAME = "cluster-mass permutation (FWER over bins)"


def difference_name(condition: str, reference: str) -> str:
    """The curve name of a difference: ``vpa - ctrl``."""
    return f"{condition} - {reference}"


def interval_region(start: float, stop: float, scale: str = "relative") -> str:
    """The biomarkers.csv region of an interval: ``radial[0.00,0.25)`` (``radial_um[...)`` in micrometres)."""
    name = "radial" if scale == "relative" else "radial_um"
    return f"{name}[{start:.2f},{stop:.2f})"


def is_interval_region(region: str) -> bool:
    """Whether a biomarkers.csv region is a radial interval (not a shell)."""
    return str(region).startswith("radial")


@dataclass
class ProfileComparison:
    """Curves with bands, the per-unit curves and the tested intervals of one quantity."""

    curves: pd.DataFrame
    intervals: list[dict[str, Any]] = field(default_factory=list)
    unit: str = "image"


def _rows(name: str, kind: str, estimate: np.ndarray, band: tuple[np.ndarray, np.ndarray],
          edges: np.ndarray, n_units: int) -> pd.DataFrame:
    return pd.DataFrame({"curve": name, "kind": kind, "bin": np.arange(len(estimate)),
                         "start": edges[:-1], "stop": edges[1:], "value": estimate,
                         "low": band[0], "high": band[1], "n_units": n_units})


def _interval(cluster: Any, edges: np.ndarray, x: np.ndarray, y: np.ndarray, condition: str,
              reference: str, unit: str, test: Any) -> dict[str, Any]:
    """One tested interval, its effect on the unit curves' interval means."""
    span = slice(cluster.start, cluster.stop)
    x_mean, y_mean = np.nanmean(x[:, span], axis=1), np.nanmean(y[:, span], axis=1)
    return {
        "condition": condition, "reference": reference,
        "start": float(edges[cluster.start]), "stop": float(edges[cluster.stop]),
        "first_bin": cluster.start, "stop_bin": cluster.stop, "sign": cluster.sign,
        "mass": cluster.mass, "p_value": cluster.p_value,
        "mean_condition": float(x_mean.mean()), "mean_reference": float(y_mean.mean()),
        "difference": float(x_mean.mean() - y_mean.mean()),
        "cliffs_delta": cliffs_delta(x_mean, y_mean), "hedges_g": hedges_g(x_mean, y_mean),
        "n_condition": len(x), "n_reference": len(y), "unit": unit, "test": TEST_NAME,
        "min_p": test.min_p, "n_permutations": test.n_permutations, "exact": test.exact,
    }


def compare_profiles(
    values: np.ndarray, cells: pd.DataFrame, reference: str, edges: np.ndarray,
    n_boot: int = 1000, n_permutations: int = 2000, seed: int = 0, cluster_alpha: float = 0.05,
    design: Design | None = None,
) -> ProfileComparison:
    """Condition curves, difference curves (each with a 95% simultaneous band) and tested intervals.

    ``values`` (n_cells, B); ``cells`` has ``image_id``, ``condition`` and the design columns
    (``group``, ``replicate``) per row; ``edges`` the B + 1 bin edges. Every condition other than
    ``reference`` is compared with it, at the unit of ``design`` (None: :func:`describe_design`
    of ``cells``; pass the design of all the run's cells so every quantity tests one unit).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or len(values) != len(cells) or len(edges) != values.shape[1] + 1:
        raise DataError(f"compare_profiles: values {values.shape}, {len(cells)} cells and {len(edges)} "
                        "edges do not fit together")
    conditions = cells["condition"].astype(str).to_numpy()
    images = cells["image_id"].astype(str).to_numpy()
    if reference not in set(conditions):
        raise DataError(f"reference condition {reference!r} has no profiled cells")
    design = describe_design(cells) if design is None else design
    unit = design.unit
    levels = [labels.to_numpy() for labels in level_labels(cells, design)]
    rng = np.random.default_rng(seed)
    parts, estimates, replicates, units = [], {}, {}, {}
    for condition in sorted(set(conditions)):
        at = conditions == condition
        nesting = [labels[at] for labels in levels]
        estimates[condition] = hierarchical_mean(values[at], images[at], nesting)
        replicates[condition] = bootstrap_curves(values[at], images[at], nesting, n_boot, rng)
        units[condition] = unit_curves(values[at], images[at], nesting)
        band = simultaneous_band(*estimates[condition], *replicates[condition], LEVEL)
        parts.append(_rows(condition, "condition", estimates[condition][0], band, edges, len(units[condition])))
    intervals: list[dict[str, Any]] = []
    for condition in sorted(set(conditions) - {reference}):
        (x_curve, x_error), (y_curve, y_error) = estimates[condition], estimates[reference]
        (x_boot, x_boot_error), (y_boot, y_boot_error) = replicates[condition], replicates[reference]
        difference = x_curve - y_curve
        band = simultaneous_band(difference, np.hypot(x_error, y_error), x_boot - y_boot,
                                 np.hypot(x_boot_error, y_boot_error), LEVEL)
        parts.append(_rows(difference_name(condition, reference), "difference", difference, band, edges,
                           len(units[condition]) + len(units[reference])))
        x, y = units[condition], units[reference]
        test = cluster_test(x, y, cluster_alpha, n_permutations, seed)
        intervals += [_interval(c, edges, x, y, condition, reference, unit, test) for c in test.clusters]
    curves = pd.concat(parts, ignore_index=True)
    curves["significant"] = False
    for interval in intervals:
        if interval["p_value"] < 1 - LEVEL:
            name = difference_name(interval["condition"], reference)
            inside = (curves["curve"] == name) & curves["bin"].between(interval["first_bin"], interval["stop_bin"] - 1)
            curves.loc[inside, "significant"] = True
    return ProfileComparison(curves, intervals, unit)


def localisation(start: float, stop: float, top: float, difference: float) -> str:
    """Where an interval's difference puts the condition's signal: rim-, centre-enriched or mid.

    The interval lies towards the rim when its middle is in the outer half of the range
    ``[0, top]`` of distances from the outline.
    """
    middle = (start + stop) / 2
    if np.isclose(middle, top / 2):
        return "mid"
    outer = middle < top / 2
    return "rim-enriched" if (difference > 0) == outer else "centre-enriched"
