"""How many images and replicates: variance components from a pilot, power by simulation.

A pilot's cells give, for one per-cell feature, three variance components, estimated by
the method of moments within each condition and pooled over conditions (so a treatment
effect in the pilot does not inflate them):

* ``cell``: cells around their image's mean (pooled within-image variance);
* ``image``: image means around their replicate's mean, less the share of cell noise they
  carry (``var(image means) - cell / cells per image``, at least 0);
* ``replicate``: replicate means around their condition's mean, less what images and cells
  contribute; ``None`` when the pilot has fewer than two replicates per condition (then it
  cannot be estimated and the plan assumes 0, an optimistic plan).

:func:`simulate_power` draws new experiments from these components, ``n_simulations`` at a
time, for ``replicates`` replicates per condition of ``images`` images each, with the
treated condition shifted by ``effect`` (in the feature's units), and analyses each like
the biomarkers stage does: the design unit is the replicate when there are at least
``min_units`` replicates per condition (Student's t on replicate means), else the image. The
image-level permutation test is represented by Student's t on the image means (they agree
closely) with the permutation test's floor: when ``minimum_p`` of the images exceeds
``alpha`` the power is 0. Each grid point also reports the false-positive rate at no effect,
which exposes an image-level analysis of too few replicates. :func:`detectable_effect`
finds the smallest effect reaching the target power (bisection on common random numbers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from epikit.analysis.biomarkers import region_values
from epikit.analysis.design import MIN_UNITS, unit_ids
from epikit.analysis.mixed import pooled_variance
from epikit.analysis.stats import minimum_p
from epikit.errors import ConfigError, DataError


@dataclass(frozen=True)
class VarianceComponents:
    """Variance components of one feature and the pilot's layout.

    ``cells_per_image`` is the harmonic mean (an image mean of ``n`` cells carries
    ``cell / n`` of cell noise, so unequal counts weigh by ``1 / n``); the other layout
    numbers are arithmetic means.
    """

    feature: str
    replicate: float | None
    image: float
    cell: float
    cells_per_image: float
    images_per_replicate: float
    replicates_per_condition: float
    n_images: int
    n_cells: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def feature_values(cells: pd.DataFrame, feature: str) -> pd.Series:
    """One value per cell of ``feature``: a ``cells.parquet`` column, or ``CHANNEL:REGION``.

    ``CHANNEL:REGION`` takes the channel's shell shares (``<channel>_shell_<k>_share``):
    ``shell_<k>`` or ``rim_vs_centre`` (share of shell 1 minus share of the last shell).
    """
    if feature in cells.columns:
        return pd.to_numeric(cells[feature], errors="coerce")
    channel, sep, region = feature.partition(":")
    columns = sorted((c for c in cells.columns if c.startswith(f"{channel}_shell_") and c.endswith("_share")),
                     key=lambda c: int(c.split("_")[-2]))
    if not sep or not columns:
        shells = sorted({c.split("_shell_")[0] for c in cells.columns if "_shell_" in c})
        raise ConfigError(f"feature {feature!r} is neither a cells.parquet column nor CHANNEL:REGION with a "
                          f"known channel; channels with shell shares: {', '.join(shells) or 'none'} "
                          "(e.g. H3K27ac:rim_vs_centre)")
    values = region_values(cells[columns].to_numpy(float))
    if region not in values:
        raise ConfigError(f"region {region!r} of feature {feature!r} is unknown; use one of: {', '.join(values)}")
    return pd.Series(values[region], index=cells.index, name=feature)


def variance_components(cells: pd.DataFrame, feature: str) -> VarianceComponents:
    """Method-of-moments variance components of ``feature`` in a pilot's cell table (see the module)."""
    values = feature_values(cells, feature)
    data = pd.DataFrame({"value": values, "condition": cells["condition"].astype(str),
                         "image": cells["image_id"].astype(str),
                         **({"replicate": cells["replicate"].astype(str)} if "replicate" in cells else {})})
    data = data[np.isfinite(data["value"])]
    if data.empty:
        raise DataError(f"feature {feature!r} has no finite value in the pilot")
    data["rep_unit"] = unit_ids(data, "replicate", image="image")  # the design's replicate units
    cell_var, cell_dof = pooled_variance(data["value"], data["image"])
    if cell_dof == 0:
        raise DataError("the pilot has no image with two cells: cannot separate cell from image variation")
    images = data.groupby(["condition", "rep_unit", "image"])["value"].agg(["mean", "size"]).reset_index()
    mean_inv_cells = float((1.0 / images["size"]).mean())
    image_var_raw, image_dof = pooled_variance(images["mean"], images["rep_unit"])
    if image_dof == 0:
        raise DataError("the pilot has no replicate of a condition with two images: cannot estimate the "
                        "variation between images; image at least 2 fields per condition and replicate")
    image_var = max(0.0, image_var_raw - cell_var * mean_inv_cells)
    replicates = images.groupby(["condition", "rep_unit"])["mean"].agg(["mean", "size"]).reset_index()
    replicate_var: float | None = None
    rep_var_raw, rep_dof = pooled_variance(replicates["mean"], replicates["condition"])
    if rep_dof > 0:
        carried = (image_var + cell_var * mean_inv_cells) * float((1.0 / replicates["size"]).mean())
        replicate_var = max(0.0, rep_var_raw - carried)
    per_condition = replicates.groupby("condition").size()
    return VarianceComponents(
        feature=feature, replicate=replicate_var, image=image_var, cell=cell_var,
        cells_per_image=float(1.0 / mean_inv_cells), images_per_replicate=float(replicates["size"].mean()),
        replicates_per_condition=float(per_condition.mean()), n_images=int(len(images)), n_cells=int(len(data)))


def _student_p(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two-sided Student's t p-values along the last axis of (S, n) and (S, m) arrays."""
    n, m = x.shape[-1], y.shape[-1]
    pooled = ((n - 1) * x.var(axis=-1, ddof=1) + (m - 1) * y.var(axis=-1, ddof=1)) / (n + m - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (x.mean(axis=-1) - y.mean(axis=-1)) / np.sqrt(pooled * (1 / n + 1 / m))
    return 2 * scipy_stats.t.sf(np.abs(np.nan_to_num(t)), n + m - 2)


class _Experiments:
    """``n`` simulated null experiments of one layout: unit values of both conditions."""

    def __init__(self, components: VarianceComponents, replicates: int, images: int, n: int,
                 seed: int, min_units: int) -> None:
        rng = np.random.default_rng(seed)
        shape = (n, 2, replicates, images)
        replicate_sd = np.sqrt(components.replicate or 0.0)
        noise = (rng.normal(0.0, 1.0, shape[:3])[..., None] * replicate_sd
                 + rng.normal(0.0, np.sqrt(components.image), shape)
                 + rng.normal(0.0, np.sqrt(components.cell / max(components.cells_per_image, 1.0)), shape))
        self.unit = "replicate" if replicates >= min_units else "image"
        self.values = noise.mean(axis=3) if self.unit == "replicate" else noise.reshape(n, 2, -1)
        size = self.values.shape[-1]
        self.floor = 0.0 if self.unit == "replicate" else minimum_p(size, size)

    def power(self, effect: float, alpha: float) -> float:
        """Share of experiments with p < ``alpha`` when the treated condition is shifted by ``effect``."""
        if self.floor > alpha or self.values.shape[-1] < 2:
            return 0.0
        p = _student_p(self.values[:, 1] + effect, self.values[:, 0])
        return float(np.mean(p < alpha))


def simulate_power(components: VarianceComponents, effect: float | None, replicates: list[int],
                   images: list[int], alpha: float = 0.05, target: float = 0.8, n_simulations: int = 2000,
                   min_units: int = MIN_UNITS, seed: int = 0) -> pd.DataFrame:
    """Power (or, with ``effect=None``, the effect detectable at ``target`` power) over the grid.

    One row per replicates x images (per replicate and condition): ``images_per_condition``,
    ``unit`` and ``test`` of the analysis, ``power`` at ``effect`` (or ``detectable_effect``)
    and ``false_positive_rate`` at no effect.
    """
    if not replicates or not images or min(replicates) < 1 or min(images) < 1:
        raise ConfigError("the grid needs replicates >= 1 and images >= 1 per replicate")
    if not 0 < alpha < 1 or not 0 < target < 1 or n_simulations < 100:
        raise ConfigError("alpha and the target power must lie in (0, 1), simulations >= 100")
    if isinstance(min_units, bool) or not isinstance(min_units, (int, np.integer)) or min_units < 2:
        raise ConfigError(f"min_units = {min_units!r} must be a whole number >= 2 (replicates per condition "
                          "that make the replicate the unit; --min-units)")
    rows = []
    for r in sorted(set(replicates)):
        for m in sorted(set(images)):
            experiments = _Experiments(components, r, m, n_simulations, seed + 7919 * r + m, min_units)
            row: dict[str, Any] = {"replicates": r, "images_per_replicate": m, "images_per_condition": r * m,
                                   "unit": experiments.unit,
                                   "test": "ttest" if experiments.unit == "replicate" else "permutation (as t)",
                                   "units_per_condition": experiments.values.shape[-1]}
            if effect is not None:
                row["effect"] = abs(effect)
                row["power"] = experiments.power(abs(effect), alpha)
            else:
                row["target_power"] = target
                row["detectable_effect"] = detectable_effect(experiments, alpha, target, components)
            row["false_positive_rate"] = experiments.power(0.0, alpha)
            rows.append(row)
    return pd.DataFrame(rows)


def detectable_effect(experiments: _Experiments, alpha: float, target: float, components: VarianceComponents,
                      steps: int = 40) -> float:
    """Smallest shift reaching ``target`` power for these experiments (inf when none can)."""
    scale = np.sqrt((components.replicate or 0.0) + components.image + components.cell) or 1.0
    high = scale
    while experiments.power(high, alpha) < target:
        high *= 2
        if high > 1e4 * scale:
            return float("inf")
    low = 0.0
    for _ in range(steps):
        middle = (low + high) / 2
        low, high = (middle, high) if experiments.power(middle, alpha) < target else (low, middle)
        if high - low < 1e-4 * scale:
            break
    return float(high)


def recommend(table: pd.DataFrame, target: float = 0.8, max_false_positive: float = 0.1) -> dict[str, Any] | None:
    """The cheapest grid point (fewest images per condition, then replicates) reaching ``target``
    power with a false-positive rate at most ``max_false_positive``; None if there is none."""
    if "power" not in table:
        return None
    ok = table[(table["power"] >= target) & (table["false_positive_rate"] <= max_false_positive)]
    if ok.empty:
        return None
    best = ok.sort_values(["images_per_condition", "replicates"], kind="mergesort").iloc[0]
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in best.items()}
