"""The planted rim-versus-centre effect: a redistribution of one channel inside each nucleus.

Each pixel of a nucleus has a normalised radius ``rho`` (0 at the centre, 1 on the outline;
see :mod:`epikit.simulate.shapes`). ``u = rho**2`` is uniform over the nucleus area, so
``u > 1/2`` is the outer half of the area (the *rim*) and ``u <= 1/2`` the inner half (the
*centre*). The affected channel's noise-free, pre-blur signal is multiplied by

    w(u) = h_centre + (h_rim - h_centre) * s(u),   s(u) = 1 / (1 + exp(-(u - 1/2) / TRANSITION))

with ``h_centre`` and ``h_rim`` chosen so that the mean of ``w`` over the nucleus is 1 (the
nucleus keeps its total signal) and ``mean(w | rim) / mean(w | centre) = 1 + effect_size``
for ``periphery`` (the reverse, ``1 / (1 + effect_size)``, for ``interior``).

A *ratio shift* multiplies that rim/centre ratio further, in every condition alike: the
simulator's replicate effect (:func:`epikit.simulate.simulate_dataset` with
``replicate_sd``) gives each replicate of a condition its own shift ``exp(N(0, sd))``.
"""

from __future__ import annotations

import math

import numpy as np

EFFECTS = ("periphery", "interior", "none")
# Width of the smooth rim/centre transition, in units of u = rho**2 (area fraction).
TRANSITION = 0.08


def _rim_excess() -> float:
    """``mean(s | rim) - 1/2`` for the logistic step ``s`` of :data:`TRANSITION` (exact integral)."""
    half_width = 0.5 / TRANSITION
    mean_rim = 2 * TRANSITION * (math.log1p(math.exp(half_width)) - math.log(2.0))
    return mean_rim - 0.5


def effect_ratio(effect: str, effect_size: float, shift: float = 0.0) -> float:
    """The rim/centre ratio of the weight: the planted effect's times ``exp(shift)``."""
    if effect == "none" or effect_size == 0:
        ratio = 1.0
    else:
        ratio = 1.0 + effect_size if effect == "periphery" else 1.0 / (1.0 + effect_size)
    return ratio * math.exp(shift)


def effect_levels(effect: str, effect_size: float, shift: float = 0.0) -> tuple[float, float]:
    """``(h_centre, h_rim)``: the weight's asymptotes in the centre and at the rim.

    ``none`` (or a size of 0) with no ``shift`` gives ``(1, 1)``, i.e. no change.
    """
    ratio = effect_ratio(effect, effect_size, shift)
    if ratio == 1.0:
        return 1.0, 1.0
    # mean(w|rim)/mean(w|centre) = (1 + d k) / (1 - d k) with k = rim excess, d = h_rim - h_centre;
    # the nucleus mean (h_rim + h_centre) / 2 stays 1.
    delta = (ratio - 1.0) / ((ratio + 1.0) * _rim_excess())
    return 1.0 - delta / 2, 1.0 + delta / 2


def effect_weight(rho: np.ndarray, effect: str, effect_size: float, shift: float = 0.0) -> np.ndarray:
    """The multiplicative weight ``w`` at normalised radii ``rho`` (float32, same shape)."""
    h_centre, h_rim = effect_levels(effect, effect_size, shift)
    if h_centre == h_rim:
        return np.ones_like(rho, dtype=np.float32)
    u = np.square(rho, dtype=np.float32)
    step = 1.0 / (1.0 + np.exp(-(u - 0.5) / TRANSITION))
    return (h_centre + (h_rim - h_centre) * step).astype(np.float32)


def describe_effect(effect: str, effect_channel: str, effect_size: float, control: str) -> str:
    """One paragraph saying what was planted, for ``simulation.json`` and reports."""
    if effect == "none" or effect_size == 0:
        return "No planted effect: every condition is drawn from the same distribution."
    where = "rim (outer half of the nucleus area)" if effect == "periphery" else "centre (inner half of the nucleus area)"
    return (
        f"In every condition except {control!r}, each nucleus's {effect_channel} signal is "
        f"redistributed towards its {where}: the {'rim/centre' if effect == 'periphery' else 'centre/rim'} "
        f"mean-intensity ratio of the noise-free, pre-blur signal is (1 + {effect_size:g}) times "
        f"that of {control!r} nuclei, while the nucleus's total {effect_channel} signal is unchanged. "
        "Other channels, nucleus shapes, sizes, counts and brightness are drawn identically."
    )
