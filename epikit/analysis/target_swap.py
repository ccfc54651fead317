"""The target-swap control of a map finding: how much of a shell difference the explained class alone makes.

A map finding compares the maps of the condition's cells with those of the reference's
cells. When the two sides were explained for different classes (``target="own"``: vpa cells
for vpa, ctrl cells for ctrl), part of the difference can come from the change of target
alone: for a two-class softmax model a class's map is close to the complement of the other
class's map. The control explains the *same* cells for the other class of the comparison and
measures, per image, how a shell quantity changes when only the target changes:

``target_effect``
    mean over the compared images of the per-image mean of ``value(cell, condition's class)
    - value(cell, reference's class)``: what changing only the target does, cells held fixed.
``target_in_comparison``
    the part of the finding's effect that the targets of its two sides carry:
    ``target_effect`` times (share of the condition side explained for the condition's
    class - share of the reference side explained for it): the whole ``target_effect`` under
    ``own``, none under ``contrast`` (both sides share one class).
``swapped_effect``
    the finding's comparison with every map explained for the other class instead.

A finding whose effect is not clearly larger (:data:`TARGET_DRIVEN_RATIO` times) than the
target's part in it is flagged ``target-driven``.

When both sides were explained for one class (``contrast``, or a class name), the target's
part is zero by construction: :func:`shared_target_control` records that without explaining
any cell again (``computed`` False, ``needed`` False).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from epikit.analysis.radial import is_interval_region

#: A map finding's effect must exceed its target's part this many times not to be target-driven.
TARGET_DRIVEN_RATIO = 2.0
TARGET_DRIVEN = "target-driven"


def _image_mean_difference(rows: pd.DataFrame, condition: str, reference: str) -> float:
    """Mean of the condition's per-image means minus the reference's (the image-level effect)."""
    per_image = rows.groupby(["condition", "image_id"])["value"].mean()
    if condition not in per_image.index.get_level_values(0) or reference not in per_image.index.get_level_values(0):
        return float("nan")
    return float(per_image.loc[condition].mean() - per_image.loc[reference].mean())


def target_swap_control(original: pd.DataFrame, swapped: pd.DataFrame, finding: dict[str, Any]) -> dict[str, Any]:
    """The control of one map finding from the maps it compared and the same cells' other-class maps.

    ``original``: the long-format map rows the finding's comparison used (one region or all;
    columns cell_id, image_id, condition, region, target, value); ``swapped``: the same rows
    with each map made for the other class of the comparison. ``finding``: its region,
    condition, reference and effect. Returns the numbers of the module docstring,
    ``target_driven`` and a sentence.
    """
    condition, reference, region = str(finding["condition"]), str(finding["reference"]), finding["region"]
    ours = original[original["region"] == region]
    theirs = swapped[swapped["region"] == region]
    both = pd.concat([ours, theirs], ignore_index=True)
    per_cell = both.groupby(["image_id", "cell_id", "target"])["value"].mean().unstack("target")
    if condition not in per_cell or reference not in per_cell:
        return {"computed": False, "reason": f"no maps for both {condition} and {reference}"}
    difference = (per_cell[condition] - per_cell[reference]).dropna()
    target_effect = float(difference.groupby(level="image_id").mean().mean())
    side_share = {side: float((ours.loc[ours["condition"] == side, "target"] == condition).mean())
                  for side in (condition, reference)}
    in_comparison = target_effect * (side_share[condition] - side_share[reference])
    effect = float(finding["effect"])
    driven = bool(abs(effect) <= TARGET_DRIVEN_RATIO * abs(in_comparison))
    text = (f"explaining the same {len(difference)} cells for {reference} instead of {condition} changes "
            f"{region} by {target_effect:+.3f} ({difference.index.get_level_values('image_id').nunique()} images); "
            f"the sides of this comparison differ in target by {side_share[condition] - side_share[reference]:.2f}, "
            f"so {in_comparison:+.3f} of its {effect:+.3f} can come from the target alone")
    if driven:
        text += f": not clearly larger ({TARGET_DRIVEN_RATIO:g}x), {TARGET_DRIVEN}"
    return {
        "computed": True,
        "effect": effect,
        "target_effect": target_effect,
        "target_in_comparison": in_comparison,
        "swapped_effect": _image_mean_difference(theirs, condition, reference),
        "ratio": TARGET_DRIVEN_RATIO,
        "n_cells": int(len(difference)),
        "target_driven": driven,
        "text": text,
    }


def shared_target_control(finding: dict[str, Any], target: str) -> dict[str, Any]:
    """The control of a map finding whose two sides were both explained for class ``target``.

    The target cannot carry any of the difference, so nothing is explained again: the target's
    part is 0 and the finding is never ``target-driven``.
    """
    return {
        "computed": False,
        "needed": False,
        "effect": float(finding["effect"]),
        "target_in_comparison": 0.0,
        "ratio": TARGET_DRIVEN_RATIO,
        "target_driven": False,
        "text": f"both sides of this comparison were explained for {target}, so the target cannot drive "
                "the difference (no swap needed)",
    }


def attach_target_swap(findings: list[dict[str, Any]], controls: dict[tuple[str, str], Any]) -> list[dict[str, Any]]:
    """Each map shell finding with its ``target_swap`` control (``controls``: (view, condition) ->
    function of a finding) and, when target-driven, the ``target-driven`` flag among its trust flags.

    Radial interval findings of maps need none: they compare only maps of one class
    (:func:`epikit.radial_biomarkers.comparable_maps`), so the target has no part in them.
    """
    out = []
    for finding in findings:
        control = controls.get((finding.get("channel"), finding.get("condition")))
        if finding["source"] != "map" or control is None or is_interval_region(finding["region"]):
            out.append(finding)
            continue
        result = control(finding)
        trust = dict(finding.get("trust") or {"flags": []})
        if result.get("target_driven"):
            trust["flags"] = [*trust.get("flags", []), TARGET_DRIVEN]
        out.append({**finding, "target_swap": result, "trust": trust})
    return out
