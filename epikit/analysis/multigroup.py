"""More than two conditions: an overall test across them and, with doses, an ordered trend.

All tests here take one value per independent unit (the design unit of
:mod:`epikit.analysis.design`: replicate, group or image means) and get their p-values by
permuting the units' values across conditions, ``p = (1 + b) / (1 + B)`` with ``B``
permutations. Nothing assumes normality, and cells never count as units.

* :func:`overall_test`: are the conditions different at all? The Kruskal-Wallis H statistic
  (ranks; default) or the one-way ANOVA F statistic (values), permuted.
* :func:`trend_test`: does the value rise (or fall) with dose? The Jonckheere-Terpstra
  statistic ``J`` counts, over all pairs of units at a lower and a higher dose, how often the
  higher dose has the larger value (ties count 1/2); the two-sided p-value permutes the units
  against ``|J - E[J]|``. ``direction`` is ``increasing`` when ``J`` exceeds its null mean.
* :func:`isotonic_fit`: the monotone (in the test's direction) fit of the dose means,
  weighted by units, by pool-adjacent-violators (scipy).

:func:`multigroup_table` runs them for every quantity with Benjamini-Hochberg q-values
across quantities, one family per test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats as scipy_stats

from epikit.analysis.design import Design, unit_means
from epikit.analysis.stats import benjamini_hochberg
from epikit.errors import ConfigError, DataError

OVERALL_STATISTICS: tuple[str, ...] = ("kruskal", "f")
#: Permutations drawn at once (bounds memory: chunk x units x units booleans for the trend).
CHUNK = 1000


def _permutations(n: int, n_permutations: int, seed: int) -> Any:
    """Chunks of random permutations of ``range(n)``, ``n_permutations`` rows in all."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_permutations, CHUNK):
        rows = min(CHUNK, n_permutations - start)
        yield rng.permuted(np.tile(np.arange(n), (rows, 1)), axis=1)


def _group_statistic(values: np.ndarray, onehot: np.ndarray, statistic: str) -> np.ndarray:
    """Kruskal-Wallis H (``values`` are ranks) or F per row of ``values`` (B, N)."""
    sizes = onehot.sum(axis=0)
    sums = values @ onehot
    n = values.shape[1]
    if statistic == "kruskal":
        return 12.0 / (n * (n + 1)) * (sums**2 / sizes).sum(axis=1) - 3.0 * (n + 1)
    k = onehot.shape[1]
    grand = values.sum(axis=1, keepdims=True) / n
    between = ((sums / sizes - grand) ** 2 * sizes).sum(axis=1)
    within = (values**2).sum(axis=1) - (sums**2 / sizes).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (between / (k - 1)) / (within / (n - k))


def overall_test(values: Sequence[float] | np.ndarray, conditions: Sequence[Any] | np.ndarray,
                 statistic: str = "kruskal", n_permutations: int = 9999, seed: int = 0) -> tuple[float, float]:
    """``(statistic, p)`` of the permuted Kruskal-Wallis H (or F) across conditions.

    NaN for fewer than two conditions or fewer than three values.
    """
    if statistic not in OVERALL_STATISTICS:
        raise ConfigError(f"unknown overall statistic {statistic!r}; use one of: {', '.join(OVERALL_STATISTICS)}")
    values = np.asarray(values, dtype=float)
    labels, index = np.unique(np.asarray(conditions).astype(str), return_inverse=True)
    if len(labels) < 2 or values.size < 3:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        return 0.0, 1.0
    onehot = np.eye(len(labels))[index]
    data = scipy_stats.rankdata(values) if statistic == "kruskal" else values
    observed = float(_group_statistic(data[None], onehot, statistic)[0])
    tolerance = 1e-9 * max(1.0, abs(observed))
    exceed = sum(int((_group_statistic(data[order], onehot, statistic) >= observed - tolerance).sum())
                 for order in _permutations(values.size, n_permutations, seed))
    return observed, (1 + exceed) / (1 + n_permutations)


def jonckheere(values: Sequence[float] | np.ndarray, doses: Sequence[float] | np.ndarray) -> float:
    """The Jonckheere-Terpstra statistic: pairs (lower dose, higher dose) ordered upwards, ties 1/2."""
    values = np.asarray(values, dtype=float)
    doses = np.asarray(doses, dtype=float)
    higher = np.sign(values[None, :] - values[:, None])  # [a, b]: value of b above a
    return float(((1.0 + higher) / 2.0)[doses[:, None] < doses[None, :]].sum())


def trend_test(values: Sequence[float] | np.ndarray, doses: Sequence[float] | np.ndarray,
               n_permutations: int = 9999, seed: int = 0) -> dict[str, Any]:
    """Two-sided Jonckheere-Terpstra trend test by permutation of the units.

    Returns ``statistic`` (J), ``expected`` (its null mean, half the ordered pairs), ``p``,
    ``direction`` (increasing, decreasing or none) and Kendall's ``tau`` of value on dose
    (the trend's size on a -1..1 scale).
    """
    values = np.asarray(values, dtype=float)
    doses = np.asarray(doses, dtype=float)
    if values.shape != doses.shape:
        raise DataError("trend test needs one dose per value")
    ordered = doses[:, None] < doses[None, :]
    if np.unique(doses).size < 2 or values.size < 3:
        return {"statistic": float("nan"), "expected": float("nan"), "p": float("nan"), "direction": "none",
                "tau": float("nan")}
    observed = jonckheere(values, doses)
    expected = ordered.sum() / 2.0
    higher = (1.0 + np.sign(values[None, :] - values[:, None])) / 2.0
    distance = abs(observed - expected)
    tolerance = 1e-9 * max(1.0, distance)
    exceed = 0
    for order in _permutations(values.size, n_permutations, seed):
        permuted = higher[order[:, :, None], order[:, None, :]]
        null = (permuted * ordered).sum(axis=(1, 2))
        exceed += int((np.abs(null - expected) >= distance - tolerance).sum())
    direction = "none" if observed == expected else ("increasing" if observed > expected else "decreasing")
    tau = float(scipy_stats.kendalltau(doses, values).statistic)
    return {"statistic": observed, "expected": float(expected), "p": (1 + exceed) / (1 + n_permutations),
            "direction": direction, "tau": tau}


def isotonic_fit(values: Sequence[float] | np.ndarray, doses: Sequence[float] | np.ndarray,
                 increasing: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dose levels, mean per dose, monotone fit per dose)``, weighted by values per dose."""
    frame = pd.DataFrame({"dose": np.asarray(doses, dtype=float), "value": np.asarray(values, dtype=float)})
    per = frame.groupby("dose", sort=True)["value"].agg(["mean", "size"])
    fit = optimize.isotonic_regression(per["mean"].to_numpy(), weights=per["size"].to_numpy(float),
                                       increasing=increasing).x
    return per.index.to_numpy(float), per["mean"].to_numpy(float), np.asarray(fit, dtype=float)


def condition_doses(table: pd.DataFrame, condition: str = "condition", dose: str = "dose") -> dict[str, float]:
    """The dose of each condition; :class:`DataError` when a condition has more than one."""
    per = table.groupby(table[condition].astype(str))[dose].agg(["min", "max"])
    mixed = per.index[per["min"] != per["max"]]
    if len(mixed):
        raise DataError(f"condition {mixed[0]!r} has several doses ({per.loc[mixed[0], 'min']:g} to "
                        f"{per.loc[mixed[0], 'max']:g}); give each dose its own condition name in the manifest")
    return {str(c): float(d) for c, d in per["min"].items()}


def multigroup_table(means: pd.DataFrame, keys: Sequence[str], unit: str,
                     doses: dict[str, float] | None = None, statistic: str = "kruskal",
                     n_permutations: int = 9999, seed: int = 0) -> pd.DataFrame:
    """Per quantity the overall test and (with ``doses``) the trend test on unit means.

    ``means`` has the ``keys`` columns, ``condition`` and ``value`` (one row per unit, e.g.
    from :func:`epikit.analysis.design.unit_means`). Columns: the keys, ``unit``,
    ``n_conditions``, ``n_units``, ``overall_test``, ``overall_statistic``, ``overall_p``,
    ``overall_q`` and, with doses, ``trend_statistic``, ``trend_expected``, ``trend_tau``,
    ``trend_direction``, ``trend_p``, ``trend_q``, ``doses``, ``dose_means`` and
    ``monotone_fit`` (``;``-joined numbers, one per dose level, lowest dose first).
    """
    rows = []
    for key_values, block in means.groupby(list(keys), sort=True, dropna=False):
        key_values = key_values if isinstance(key_values, tuple) else (key_values,)
        block = block[block["value"].notna()]
        conditions = block["condition"].astype(str).to_numpy()
        values = block["value"].to_numpy(float)
        h, p = overall_test(values, conditions, statistic, n_permutations, seed)
        row: dict[str, Any] = {**dict(zip(keys, key_values)), "unit": unit,
                               "n_conditions": int(np.unique(conditions).size), "n_units": int(values.size),
                               "overall_test": f"{statistic} (permutation)", "overall_statistic": h, "overall_p": p}
        if doses is not None:
            unit_doses = np.array([doses[c] for c in conditions])
            trend = trend_test(values, unit_doses, n_permutations, seed)
            levels, dose_means, fit = isotonic_fit(values, unit_doses, trend["direction"] != "decreasing")
            row.update({"trend_statistic": trend["statistic"], "trend_expected": trend["expected"],
                        "trend_tau": trend["tau"], "trend_direction": trend["direction"], "trend_p": trend["p"],
                        "doses": _joined(levels), "dose_means": _joined(dose_means), "monotone_fit": _joined(fit)})
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        raise DataError("nothing to test across conditions: no unit values")
    out.insert(out.columns.get_loc("overall_p") + 1, "overall_q", benjamini_hochberg(out["overall_p"].to_numpy()))
    if doses is not None:
        out.insert(out.columns.get_loc("trend_p") + 1, "trend_q", benjamini_hochberg(out["trend_p"].to_numpy()))
    return out


def _joined(values: np.ndarray) -> str:
    return ";".join(f"{v:.6g}" for v in values)


def across_conditions(long: pd.DataFrame, keys: Sequence[str], design: Design, statistic: str = "kruskal",
                      n_permutations: int = 9999, seed: int = 0) -> pd.DataFrame | None:
    """:func:`multigroup_table` on the design unit's means of ``long``; None with two conditions and no dose.

    A ``dose`` column in ``long`` adds the trend test (each condition must have one dose).
    """
    has_dose = "dose" in long.columns
    if long["condition"].nunique() < 3 and not has_dose:
        return None
    doses = condition_doses(long) if has_dose else None
    means = unit_means(long, keys, design.unit)
    return multigroup_table(means, keys, design.unit, doses, statistic, n_permutations, seed)
