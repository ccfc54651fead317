"""What one specification's run folder says about the compared feature: per-image values, findings, maps.

The compared feature is one ``CHANNEL:REGION`` (default: ``rim_vs_centre`` of the first
non-nuclear channel), read two ways from a finished run folder under the run's own shell
definition: from the image channel (intensity shares of every cell) and from the
explanation maps of the primary view (the maps the run's target policy compares, see
:func:`epikit.analysis.biomarkers.comparison_maps`). Both are averaged per image, the unit
of the specification curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epikit.analysis.biomarkers import comparison_maps, image_shares, region_names, region_values
from epikit.analysis.stats import choose_reference
from epikit.analysis.trust import rank_correlation
from epikit.biomarker_stage import map_rows
from epikit.errors import ConfigError, DataError
from epikit.runfolder.cells import CellDataset
from epikit.runfolder.crops import read_masks
from epikit.runfolder.layout import MAPS
from epikit.runfolder.maps import StoredMaps, read_map_sets
from epikit.runfolder.metrics import read_metrics


@dataclass(frozen=True)
class Feature:
    """The compared feature: ``region`` (``rim_vs_centre`` or ``shell_<k>``) of ``channel``."""

    channel: str
    region: str

    def __str__(self) -> str:
        return f"{self.channel}:{self.region}"


def parse_feature(text: str, channel_names: list[str], nuclear_channel: int | str, n_shells: int) -> Feature:
    """``CHANNEL:REGION``; ``""`` picks ``rim_vs_centre`` of the first channel that is not the nuclear one."""
    if not text:
        nuclear = nuclear_channel if isinstance(nuclear_channel, str) else channel_names[int(nuclear_channel)]
        others = [c for c in channel_names if c != nuclear]
        if not others:
            raise ConfigError(f"the images have only the nuclear channel ({nuclear}); name a feature with "
                              "--feature CHANNEL:REGION")
        return Feature(others[0], "rim_vs_centre")
    channel, _, region = text.rpartition(":")
    if channel not in channel_names or region not in region_names(n_shells):
        raise ConfigError(f"feature {text!r} must be CHANNEL:REGION with a channel of {', '.join(channel_names)} "
                          f"and a region of {', '.join(region_names(n_shells))}")
    return Feature(channel, region)


@dataclass
class RunValues:
    """Per-image values of the feature in one run folder (Series indexed by image id)."""

    feature: Feature
    conditions: pd.Series
    reference: str
    intensity: pd.Series
    maps: pd.Series | None
    map_view: str = ""
    target: str = ""


def primary_maps(run_dir: Path, view: str = "") -> StoredMaps | None:
    """The stored maps of ``view`` (when it is a trained view), else of the primary view; None without maps."""
    if not (run_dir / MAPS).exists():
        return None
    sets = read_map_sets(run_dir)
    return next((s for s in sets if s.view == view), sets[0] if sets else None)


def run_values(run_dir: Path, feature: Feature, condition: str = "") -> RunValues:
    """The feature's per-image intensity and map values in ``run_dir`` (its shell definition and target policy)."""
    metrics = read_metrics(run_dir)
    summary = metrics.get("biomarkers") or {}
    if not summary:
        raise DataError(f"{run_dir} has no biomarkers summary in metrics.json; finish the run first")
    dataset = CellDataset(run_dir)
    cells = dataset.table
    if feature.channel not in dataset.channel_names:
        raise ConfigError(f"feature channel {feature.channel!r} is not a channel of {run_dir} "
                          f"({', '.join(dataset.channel_names)})")
    n_shells, method = int(dataset.attrs.get("n_shells", 5)), str(summary.get("shell_method", "scaled"))
    conditions = cells.groupby("image_id", sort=True)["condition"].first().astype(str)
    reference = choose_reference(conditions.unique(), summary.get("reference") or None)
    shares = image_shares(cells, [feature.channel], n_shells, method)[feature.channel]
    intensity = pd.Series(region_values(shares)[feature.region], index=cells["image_id"].to_numpy())
    values = RunValues(feature, conditions, reference, intensity.groupby(level=0).mean(), None)
    stored = primary_maps(run_dir, feature.channel)
    if stored is not None:
        policy = str(stored.attrs.get("target", "contrast"))
        other = condition or sorted(set(conditions) - {reference})[0]
        long = map_rows(run_dir, dataset, stored, stored.maps, stored.target, n_shells, method)
        rows = comparison_maps(long[long["region"] == feature.region], policy, other, reference)
        values.maps = rows.groupby("image_id", sort=True)["value"].mean()
        values.map_view, values.target = stored.view, policy
    return values


def top_map_finding(run_dir: Path) -> dict[str, Any]:
    """The run's best-ranked map finding (empty when it has none)."""
    findings = read_metrics(run_dir).get("findings") or []
    return next((f for f in findings if isinstance(f, dict) and f.get("source") == "map"), {})


def map_rank_agreement(first: Path, second: Path) -> dict[str, Any]:
    """Cell-by-cell agreement of two runs' maps: Spearman correlation inside each nucleus over the
    cells both explained for the same class; the median over cells and how many were compared."""
    maps = [primary_maps(run) for run in (first, second)]
    if maps[0] is None or maps[1] is None:
        return {"n_cells": 0, "median_rho": float("nan")}
    index = {(cell, int(t)): i for i, (cell, t) in enumerate(zip(maps[1].cell_ids, maps[1].target))}
    pairs = [(i, index[(cell, int(t))]) for i, (cell, t) in enumerate(zip(maps[0].cell_ids, maps[0].target))
             if (cell, int(t)) in index and maps[0].crop_index[i] == maps[1].crop_index[index[(cell, int(t))]]]
    if not pairs:
        return {"n_cells": 0, "median_rho": float("nan")}
    ours, theirs = (np.array(p) for p in zip(*pairs))
    masks = read_masks(CellDataset(first).store_path, maps[0].crop_index[ours])
    rho = rank_correlation(maps[0].maps[ours], maps[1].maps[theirs], masks)
    finite = rho[np.isfinite(rho)]
    return {"n_cells": int(finite.size), "median_rho": float(np.median(finite)) if finite.size else float("nan")}
