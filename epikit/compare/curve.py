"""The specification curves of a comparison and the agreement of its explainers.

:func:`specification_curves` turns each specification's per-image feature values
(:mod:`epikit.compare.measures`) into its effect and image-level bootstrap interval, one
curve for the intensity feature and one for the map feature, each with its summary and
joint permutation test (:mod:`epikit.analysis.specification`). The intensity curve keeps one
specification per distinct choice of the axes that can change intensities (the others
would repeat its values). :func:`explainer_agreement` compares runs that differ only in
the explainer: their top map findings (same condition, localisation and sign) and their
maps cell by cell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epikit.analysis.specification import curve_summary, effect_interval, joint_permutation_test
from epikit.compare.grid import AXES
from epikit.compare.measures import RunValues, map_rank_agreement
from epikit.options import CompareOptions

#: Axes that can change the intensity feature (segmentation and the shell definition; crops
#: only when the shares are computed on them).
INTENSITY_AXES: tuple[str, ...] = ("segmenter", "crop_size", "scale", "shell")
SOURCES: tuple[str, ...] = ("intensity", "map")


def specification_curves(table: pd.DataFrame, values: list[RunValues], condition: str,
                         options: CompareOptions, seed: int = 0) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Effect and interval columns for ``table`` (one row per specification, aligned with ``values``)
    and, per source, the curve: its specifications sorted by effect, summary and joint test."""
    table = table.copy()
    conditions = pd.concat([v.conditions for v in values]).groupby(level=0).first()
    reference = values[0].reference
    curves: dict[str, Any] = {}
    for source in SOURCES:
        series = [v.intensity if source == "intensity" else v.maps for v in values]
        estimates = [effect_interval(s, conditions, condition, reference, options.resamples, seed=seed)
                     if s is not None else {} for s in series]
        for column in ("effect", "low", "high"):
            table[f"{source}_{column}"] = [e.get(column, np.nan) for e in estimates]
        keep = [i for i, s in enumerate(series) if s is not None]
        if source == "intensity":
            axes = [a for a in INTENSITY_AXES if a in table]
            keep = list(table.iloc[keep].drop_duplicates(subset=axes).index) if axes else keep
        curves[source] = _curve(table, [series[i] for i in keep], keep, source, conditions, condition,
                                reference, options, seed)
    return table, {"condition": condition, "reference": reference, "alpha": options.alpha, **curves}


def _curve(table: pd.DataFrame, series: list[pd.Series], keep: list[int], source: str, conditions: pd.Series,
           condition: str, reference: str, options: CompareOptions, seed: int) -> dict[str, Any]:
    """One source's curve: sorted specifications, their choices, the summary and the joint test."""
    if not keep:
        return {"n": 0, "specifications": []}
    rows = table.loc[keep].sort_values(f"{source}_effect", kind="mergesort")
    axes = [a.name for a in AXES if a.name in table and (source == "map" or a.name in INTENSITY_AXES)]
    specifications = [{"name": row["name"], **{a: row[a] for a in axes},
                       **{k: float(row[f"{source}_{k}"]) for k in ("effect", "low", "high")}}
                      for _, row in rows.iterrows()]
    summary = curve_summary(rows[f"{source}_effect"], rows[f"{source}_low"], rows[f"{source}_high"])
    test = joint_permutation_test(series, conditions, condition, reference, options.permutations, seed=seed)
    return {**summary, "axes": axes, "specifications": specifications, "joint_test": test,
            "rejects": bool(test["p_value"] < options.alpha)}


def _sign(value: Any) -> int:
    return int(np.sign(value)) if isinstance(value, (int, float)) and np.isfinite(value) else 0


def explainer_agreement(table: pd.DataFrame) -> tuple[pd.Series, pd.DataFrame]:
    """Per row, whether the runs differing from it only in the explainer agree on the top map
    finding (condition and localisation, or both none) and the sign of the map feature's effect;
    and one row per pair of such runs with their cell-by-cell map agreement (median Spearman
    rho over cells)."""
    others = [a.name for a in AXES if a.name != "explainer" and a.name in table]
    shown = [c for c in others if table[c].nunique() > 1] or others
    agrees = pd.Series(np.nan, index=table.index, dtype=object)
    pairs = []
    for _, group in table.groupby(others, sort=False) if others else [((), table)]:
        if group["explainer"].nunique() < 2:
            continue
        keys = {(row["map_finding_key"], _sign(row.get("map_effect"))) for _, row in group.iterrows()}
        agrees.loc[group.index] = len(keys) == 1
        positions = list(group.index)
        for i, first in enumerate(positions):
            for second in positions[i + 1:]:
                a, b = table.loc[first], table.loc[second]
                rho = map_rank_agreement(Path(a["run"]), Path(b["run"]))
                pairs.append({"specification": " / ".join(str(a[c]) for c in shown),
                              "explainer_a": a["explainer"], "explainer_b": b["explainer"],
                              "same_map_finding": (a["map_finding_key"], _sign(a.get("map_effect")))
                              == (b["map_finding_key"], _sign(b.get("map_effect"))),
                              **rho})
    return agrees, pd.DataFrame(pairs)
