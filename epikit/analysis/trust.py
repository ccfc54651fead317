"""Trust checks for explanation maps and the findings drawn from them.

* :func:`channel_attribution`: occlude one input channel at a time (set it to its mean
  inside the nucleus, so its spatial pattern is gone but its level is kept) and measure the
  drop in the target-class probability; works for any number of channels.
* :func:`deletion_insertion`: faithfulness curves. Deletion removes nucleus pixels (sets them
  to 0, the background of a masked crop) in decreasing order of map value; insertion starts
  from an empty nucleus and adds them back in that order. A faithful map makes the target
  probability fall fast (small deletion area) and rise fast (large insertion area); both
  are compared with a random pixel order.
* :func:`randomised_copy` + :func:`rank_correlation`: the model-randomisation sanity check
  (Adebayo et al. 2018): maps of a network with re-initialised weights must differ from
  the trained network's maps; the Spearman rank correlation inside the nucleus is reported.
* :func:`attach_trust`: each finding with its checks and flags. The mask-edge control (a
  classifier of the run's recipe trained on the nucleus masks alone, whose maps show what a
  shape/edge-only model attends to; :func:`epikit.biomarker_trust.train_mask_control`) flags
  a rim finding it reproduces as a possible edge artefact.

Pure functions on models, crops and masks: the run-folder orchestration is
:func:`epikit.biomarker_trust.trust_checks`.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from epikit.errors import DataError


def _check(crops: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor) -> None:
    if crops.ndim != 4 or masks.shape != (crops.shape[0], *crops.shape[2:]) or targets.shape != crops.shape[:1]:
        raise DataError(f"trust checks need crops (N, C, S, S), masks (N, S, S), targets (N,); got "
                        f"{tuple(crops.shape)}, {tuple(masks.shape)}, {tuple(targets.shape)}")
    if crops.shape[0] == 0:
        raise DataError("no cells for the trust checks")


def target_probability(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Softmax probability of ``targets`` (N,) for inputs ``x`` (N, C, S, S), in chunks."""
    from epikit.explainers.cam_layers import model_device

    device = model_device(model)
    out = torch.empty(len(x))
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(x), chunk):
            batch = x[start : start + chunk].to(device, torch.float32)
            probabilities = torch.softmax(model(batch).float(), dim=1)
            picked = probabilities.gather(1, targets[start : start + chunk].to(device)[:, None])
            out[start : start + len(batch)] = picked[:, 0].cpu()
    return out


def channel_attribution(model: nn.Module, crops: Any, masks: Any, targets: Any) -> np.ndarray:
    """Drop in target probability (N, C) when each channel is set to its nucleus mean.

    Positive values: the decision rests on that channel's pattern inside the nucleus.
    """
    crops = torch.as_tensor(np.asarray(crops), dtype=torch.float32)
    masks = torch.as_tensor(np.asarray(masks) > 0)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    _check(crops, masks, targets)
    n, channels = crops.shape[:2]
    inside = masks[:, None].float()
    means = (crops * inside).sum(dim=(2, 3)) / inside.sum(dim=(2, 3)).clamp_min(1)  # (N, C)
    base = target_probability(model, crops, targets)
    drops = np.empty((n, channels))
    for c in range(channels):
        occluded = crops.clone()
        occluded[:, c] = torch.where(masks, means[:, c, None, None], crops[:, c])
        drops[:, c] = (base - target_probability(model, occluded, targets)).numpy()
    return drops


def _pixel_ranks(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Rank (0 = first) of each pixel in decreasing ``scores`` order; pixels outside rank last."""
    flat = scores.flatten(1).masked_fill(~masks.flatten(1), float("-inf"))
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return ranks.view_as(scores)


def faithfulness_curves(
    model: nn.Module, crops: Any, masks: Any, maps: Any, targets: Any, steps: int = 16, seed: int = 0,
    batch: int = 256,
) -> dict[str, np.ndarray]:
    """Per-cell deletion / insertion curves (N, steps + 1) for ``maps`` and a random order.

    Step ``j`` removes (deletion) or keeps (insertion) the ``j / steps`` fraction of nucleus
    pixels with the highest scores; removed pixels are set to 0 (the masked-crop background).
    """
    crops = torch.as_tensor(np.asarray(crops), dtype=torch.float32)
    masks = torch.as_tensor(np.asarray(masks) > 0)
    maps = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    _check(crops, masks, targets)
    if maps.shape != masks.shape:
        raise DataError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    random_scores = torch.rand(maps.shape, generator=torch.Generator().manual_seed(seed))
    counts = masks.flatten(1).sum(dim=1)
    fractions = torch.linspace(0, 1, steps + 1)
    per_batch = max(1, batch // len(crops))  # steps scored together in one forward
    curves = {}
    for name, scores in (("", maps), ("random_", random_scores)):
        ranks = _pixel_ranks(scores, masks)
        deletion = np.empty((len(crops), steps + 1))
        insertion = np.empty((len(crops), steps + 1))
        for first in range(0, steps + 1, per_batch):
            group = fractions[first : first + per_batch]
            kept = ranks[None] < torch.floor(group[:, None] * counts[None] + 0.5)[:, :, None, None]
            kept = kept[:, :, None]  # (steps, N, 1, S, S)
            tiled = targets.repeat(len(group))
            removed = torch.where(kept, 0.0, crops[None]).flatten(0, 1)
            added = torch.where(kept, crops[None], 0.0).flatten(0, 1)
            deletion[:, first : first + len(group)] = (
                target_probability(model, removed, tiled).view(len(group), -1).T.numpy())
            insertion[:, first : first + len(group)] = (
                target_probability(model, added, tiled).view(len(group), -1).T.numpy())
        curves[f"{name}deletion"], curves[f"{name}insertion"] = deletion, insertion
    return curves


def _area(curves: np.ndarray) -> float:
    """Mean area under (N, steps + 1) curves over the unit interval (trapezoid rule)."""
    return float(np.mean((curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2 * (curves.shape[1] - 1))))


def summarise_curves(curves: dict[str, np.ndarray]) -> dict[str, Any]:
    """Areas and mean curves of :func:`faithfulness_curves` output (cells may be concatenated).

    ``better_than_random``: deletion area below and insertion area above the random order's.
    """
    steps = curves["deletion"].shape[1] - 1
    result: dict[str, Any] = {f"{name}_auc": _area(values) for name, values in curves.items()}
    result["fractions"] = np.linspace(0, 1, steps + 1).round(4).tolist()
    result.update({f"{name}_curve": values.mean(axis=0).round(5).tolist() for name, values in curves.items()})
    result["n_cells"] = int(len(curves["deletion"]))
    result["better_than_random"] = bool(
        result["deletion_auc"] < result["random_deletion_auc"]
        and result["insertion_auc"] > result["random_insertion_auc"]
    )
    return result


def deletion_insertion(
    model: nn.Module, crops: Any, masks: Any, maps: Any, targets: Any, steps: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Deletion / insertion areas and mean curves for ``maps`` and for a random pixel order."""
    return summarise_curves(faithfulness_curves(model, crops, masks, maps, targets, steps, seed))


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every layer re-initialised (weights, biases, BN statistics)."""
    randomised = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
        torch.manual_seed(seed)
        for module in randomised.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()
    return randomised.eval()


def rank_correlation(first: Any, second: Any, masks: Any) -> np.ndarray:
    """Spearman rank correlation per cell of two map stacks (N, S, S), inside the nucleus.

    NaN for a cell whose ``first`` map is constant inside the nucleus (no order to compare);
    0 where only ``second`` is constant: it keeps none of the first map's order (a randomised
    network's Score-CAM map is often all zero after the ReLU).
    """
    from scipy import stats

    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    masks = np.asarray(masks) > 0
    out = np.full(len(first), np.nan)
    for i, (a, b, m) in enumerate(zip(first, second, masks)):
        x, y = a[m], b[m]
        if x.size > 2 and np.ptp(x) > 0:
            out[i] = stats.spearmanr(x, y).statistic if np.ptp(y) > 0 else 0.0
    return out


def summarise_sanity(rho: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Mean rank correlation of real vs randomised-model maps; ``differs`` if below ``threshold``.

    ``differs`` is None (inconclusive) when no cell could be compared.
    """
    finite = np.isfinite(rho)
    mean = float(np.mean(rho[finite])) if finite.any() else float("nan")
    return {"rank_correlation": mean, "n_cells": int(finite.sum()), "threshold": threshold,
            "differs": bool(mean < threshold) if finite.any() else None}


def attach_trust(findings: list[dict[str, Any]], checks: dict[str, Any]) -> list[dict[str, Any]]:
    """Add each finding's trust checks and flags (e.g. ``possible edge artefact``)."""
    alpha = checks["alpha"]
    control_rows = {(r["region"], r["condition"]): r for r in checks["mask_control"]["rows"]}
    out = []
    for finding in findings:
        trust: dict[str, Any] = {}
        flags: list[str] = []
        attribution = checks["channel_attribution"].get(finding["condition"], {})
        if attribution:
            ranked = sorted(attribution, key=attribution.get, reverse=True)
            trust["top_channel"] = ranked[0]
            trust["channel_attribution"] = attribution
        if finding["source"] == "map" and finding["channel"] != checks["view"]:
            trust["map_checks"] = f"not run for this view (they ran on the {checks['view']!r} view's maps)"
        elif finding["source"] == "map":
            row = control_rows.get((finding["region"], finding["condition"]))
            if row is not None:
                same = bool(np.sign(row["effect"]) == np.sign(finding["effect"]) and row["p_value"] < alpha)
                trust["mask_control"] = {"effect": row["effect"], "p_value": row["p_value"],
                                         "q_value": row["q_value"], "shows_same_difference": same}
                if same:
                    flags.append("possible edge artefact")
            faithful = checks["faithfulness"].get(finding["explainer"])
            if faithful is not None:
                trust["faithfulness"] = {k: faithful[k] for k in (
                    "deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc",
                    "better_than_random")}
                if not faithful["better_than_random"]:
                    flags.append("map not more faithful than a random order")
            trust["sanity"] = {k: checks["sanity"][k] for k in ("rank_correlation", "differs")}
            if checks["sanity"]["differs"] is False:
                flags.append("map barely changes when the model's weights are randomised")
        trust["possible_edge_artefact"] = "possible edge artefact" in flags
        trust["flags"] = flags
        out.append({**finding, "trust": trust})
    return out
