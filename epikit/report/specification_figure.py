"""The specification-curve figure of the comparison report.

Top panel: every specification's effect with its 95% interval, sorted by effect (filled
where the interval excludes zero). Bottom panel: one row per analysis choice
(``axis = value``), a mark under each specification that made that choice, so a reader sees
which choices move the effect (Simonsohn, Simmons & Nelson, Nat Hum Behav 2020).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report.figures import short, subplots


def choice_rows(specifications: list[Mapping[str, Any]], axes: list[str]) -> list[tuple[str, str]]:
    """The (axis, value) rows of the choice panel: axes whose value varies across the specifications."""
    rows = []
    for axis in axes:
        values = list(dict.fromkeys(str(s[axis]) for s in specifications))
        if len(values) > 1:
            rows.extend((axis, value) for value in values)
    return rows


def specification_curve(curve: Mapping[str, Any], ylabel: str) -> Any:
    """The sorted effects with intervals above the panel of choices that made each."""
    specs = list(curve["specifications"])
    rows = choice_rows(specs, list(curve.get("axes", [])))
    x = np.arange(len(specs))
    effect, low, high = (np.array([s[k] if s[k] is not None else np.nan for s in specs], dtype=float)
                         for k in ("effect", "low", "high"))
    height = 2.6 + 0.28 * max(len(rows), 1)
    figure, (top, bottom) = subplots(2, 1, figsize=(max(5.0, 0.35 * len(specs) + 3.5), height), sharex=True,
                                     gridspec_kw={"height_ratios": [2.4, 0.3 * max(len(rows), 1) + 0.4]})
    excludes = (low > 0) | (high < 0)
    top.axhline(0.0, color="#777777", linewidth=0.8)
    top.vlines(x, low, high, color="#1f77b4", linewidth=1.4)
    top.scatter(x[excludes], effect[excludes], color="#1f77b4", zorder=3, label="95% interval excludes 0")
    top.scatter(x[~excludes], effect[~excludes], facecolor="white", edgecolor="#1f77b4", zorder=3,
                label="95% interval includes 0")
    top.set_ylabel(short(ylabel, 40), fontsize=8)
    top.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, fontsize=7, frameon=False)
    for row, (axis, value) in enumerate(rows):
        chosen = [i for i, s in enumerate(specs) if str(s[axis]) == value]
        bottom.scatter(chosen, [row] * len(chosen), marker="s", color="#333333", s=18)
    bottom.set_yticks(range(len(rows)), [short(f"{axis} = {value}", 34) for axis, value in rows])
    bottom.set_ylim(len(rows) - 0.5 if rows else 0.5, -0.5)
    bottom.set_xticks(x, [str(i + 1) for i in x])
    bottom.set_xlabel("specification (sorted by effect)")
    figure.subplots_adjust(left=0.32, hspace=0.08, top=0.9)
    return figure
