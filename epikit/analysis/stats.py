"""Condition comparisons that respect the experimental design.

Cells of one field share its staining, focus and density, so they are not independent
replicates: testing cells against cells ("pseudo-replication") makes p-values far too small.
The unit of the **image-level** test is therefore the field: each image contributes the mean
of its cells, and the per-image means of a condition are compared with those of the
reference. The **cell-level** Mann-Whitney U test is reported next to it for comparison only.

Image-level test (``image_test``):

``"permutation"`` (default)
    Two-sided permutation test of the difference in means of the per-image means. Exact
    (every split of the images enumerated) when there are at most ``exact_limit`` splits,
    otherwise Monte Carlo with ``n_permutations`` random splits and ``p = (1 + b) / (1 + B)``.
    It uses the size of the differences, not only their ranks.
``"mannwhitney"``
    Mann-Whitney U on the per-image means (scipy; exact distribution for small samples).
``"ttest"``
    Student's two-sample t-test on the unit means (:func:`student_t`): the test of nested
    designs analysed at their replicate level (:mod:`epikit.analysis.design`), where 3 vs 3
    units leave an exact permutation test no p-value below 0.1.

Either way few images cap the evidence: with ``n`` and ``m`` images the smallest attainable
two-sided p-value is about ``2 / C(n + m, n)`` (0.1 for 3 vs 3, 0.029 for 4 vs 4, 0.0022 for
6 vs 6), see :func:`minimum_p`. No test can do better honestly; image more fields.

Effect sizes: ``effect`` = mean(condition) - mean(reference) (of image means at image level,
of cells at cell level), Cliff's delta ``P(x > y) - P(x < y)`` in [-1, 1], and Hedges' g
(``effect`` over the pooled standard deviation, small-sample corrected), which stays
informative when Cliff's delta saturates at +-1 (complete separation of few images).
q-values: Benjamini-Hochberg (:func:`benjamini_hochberg`), computed by
:func:`compare_conditions` within each unit (the image-level rows form the family of tests;
the cell-level rows are a second, comparison-only family).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from epikit.errors import ConfigError, DataError

REFERENCE_NAMES: tuple[str, ...] = ("ctrl", "control", "untreated", "mock", "dmso")
IMAGE_TESTS: tuple[str, ...] = ("permutation", "mannwhitney", "ttest")


def cliffs_delta(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Cliff's delta ``P(x > y) - P(x < y)`` over all pairs, in [-1, 1] (NaN if a side is empty)."""
    x = np.asarray(x, dtype=float)
    y = np.sort(np.asarray(y, dtype=float))
    if x.size == 0 or y.size == 0:
        return float("nan")
    below = np.searchsorted(y, x, side="left")  # y values smaller than each x
    above = y.size - np.searchsorted(y, x, side="right")  # y values larger than each x
    return float((below.sum() - above.sum()) / (x.size * y.size))


def hedges_g(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Standardised mean difference of ``x`` over ``y``: pooled-SD Cohen's d times Hedges' correction.

    NaN with fewer than two values in either group or no variation at all and equal means;
    +-inf when the groups do not vary but their means differ.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n, m = x.size, y.size
    if n < 2 or m < 2:
        return float("nan")
    difference = float(x.mean() - y.mean())
    pooled = math.sqrt(((n - 1) * x.var(ddof=1) + (m - 1) * y.var(ddof=1)) / (n + m - 2))
    if pooled == 0:
        return math.copysign(math.inf, difference) if difference else float("nan")
    return difference / pooled * (1 - 3 / (4 * (n + m) - 9))


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up FDR adjustment); NaN p-values stay NaN and do not count."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return q
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise DataError("p-values must lie in [0, 1]")
    order = valid[np.argsort(p[valid], kind="mergesort")]
    ranked = p[order] * valid.size / np.arange(1, valid.size + 1)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def minimum_p(n: int, m: int, test: str = "permutation") -> float:
    """Smallest two-sided p-value an exact two-sample test of ``n`` vs ``m`` values can give.

    Permutation test: only the most extreme split (and, when ``n == m``, its mirror image)
    reaches the observed difference. Mann-Whitney doubles the one-sided p-value, whatever
    the group sizes.
    """
    if n < 1 or m < 1:
        return float("nan")
    if test == "ttest":
        return 0.0
    extreme = 2 if n == m or test == "mannwhitney" else 1
    return min(1.0, extreme / math.comb(n + m, n))


@lru_cache(maxsize=32)
def all_splits(total: int, n: int) -> np.ndarray:
    """Every choice of ``n`` of ``total`` indices, as an array (C(total, n), n)."""
    splits = np.array(list(itertools.combinations(range(total), n)), dtype=np.intp)
    splits.flags.writeable = False
    return splits


def permutation_test(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    n_permutations: int = 9999,
    exact_limit: int = 50000,
    seed: int = 0,
) -> float:
    """Two-sided permutation p-value of ``mean(x) - mean(y)`` (exact when affordable).

    Enumerates every split of the pooled values when there are at most ``exact_limit``;
    otherwise draws ``n_permutations`` random splits (``p = (1 + b) / (1 + B)``).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n, m = x.size, y.size
    if n == 0 or m == 0:
        return float("nan")
    pooled = np.concatenate([x, y])
    total = pooled.sum()

    def statistic(sums: np.ndarray) -> np.ndarray:
        return np.abs(sums / n - (total - sums) / m)

    observed = statistic(np.array([x.sum()]))[0]
    tolerance = 1e-9 * max(1.0, float(np.abs(pooled).max()))
    if math.comb(n + m, n) <= exact_limit:
        null = statistic(pooled[all_splits(n + m, n)].sum(axis=1))
        return float(np.mean(null >= observed - tolerance))
    rng = np.random.default_rng(seed)
    order = rng.permuted(np.tile(np.arange(n + m), (n_permutations, 1)), axis=1)
    null = statistic(pooled[order[:, :n]].sum(axis=1))
    return float((1 + np.sum(null >= observed - tolerance)) / (1 + n_permutations))


def mann_whitney(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Two-sided Mann-Whitney U p-value (NaN when a side is empty or all values are equal)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0 or y.size == 0 or np.ptp(np.concatenate([x, y])) == 0:
        return float("nan") if x.size == 0 or y.size == 0 else 1.0
    return float(scipy_stats.mannwhitneyu(x, y, alternative="two-sided").pvalue)


def student_t(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Two-sided Student's t-test (pooled variance) p-value; NaN with fewer than 3 values in all.

    1.0 when nothing varies and the means agree, 0.0 when nothing varies but they differ.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.size == 0 or y.size == 0 or x.size + y.size < 3:
        return float("nan")
    spread = (x.var(ddof=1) if x.size > 1 else 0.0) + (y.var(ddof=1) if y.size > 1 else 0.0)
    if spread == 0:
        return 1.0 if x.mean() == y.mean() else 0.0
    return float(scipy_stats.ttest_ind(x, y, equal_var=True).pvalue)


@dataclass(frozen=True)
class Comparison:
    """One condition-vs-reference comparison of one quantity at one statistical unit."""

    unit: str
    test: str
    mean_condition: float
    mean_reference: float
    effect: float
    cliffs_delta: float
    hedges_g: float
    p_value: float
    n_condition: int
    n_reference: int
    min_p: float


def _comparison(unit: str, test: str, x: np.ndarray, y: np.ndarray, p: float) -> Comparison:
    mean_x = float(np.mean(x)) if x.size else float("nan")
    mean_y = float(np.mean(y)) if y.size else float("nan")
    return Comparison(
        unit=unit,
        test=test,
        mean_condition=mean_x,
        mean_reference=mean_y,
        effect=mean_x - mean_y,
        cliffs_delta=cliffs_delta(x, y),
        hedges_g=hedges_g(x, y),
        p_value=p,
        n_condition=int(x.size),
        n_reference=int(y.size),
        min_p=minimum_p(x.size, y.size, test),
    )


def compare_images(
    x: np.ndarray, y: np.ndarray, image_test: str = "permutation", seed: int = 0
) -> Comparison:
    """Image-level comparison of per-image means ``x`` (condition) and ``y`` (reference)."""
    if image_test not in IMAGE_TESTS:
        raise ConfigError(f"unknown image-level test {image_test!r}; use one of: {', '.join(IMAGE_TESTS)}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if image_test == "permutation":
        p = permutation_test(x, y, seed=seed)
    elif image_test == "ttest":
        p = student_t(x, y)
    else:
        p = mann_whitney(x, y)
    return _comparison("image", image_test, x, y, p)


def compare_cells(x: np.ndarray, y: np.ndarray) -> Comparison:
    """Cell-level Mann-Whitney U comparison (pseudo-replicated; for comparison only)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    return _comparison("cell", "mannwhitney", x, y, mann_whitney(x, y))


def condition_doses(table: pd.DataFrame, condition: str = "condition", dose: str = "dose") -> dict[str, float] | None:
    """Each condition's dose (its lowest, if its rows differ) from a table's ``dose`` column; None without one."""
    if dose not in table.columns:
        return None
    values = pd.to_numeric(table[dose], errors="coerce")
    lowest = values.groupby(table[condition].astype(str)).min().dropna()
    return {str(name): float(value) for name, value in lowest.items()}


def choose_reference(conditions: Sequence[str], reference: str | None = None,
                     doses: dict[str, float] | None = None) -> str:
    """The reference condition: ``reference`` if given, else the lowest dose's, else a control-like name, else the first.

    ``doses`` (condition -> dose, e.g. :func:`condition_doses`): the single condition at the
    lowest dose is the reference; when several share it, the control-like one among them
    (a :class:`ConfigError` asking for a reference when none or several are). Control-like
    names (case-insensitive): ctrl, control, untreated, mock, dmso. Raises :class:`DataError`
    with fewer than two conditions, :class:`ConfigError` for an unknown ``reference``.
    """
    names = sorted({str(c) for c in conditions})
    if len(names) < 2:
        raise DataError(
            f"need at least two conditions to compare; found {names or 'none'}"
        )
    if reference is not None:
        if reference not in names:
            raise ConfigError(f"reference condition {reference!r} not found; conditions: {', '.join(names)}")
        return reference
    known = {name: doses[name] for name in names if doses and name in doses}
    candidates = names
    if known:
        lowest = min(known.values())
        candidates = [name for name in names if known.get(name) == lowest]
        if len(candidates) == 1:
            return candidates[0]
    controls = [name for name in candidates if name.lower() in REFERENCE_NAMES]
    if known and len(controls) != 1:
        raise ConfigError(f"conditions {', '.join(candidates)} share the lowest dose {lowest:g}; name the "
                          "reference condition (-p biomarkers.reference=NAME)")
    return controls[0] if controls else names[0]


def compare_conditions(
    table: pd.DataFrame,
    keys: Sequence[str],
    value: str = "value",
    condition: str = "condition",
    image: str = "image_id",
    reference: str | None = None,
    image_test: str = "permutation",
    units: Sequence[str] = ("image", "cell"),
    seed: int = 0,
) -> pd.DataFrame:
    """Compare every non-reference condition with the reference, per group of ``keys``.

    ``table`` is long-format: one row per cell and quantity, with the ``keys`` columns naming
    the quantity (e.g. source, channel, region), ``value``, ``condition`` and ``image``.
    Returns one row per quantity x condition x unit with the :class:`Comparison` fields,
    ``condition``, ``reference`` and ``q_value`` (Benjamini-Hochberg within each unit).
    Cells with a NaN value are dropped (e.g. an empty shell of a tiny nucleus).
    """
    missing = [c for c in (*keys, value, condition, image) if c not in table.columns]
    if missing:
        raise DataError(f"comparison table lacks column(s) {', '.join(missing)}")
    labels = _condition_labels(table[condition])
    ref = choose_reference(list(labels), None if reference is None else str(reference))
    others = sorted(c for c in labels if c != ref)
    data = table.loc[table[value].notna(), [*keys, value, image]].assign(
        **{condition: table[condition].map(lambda c: str(c))})
    rows: list[dict[str, Any]] = []
    for key_values, group in data.groupby(list(keys), sort=True, dropna=False):
        key_values = key_values if isinstance(key_values, tuple) else (key_values,)
        per_image = group.groupby([condition, image], sort=True)[value].mean()
        reference_cells = group.loc[group[condition] == ref, value].to_numpy()
        reference_images = per_image.get(ref, pd.Series(dtype=float)).to_numpy()
        for other in others:
            results = []
            if "image" in units:
                other_images = per_image.get(other, pd.Series(dtype=float)).to_numpy()
                results.append(compare_images(other_images, reference_images, image_test, seed))
            if "cell" in units:
                other_cells = group.loc[group[condition] == other, value].to_numpy()
                results.append(compare_cells(other_cells, reference_cells))
            for result in results:
                rows.append({**dict(zip(keys, key_values)), "condition": labels[other],
                             "reference": labels[ref], **asdict(result)})
    out = pd.DataFrame(rows)
    if out.empty:
        raise DataError("nothing to compare: no values for the non-reference conditions")
    return adjust_within_units(out)


def adjust_within_units(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``q_value``: Benjamini-Hochberg of ``p_value`` within each ``unit`` (one family per unit)."""
    table = table.copy()
    table["q_value"] = np.nan
    for _, index in table.groupby("unit").groups.items():
        table.loc[index, "q_value"] = benjamini_hochberg(table.loc[index, "p_value"].to_numpy())
    return table


def _condition_labels(conditions: pd.Series) -> dict[str, Any]:
    """Each condition's text (how it is compared and matched) -> the value as the table holds it.

    Any hashable condition works (0 and 10, or "ctrl" and "vpa"); two values that read the
    same (1 and "1") are a :class:`DataError`.
    """
    labels: dict[str, Any] = {}
    for value in pd.unique(conditions):
        text = str(value)
        if text in labels:
            raise DataError(f"conditions {labels[text]!r} and {value!r} read the same ({text!r}); "
                            "give every condition a distinct name")
        labels[text] = value.item() if isinstance(value, np.generic) else value
    return labels


def bootstrap_mean_ci(
    per_image: np.ndarray, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile bootstrap band over images of per-image values (n_images, ...).

    Images (rows) are resampled with replacement, so the band reflects field-to-field
    variation. Returns ``(mean, low, high)``, each shaped like one row.
    """
    values = np.asarray(per_image, dtype=float)
    if values.shape[0] == 0:
        raise DataError("no images to bootstrap")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.shape[0], size=(n_boot, values.shape[0]))
    boot = np.nanmean(values[draws], axis=1)
    tail = (1 - level) / 2 * 100
    return (
        np.nanmean(values, axis=0),
        np.nanpercentile(boot, tail, axis=0),
        np.nanpercentile(boot, 100 - tail, axis=0),
    )
