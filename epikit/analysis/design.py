"""Nested experimental designs: which level is the independent unit, and tests at that level.

Cells sit in images (fields), images in groups (wells; the manifest's ``group``), groups in
replicates (plates or days; the manifest's ``replicate``). Units of one level share whatever
varies at the levels above them, so only the top level is independent. Testing any lower
level treats, say, 4 fields of each of 3 wells as 12 independent samples and mistakes
well-to-well variation for a treatment effect (pseudo-replication).

:func:`describe_design` finds the levels present and counts the units of each condition at
each level. The **design unit** is the highest level with at least ``min_units`` (3) units
in every condition; when no level has that many, the image is the unit (and the few units
cap the evidence). A unit of the replicate level is one replicate of one condition (plate 1
of ctrl and plate 1 of vpa are two units), a unit of the group level one group of one
replicate and condition (so well ``A1`` may recur on every plate).

:func:`compare_design` tests every non-reference condition against the reference at the
design unit, on **unit means** (the mean of the means of the level below, so every image and
every group weighs the same within its unit): above the image level with ``unit_test``
(default Student's t on the unit means, the classical nested-ANOVA test; 3 vs 3 units leave
an exact permutation test no p-value below 0.1), at the image level with ``image_test``.
The image-level (when the design unit is higher) and cell-level analyses are added as
``role="comparison"`` rows: they show what ignoring the design would have claimed. q-values
are Benjamini-Hochberg within each unit across every condition and quantity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from epikit.analysis.stats import compare_conditions
from epikit.errors import DataError

#: Independent levels, top to bottom (cells are below the image and never independent).
LEVELS: tuple[str, ...] = ("replicate", "group", "image")
#: Units per condition a level needs to be the design unit.
MIN_UNITS = 3
#: Columns of the cell table that nest images in groups and replicates.
NESTING_COLUMNS: tuple[str, ...] = ("replicate", "group")


@dataclass(frozen=True)
class Design:
    """The levels of a data set, its units per condition at each level, and the design unit.

    ``levels`` lists the levels present, top to bottom; ``counts[level][condition]`` is the
    number of units; ``unit`` is the design unit and ``reason`` says why in one sentence;
    ``min_units``: the units per condition a level needed to be chosen.
    """

    levels: tuple[str, ...]
    counts: dict[str, dict[str, int]]
    unit: str
    reason: str
    cells: dict[str, int] = field(default_factory=dict)
    min_units: int = MIN_UNITS

    def effective_n(self, condition: str) -> int:
        """Independent units of ``condition`` at the design unit."""
        return int(self.counts[self.unit].get(condition, 0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for ``metrics.json``)."""
        return {"levels": list(self.levels), "unit": self.unit, "reason": self.reason,
                "units_per_condition": {level: dict(sorted(c.items())) for level, c in self.counts.items()},
                "cells_per_condition": dict(sorted(self.cells.items())), "min_units": self.min_units}


def unit_ids(table: pd.DataFrame, level: str, condition: str = "condition", image: str = "image_id") -> pd.Series:
    """The id of each row's unit at ``level``: condition and replicate (and group) joined, or the image."""
    if level == "image":
        return table[image].astype(str)
    parts = [table[condition].astype(str), table["replicate"].astype(str)] if "replicate" in table else \
        [table[condition].astype(str)]
    if level == "group":
        parts.append(table["group"].astype(str))
    elif level != "replicate":
        raise DataError(f"unknown design level {level!r}; levels: {', '.join(LEVELS)}")
    out = parts[0]
    for part in parts[1:]:
        out = out + "|" + part
    return out


def level_labels(table: pd.DataFrame, design: Design, condition: str = "condition",
                 image: str = "image_id") -> list[pd.Series]:
    """Per row, the unit id of every level from the design unit down to the one above the image.

    Top first (``[replicate, group]`` ids for a replicate unit with multi-image groups, ``[]``
    for the image unit): how the design unit nests its images, for averaging level by level.
    """
    chain = design.levels[design.levels.index(design.unit):-1]
    missing = [level for level in chain if level not in table.columns]
    if missing:
        raise DataError(f"the table lacks the {', '.join(missing)} column(s) of its design "
                        f"({design.unit} unit); attach the cells' design columns (attach_design)")
    return [unit_ids(table, level, condition, image) for level in chain]


def _check_nesting(table: pd.DataFrame, condition: str, image: str) -> None:
    """Every image lies in one condition, one replicate and one group."""
    for inner, outer in [(image, outer) for outer in (condition, *NESTING_COLUMNS) if outer in table.columns]:
        spread = table.groupby(inner, sort=True)[outer].nunique()
        if (spread > 1).any():
            name = spread.index[int(np.argmax(spread.to_numpy() > 1))]
            raise DataError(f"{inner} {name!r} spans more than one {outer}; each {inner} must lie within "
                            f"one {outer} (fix the manifest's {inner if inner == 'group' else outer} column)")


def describe_design(table: pd.DataFrame, condition: str = "condition", image: str = "image_id",
                    min_units: int = MIN_UNITS) -> Design:
    """The design of a cell table (one row per cell, or per cell and quantity).

    The replicate level is present when the table has a ``replicate`` column; the group level
    when it has a ``group`` column and some group holds more than one image (otherwise the
    groups are the images). Raises :class:`DataError` when a unit is not nested in the level
    above it.
    """
    missing = [c for c in (condition, image) if c not in table.columns]
    if missing:
        raise DataError(f"design table lacks column(s) {', '.join(missing)}")
    _check_nesting(table, condition, image)
    levels = ["image"]
    if "group" in table.columns and (table.groupby(unit_ids(table, "group", condition, image))[image]
                                     .nunique() > 1).any():
        levels.insert(0, "group")
    if "replicate" in table.columns:
        levels.insert(0, "replicate")
    conditions = sorted(table[condition].astype(str).unique())
    counts: dict[str, dict[str, int]] = {}
    for level in levels:
        units = pd.DataFrame({"c": table[condition].astype(str), "u": unit_ids(table, level, condition, image)})
        per = units.drop_duplicates().groupby("c")["u"].size()
        counts[level] = {c: int(per.get(c, 0)) for c in conditions}
    cell_ids = table["cell_id"] if "cell_id" in table.columns else pd.Series(np.arange(len(table)))
    cells = pd.DataFrame({"c": table[condition].astype(str).to_numpy(), "id": cell_ids.to_numpy()})
    cell_counts = cells.drop_duplicates().groupby("c")["id"].size()
    chosen = next((level for level in levels if min(counts[level].values()) >= min_units), None)
    if chosen is not None:
        n = min(counts[chosen].values())
        reason = f"the {chosen} is the highest level with at least {min_units} units per condition (>= {n})"
        skipped = [level for level in levels[:levels.index(chosen)]]
        if skipped:
            reason += (f"; the {' and '.join(skipped)} level has fewer, so variation between "
                       f"{' and '.join(s + 's' for s in skipped)} is not in the test: add more")
    else:
        chosen = "image"
        reason = (f"no level has {min_units} units in every condition; the image is the unit and "
                  "p-values are limited by the few images")
    return Design(tuple(levels), counts, chosen, reason, {c: int(cell_counts.get(c, 0)) for c in conditions},
                  min_units)


def unit_means(table: pd.DataFrame, keys: Sequence[str], level: str, value: str = "value",
               condition: str = "condition", image: str = "image_id") -> pd.DataFrame:
    """Mean of ``value`` per quantity (``keys``), condition and unit of ``level``.

    Averaged level by level (cells -> images -> groups -> replicates), so every image counts
    the same within its group and every group within its replicate. Returns the ``keys``,
    ``condition``, ``unit`` and ``value`` columns.
    """
    if level not in LEVELS or (level != "image" and level not in table.columns):
        raise DataError(f"the table has no {level!r} column to average over")
    data = table.loc[table[value].notna()]
    carried = [c for c in NESTING_COLUMNS if c in data.columns]
    frame = data.groupby([*keys, condition, image], sort=True, dropna=False)[value].mean().reset_index()
    frame = frame.join(data.drop_duplicates(image).set_index(image)[carried], on=image)
    frame["unit"] = frame[image].astype(str)
    for lvl in LEVELS[LEVELS.index(level):-1][::-1]:
        if lvl not in data.columns:
            continue
        frame["unit"] = unit_ids(frame, lvl, condition, image).to_numpy()
        frame = frame.groupby([*keys, condition, "unit"], sort=True, dropna=False).agg(
            **{value: (value, "mean")}, **{c: (c, "first") for c in carried}).reset_index()
        frame[image] = frame["unit"]
    return frame[[*keys, condition, "unit", value]]


def compare_design(long: pd.DataFrame, keys: Sequence[str], design: Design, reference: str | None = None,
                   image_test: str = "permutation", unit_test: str = "ttest", seed: int = 0,
                   cell_level: bool = True) -> pd.DataFrame:
    """Every condition against the reference at the design unit, plus the comparison levels.

    ``long`` has one row per cell and quantity (``keys``, ``value``, ``condition``,
    ``image_id`` and the design columns). Returns :func:`epikit.analysis.stats.compare_conditions`
    rows for the design unit (``role="design"``), the image level when the unit is higher and
    the cell level (``role="comparison"``), with ``q_value`` within each unit.
    """
    units = ("image", "cell") if cell_level else ("image",)
    rows = compare_conditions(long, keys=list(keys), reference=reference, image_test=image_test,
                              units=units, seed=seed)
    rows["role"] = np.where(rows["unit"] == design.unit, "design", "comparison")
    if design.unit == "image":
        return rows
    means = unit_means(long, keys, design.unit)
    top = compare_conditions(means.rename(columns={"unit": "image_id"}), keys=list(keys), reference=reference,
                             image_test=unit_test, units=("image",), seed=seed)
    top["unit"] = design.unit
    top["role"] = "design"
    return pd.concat([top, rows], ignore_index=True)


def attach_design(long: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """``long`` (rows keyed by ``cell_id``) with the cells' ``group``, ``replicate`` and ``dose`` columns."""
    columns = [c for c in (*NESTING_COLUMNS, "dose") if c in cells.columns and c not in long.columns]
    if not columns:
        return long
    lookup = cells.drop_duplicates("cell_id").set_index("cell_id")[columns]
    return long.join(lookup, on="cell_id")
