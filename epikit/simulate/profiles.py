"""Simulated per-cell radial profiles with image-level random effects (for checking curve statistics).

Far cheaper than simulating images: a profile table of two conditions, each with
``n_images`` images of ``n_cells`` cells. A cell's curve over ``n_bins`` bins (0 = outline,
last = centre) is::

    1 + effect(condition, bin) + image_shift(image, bin) + cell_noise(cell, bin)

with a smooth random shift per image (sd ``image_sd``, correlated over neighbouring bins,
so images differ as real fields do) and independent noise per cell and bin (sd ``cell_sd``).
``effect="periphery"`` adds ``+effect_size`` to the non-reference condition's outer quarter
of bins and takes the same amount from the rest spread evenly, ``"interior"`` the reverse,
``"none"`` nothing::

    table = simulate_profile_table(effect="none", seed=3)   # columns cell_id, image_id, condition, group, bin, value
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from epikit.errors import ConfigError

PROFILE_EFFECTS = ("periphery", "interior", "none")


def effect_curve(effect: str, n_bins: int, effect_size: float) -> np.ndarray:
    """The planted difference (n_bins,) of the treated condition; it sums to zero over bins."""
    if effect not in PROFILE_EFFECTS:
        raise ConfigError(f"unknown profile effect {effect!r}; use one of: {', '.join(PROFILE_EFFECTS)}")
    curve = np.zeros(n_bins)
    if effect == "none":
        return curve
    outer = max(1, n_bins // 4)
    curve[:outer] = effect_size
    curve[outer:] = -effect_size * outer / (n_bins - outer)
    return curve if effect == "periphery" else -curve


def simulate_profile_table(
    *, effect: str = "none", n_images: int = 6, n_cells: int = 20, n_bins: int = 20,
    image_sd: float = 0.05, cell_sd: float = 0.15, effect_size: float = 0.1,
    conditions: tuple[str, str] = ("ctrl", "vpa"), seed: int = 0,
) -> pd.DataFrame:
    """A wide per-cell profile table: ids, condition, group and one column per bin (``b0`` ...)."""
    rng = np.random.default_rng(seed)
    difference = effect_curve(effect, n_bins, effect_size)
    smooth = np.exp(-0.5 * (np.subtract.outer(np.arange(n_bins), np.arange(n_bins)) / 3.0) ** 2)
    root = np.linalg.cholesky(smooth + 1e-9 * np.eye(n_bins))
    rows = []
    for c, condition in enumerate(conditions):
        for i in range(n_images):
            image = f"{condition}/field_{i:03d}"
            shift = image_sd * root @ rng.standard_normal(n_bins)
            values = 1 + (difference if c else 0) + shift + cell_sd * rng.standard_normal((n_cells, n_bins))
            for k, curve in enumerate(values):
                rows.append({"cell_id": f"{image}#{k + 1}", "image_id": image, "condition": condition,
                             "group": image, **{f"b{b}": v for b, v in enumerate(curve)}})
    return pd.DataFrame(rows)
