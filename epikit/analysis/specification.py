"""Specification-curve statistics: one effect estimated under many analysis choices.

A *specification* is one defensible way to run the analysis (segmenter, crop size, explainer,
shell definition, ...). Each gives, per image, a value of one fixed feature (for example the
rim-minus-centre share of a channel, averaged over the image's cells). Following Simonsohn,
Simmons & Nelson (Nat Hum Behav 2020):

- :func:`effect_interval`: the effect (condition minus reference, difference of the means of
  image means) with a percentile bootstrap interval that resamples images within each
  condition, so the image, not the cell, is the unit;
- :func:`curve_summary`: the share of specifications whose effect has the dominant sign and
  the share whose interval also excludes zero;
- :func:`joint_permutation_test`: the curve's median effect against its distribution when the
  condition labels of the images are permuted (one permutation applied to every
  specification at once, since they all describe the same images); exact when the number of
  distinct relabellings is at most the number of permutations asked for.

Pure functions on per-image values; nothing here knows about run folders.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from epikit.errors import DataError


def effect_interval(values: pd.Series, conditions: pd.Series, condition: str, reference: str,
                    resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Effect of ``condition`` over ``reference`` on per-image ``values`` with its bootstrap interval.

    ``values`` and ``conditions`` are indexed by image id. Returns ``effect`` (mean of the
    condition's image values minus the reference's), ``low`` and ``high`` (percentile
    interval at ``level``; NaN with fewer than two images on a side) and the image counts.
    """
    labels = conditions.reindex(values.index).astype(str)
    finite = values.astype(float).dropna()
    ours = finite[labels.loc[finite.index] == condition].to_numpy()
    theirs = finite[labels.loc[finite.index] == reference].to_numpy()
    out: dict[str, Any] = {"effect": float("nan"), "low": float("nan"), "high": float("nan"),
                           "n_condition": int(ours.size), "n_reference": int(theirs.size)}
    if ours.size == 0 or theirs.size == 0:
        return out
    out["effect"] = float(ours.mean() - theirs.mean())
    if ours.size < 2 or theirs.size < 2:
        return out
    rng = np.random.default_rng(seed)
    boot = (ours[rng.integers(0, ours.size, (resamples, ours.size))].mean(axis=1)
            - theirs[rng.integers(0, theirs.size, (resamples, theirs.size))].mean(axis=1))
    tail = (1 - level) / 2 * 100
    out["low"], out["high"] = (float(v) for v in np.percentile(boot, [tail, 100 - tail]))
    return out


def curve_summary(effects: Sequence[float], lows: Sequence[float], highs: Sequence[float]) -> dict[str, Any]:
    """The specification curve in numbers: median effect, dominant sign and the shares sharing it.

    ``share_same_sign``: specifications whose effect has the dominant sign (the sign of the
    majority; of the median on a tie); ``share_excluding_zero``: those whose interval also
    lies wholly on that side of zero. Specifications without an effect (NaN) count as neither.
    """
    effects, lows, highs = (np.asarray(v, dtype=float) for v in (effects, lows, highs))
    n = int(effects.size)
    finite = np.isfinite(effects)
    if not finite.any():
        return {"n": n, "median_effect": float("nan"), "sign": 0, "share_same_sign": float("nan"),
                "share_excluding_zero": float("nan")}
    positive, negative = int((effects[finite] > 0).sum()), int((effects[finite] < 0).sum())
    median = float(np.median(effects[finite]))
    sign = 1 if positive > negative else -1 if negative > positive else int(np.sign(median))
    same = np.sign(effects) == sign
    excluding = same & ((lows > 0) if sign > 0 else (highs < 0))
    return {"n": n, "median_effect": median, "sign": sign,
            "share_same_sign": float(same.sum() / n) if sign else 0.0,
            "share_excluding_zero": float(excluding.sum() / n) if sign else 0.0}


def _relabellings(is_condition: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Condition indicators (P, n_images): every distinct relabelling if at most ``permutations``
    exist (exact test), else the observed one plus ``permutations`` random shuffles."""
    n, k = is_condition.size, int(is_condition.sum())
    if math.comb(n, k) <= permutations:
        rows = np.zeros((math.comb(n, k), n), dtype=bool)
        for row, chosen in zip(rows, itertools.combinations(range(n), k)):
            row[list(chosen)] = True
        return rows, True
    shuffled = np.array([rng.permutation(is_condition) for _ in range(permutations)], dtype=bool)
    return np.vstack([is_condition[None], shuffled]), False


def joint_permutation_test(values: Sequence[pd.Series], conditions: pd.Series, condition: str, reference: str,
                           permutations: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Joint test of a specification curve: is its median effect larger than label noise makes it?

    ``values``: one per-image series per specification (indexed by image id; a specification
    may lack some images); ``conditions``: every image's condition. The condition labels of
    the images of ``condition`` and ``reference`` are permuted together for all
    specifications, each specification's effect recomputed, and the median taken; the
    two-sided p-value is the share of relabellings (the observed one included) whose
    |median| reaches the observed one.
    """
    images = conditions[conditions.astype(str).isin([condition, reference])].index
    matrix = np.vstack([v.astype(float).reindex(images).to_numpy() for v in values]) if len(values) else np.empty((0, 0))
    present = np.isfinite(matrix)
    if matrix.size == 0 or not present.any():
        raise DataError("the specification curve has no image values to test")
    is_condition = (conditions.loc[images].astype(str) == condition).to_numpy()
    if is_condition.all() or not is_condition.any():
        raise DataError(f"the joint test needs images of both {condition!r} and {reference!r}")
    labels, exact = _relabellings(is_condition, permutations, np.random.default_rng(seed))
    filled, weight, ones = np.where(present, matrix, 0.0), present.astype(float), labels.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        effects = (filled @ ones.T) / (weight @ ones.T) - (filled @ (1 - ones).T) / (weight @ (1 - ones).T)
    medians = np.array([np.median(column[np.isfinite(column)]) if np.isfinite(column).any() else np.nan
                        for column in effects.T])
    observed = float(medians[int(np.flatnonzero((labels == is_condition).all(axis=1))[0])])
    reached = np.abs(medians[np.isfinite(medians)]) >= abs(observed) - 1e-12
    return {"median_effect": observed, "p_value": float(reached.sum() / reached.size),
            "permutations": int(reached.size), "exact": exact, "n_images": int(len(images)),
            "n_specifications": int(len(values))}

