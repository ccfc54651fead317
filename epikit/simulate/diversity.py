"""Randomised field settings for training segmenters that must transfer to real microscopes.

:func:`sample_diverse_field_params` draws keyword arguments for
:func:`epikit.simulate.simulate_field` that span what nuclear-stain images look like across
instruments and samples: nucleus radius about 6-40 px, sparse to crowded, isolated or in
clumps of touching nuclei, round to elongated and lumpy outlines, dim and bright nuclei in
one field, small very bright mitotic figures, low to high signal-to-noise, sharp to blurred,
flat to strongly uneven illumination, dark to hazy background. The ground-truth labels stay
exact whatever is drawn (they follow the blurred footprint, see :mod:`epikit.simulate.field`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from epikit.simulate.field import check_channels, check_size

RADIUS_RANGE = (6.0, 40.0)
COVERAGE_RANGE = (0.03, 0.6)  # fraction of the field covered by nuclei
MAX_NUCLEI = 400


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample_diverse_field_params(
    rng: np.random.Generator,
    size: int | tuple[int, int] = (256, 256),
    channels: tuple[str, ...] = ("Hoechst",),
) -> dict[str, Any]:
    """Keyword arguments for ``simulate_field`` (including ``size`` and ``channels``) drawn for diversity.

    Use as ``simulate_field(rng, **sample_diverse_field_params(rng, size=256))``; the field's
    ``image[0]`` is then the nuclear (Hoechst) channel. By default only that channel is
    simulated (faster); pass ``channels=CHANNEL_NAMES`` for all three. No effect is planted
    (``effect="none"``): these fields are for segmentation, not classification.
    """
    size = check_size(size)
    channels = check_channels(channels)
    radius = _log_uniform(rng, *RADIUS_RANGE)
    spread = rng.uniform(0.05, 0.35)
    coverage = rng.uniform(*COVERAGE_RANGE)
    expected = coverage * size[0] * size[1] / (math.pi * radius**2)
    count = int(min(max(round(expected), 1), MAX_NUCLEI))
    photons = _log_uniform(rng, 15.0, 3000.0)
    # Keep typical nuclei well below saturation, as a user would set the exposure.
    gain = min(_log_uniform(rng, 0.5, 8.0), 15000.0 / photons)
    return {
        "size": size,
        "channels": channels,
        "n_nuclei": (max(1, int(count * 0.8)), count),
        "radius": (max(3.0, radius * (1 - spread)), radius * (1 + spread)),
        "aspect": (1.0, float(rng.uniform(1.1, 2.0))),
        "irregularity": float(rng.uniform(0.0, 0.15)),
        "clump": float(rng.uniform(0.0, 0.9)),
        "squeeze": float(rng.uniform(0.0, 0.3)),
        "mitotic_fraction": 0.0 if rng.random() < 0.4 else float(rng.uniform(0.0, 0.15)),
        "effect": "none",
        "nucleus_brightness_sd": float(rng.uniform(0.1, 0.7)),
        "field_brightness_sd": 0.0,
        "channel_brightness_sd": 0.0,
        "photons": photons,
        "background": photons * _log_uniform(rng, 0.01, 0.3),
        "gain": gain,
        "read_noise": float(rng.uniform(0.5, 10.0)),
        "psf_sigma": float(min(rng.uniform(0.5, 3.0), 0.35 * radius)),
        "illumination": float(rng.uniform(0.0, 1.0)),
        "dome": float(rng.uniform(0.0, 0.4)),
        "rim": float(rng.uniform(0.0, 0.6)),
        "texture": float(rng.uniform(0.3, 2.0)),
        "haze": 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, 0.5)),
    }
