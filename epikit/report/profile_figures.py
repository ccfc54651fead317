"""Radial-profile figures: condition curves with bands, the difference with its band, average nuclei.

One figure per quantity (a channel's intensity or a view's maps): left, each condition's
curve from the outline (0) to the centre (1) with its 95% simultaneous band; middle, each
difference curve (condition minus reference) with its band, zero marked and the intervals
the curve test found significant shaded; right, the aligned average nucleus of each
condition when ``maps.zarr`` holds one (:mod:`epikit.nuclei.averaging`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from epikit.report.figures import colormap, condition_colours, short, subplots


def _spans(bins: pd.DataFrame) -> list[tuple[float, float]]:
    """``(start, stop)`` of each run of consecutive significant bins."""
    spans: list[tuple[float, float]] = []
    for start, stop, significant in bins[["start", "stop", "significant"]].itertuples(index=False):
        if not significant:
            continue
        if spans and np.isclose(spans[-1][1], start):
            spans[-1] = (spans[-1][0], stop)
        else:
            spans.append((start, stop))
    return spans


def radial_profile_figure(curves: pd.DataFrame, title: str,
                          averages: Mapping[str, tuple[np.ndarray, int]] | None = None) -> object:
    """The figure of one quantity from its ``profile_curves.csv`` rows (one scale)."""
    conditions = sorted(curves.loc[curves["kind"] == "condition", "curve"].unique())
    colours = condition_colours(conditions)
    averages = {c: a for c, a in (averages or {}).items() if c in colours}
    columns = 2 + len(averages)
    ratios = [3, 3] + [1.4] * len(averages)
    figure, axes = subplots(1, columns, squeeze=False, figsize=(3.2 * 2 + 1.5 * len(averages) + 0.4, 3.0),
                            gridspec_kw={"width_ratios": ratios})
    left, middle = axes[0, 0], axes[0, 1]
    for condition in conditions:
        rows = curves[curves["curve"] == condition].sort_values("bin")
        centre = (rows["start"] + rows["stop"]) / 2
        left.fill_between(centre, rows["low"], rows["high"], color=colours[condition], alpha=0.2, lw=0)
        left.plot(centre, rows["value"], color=colours[condition], lw=1.5,
                  label=f"{short(condition)} ({int(rows['n_units'].iloc[0])})")
    left.axhline(1.0, color="grey", lw=0.7, ls=":")
    left.set_ylabel("bin mean / nucleus mean")
    left.legend(fontsize=7, loc="best", title="condition (units)", title_fontsize=7)
    for name, rows in curves[curves["kind"] == "difference"].groupby("curve", sort=True):
        rows = rows.sort_values("bin")
        centre = (rows["start"] + rows["stop"]) / 2
        for start, stop in _spans(rows):
            middle.axvspan(start, stop, color="#f2c14e", alpha=0.35, lw=0)
        middle.fill_between(centre, rows["low"], rows["high"], color="black", alpha=0.15, lw=0)
        middle.plot(centre, rows["value"], color="black", lw=1.5, label=short(name))
    middle.axhline(0.0, color="grey", lw=0.8)
    middle.set_ylabel("difference")
    middle.legend(fontsize=7, loc="best")
    scale = curves["scale"].iloc[0] if len(curves) else "relative"
    for axis in (left, middle):
        axis.set_xlabel("distance from outline (0) to centre (1)" if scale == "relative" else "um from the outline")
        axis.grid(alpha=0.3)
    left.set_title(short(title, 40), fontsize=10)
    middle.set_title("shaded: significant interval (FWER 5%)", fontsize=8)
    finite = [a[np.isfinite(a)] for a, _ in averages.values()]
    values = np.concatenate(finite) if finite else np.zeros(0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    for axis, (condition, (average, count)) in zip(axes[0, 2:], averages.items()):
        axis.imshow(np.ma.masked_invalid(average), cmap=colormap("magma").with_extremes(bad="white"),
                    vmin=low, vmax=high if high > low else low + 1e-6, interpolation="bilinear")
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_title(f"{short(condition, 14)}\n(n={count})", fontsize=8)
    figure.tight_layout()
    return figure
