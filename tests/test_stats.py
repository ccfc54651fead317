"""Tests of epikit.analysis.stats: effect sizes, BH, image- vs cell-level tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from epikit.analysis.stats import (
    benjamini_hochberg,
    bootstrap_mean_ci,
    choose_reference,
    cliffs_delta,
    compare_conditions,
    compare_images,
    hedges_g,
    mann_whitney,
    minimum_p,
    permutation_test,
)
from epikit.errors import ConfigError, DataError


def hierarchical_table(rng, n_images=8, cells=30, effect=0.0, image_sd=1.0, cell_sd=1.0):
    """Cells nested in images: each image has its own offset (staining, focus) plus cell noise."""
    rows = []
    for condition, shift in (("ctrl", 0.0), ("vpa", effect)):
        for i in range(n_images):
            offset = shift + rng.normal(0, image_sd)
            values = offset + rng.normal(0, cell_sd, cells)
            rows.append(pd.DataFrame({"condition": condition, "image_id": f"{condition}/f{i}",
                                      "quantity": "x", "value": values}))
    return pd.concat(rows, ignore_index=True)


def test_cliffs_delta_hand_example_and_brute_force():
    assert cliffs_delta([1, 2, 3], [2, 2, 4]) == pytest.approx(-1 / 3)
    assert cliffs_delta([5, 6], [1, 2]) == 1.0
    assert np.isnan(cliffs_delta([], [1.0]))
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    brute = np.mean(np.sign(x[:, None] - y[None, :]))
    assert cliffs_delta(x, y) == pytest.approx(brute)


def test_hedges_g_hand_example_and_degenerate_groups():
    # means 2 and 5, both variances 1: d = -3, correction 1 - 3 / (4 * 6 - 9) = 0.8
    assert hedges_g([1, 2, 3], [4, 5, 6]) == pytest.approx(-3 * 0.8)
    assert hedges_g([1, 1], [0, 0]) == float("inf")
    assert np.isnan(hedges_g([1, 1], [1, 1])) and np.isnan(hedges_g([1], [0, 2]))


def test_benjamini_hochberg_hand_example():
    q = benjamini_hochberg([0.01, 0.04, 0.03, 0.20])
    np.testing.assert_allclose(q, [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    with_nan = benjamini_hochberg([0.01, np.nan, 0.04, 0.03, 0.20])
    assert np.isnan(with_nan[1])
    np.testing.assert_allclose(np.delete(with_nan, 1), q)
    p = np.random.default_rng(1).uniform(size=50) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), scipy_stats.false_discovery_control(p))
    with pytest.raises(DataError):
        benjamini_hochberg([0.5, 1.5])


def test_exact_permutation_minimum_and_monte_carlo_agree():
    assert permutation_test([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert minimum_p(3, 3) == pytest.approx(0.1)
    assert minimum_p(6, 6) == pytest.approx(2 / 924)
    assert minimum_p(3, 2) == pytest.approx(0.1)
    assert minimum_p(3, 2, "mannwhitney") == pytest.approx(0.2)
    assert mann_whitney([4, 5, 6], [1, 2]) == pytest.approx(minimum_p(3, 2, "mannwhitney"))
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.8, 1, 9), rng.normal(0, 1, 8)
    exact = permutation_test(x, y, exact_limit=10**6)
    sampled = permutation_test(x, y, exact_limit=0, n_permutations=20000, seed=3)
    assert abs(exact - sampled) < 0.01
    mw = compare_images(x, y, image_test="mannwhitney")
    assert mw.p_value == pytest.approx(scipy_stats.mannwhitneyu(x, y).pvalue)
    with pytest.raises(ConfigError, match="image-level test"):
        compare_images(x, y, image_test="t")


def test_planted_difference_is_found_at_image_level():
    table = hierarchical_table(np.random.default_rng(4), effect=3.0)
    out = compare_conditions(table, keys=["quantity"])
    image = out[out.unit == "image"].iloc[0]
    assert image.condition == "vpa" and image.reference == "ctrl"
    assert image.n_condition == 8 and image.n_reference == 8
    assert image.p_value < 0.01 and image.q_value < 0.01
    assert image.effect > 1.5 and image.cliffs_delta > 0.8
    cell = out[out.unit == "cell"].iloc[0]
    assert cell.n_condition == 240 and cell.test == "mannwhitney"


def test_null_false_positive_rate_image_level_near_alpha_cell_level_inflated():
    rng = np.random.default_rng(5)
    rejections = {"image": 0, "cell": 0}
    n_runs = 200
    for _ in range(n_runs):
        out = compare_conditions(hierarchical_table(rng), keys=["quantity"]).set_index("unit")
        for unit in rejections:
            rejections[unit] += out.loc[unit, "p_value"] < 0.05
    image_rate, cell_rate = rejections["image"] / n_runs, rejections["cell"] / n_runs
    # Exact permutation test of image means: valid, so near alpha (binomial sd ~ 0.015).
    assert 0.01 <= image_rate <= 0.09
    # Cells of one image share its offset: pseudo-replication rejects far too often.
    assert cell_rate > 0.4


def test_q_values_are_per_unit_and_columns_complete():
    rng = np.random.default_rng(6)
    tables = []
    for k in range(6):
        t = hierarchical_table(rng, n_images=5, cells=10, effect=4.0 if k == 0 else 0.0)
        t["quantity"] = f"q{k}"
        tables.append(t)
    out = compare_conditions(pd.concat(tables), keys=["quantity"])
    assert len(out) == 12
    for unit, group in out.groupby("unit"):
        np.testing.assert_allclose(group.q_value, benjamini_hochberg(group.p_value))
    for column in ("mean_condition", "mean_reference", "effect", "cliffs_delta", "p_value",
                   "q_value", "unit", "n_condition", "n_reference", "min_p", "test"):
        assert column in out.columns
    assert out.loc[(out.unit == "image") & (out.quantity == "q0"), "p_value"].iloc[0] < 0.05


def test_nan_values_are_dropped_and_missing_columns_raise():
    table = hierarchical_table(np.random.default_rng(7), n_images=4, cells=5, effect=1.0)
    table.loc[::3, "value"] = np.nan
    out = compare_conditions(table, keys=["quantity"])
    assert out.loc[out.unit == "cell", "n_condition"].iloc[0] < 20
    with pytest.raises(DataError, match="image_id"):
        compare_conditions(table.drop(columns="image_id"), keys=["quantity"])


def test_conditions_that_are_not_strings_are_compared_and_keep_their_values():
    table = hierarchical_table(np.random.default_rng(3), n_images=6, cells=5, effect=1.0)
    numeric = table.assign(condition=table["condition"].map({"ctrl": 0, "vpa": 10}))
    out = compare_conditions(numeric, keys=["quantity"], reference=0)
    expected = compare_conditions(table, keys=["quantity"], reference="ctrl")
    assert out["p_value"].notna().all()
    np.testing.assert_allclose(out["p_value"], expected["p_value"])
    assert set(out["condition"]) == {10} and set(out["reference"]) == {0}
    with pytest.raises(DataError, match="read the same"):
        compare_conditions(numeric.assign(condition=numeric["condition"].where(numeric.index % 2 == 0, "10")),
                           keys=["quantity"])


def test_reference_choice():
    assert choose_reference(["vpa", "Ctrl"]) == "Ctrl"
    assert choose_reference(["tsa", "DMSO", "vpa"]) == "DMSO"
    assert choose_reference(["b", "a"]) == "a"
    assert choose_reference(["b", "a"], "b") == "b"
    with pytest.raises(ConfigError, match="not found; conditions: a, b"):
        choose_reference(["b", "a"], "c")
    with pytest.raises(DataError, match="two conditions"):
        choose_reference(["a", "a"])


def test_bootstrap_band_over_images():
    rng = np.random.default_rng(8)
    small = rng.normal(1.0, 1.0, (6, 5))
    mean, low, high = bootstrap_mean_ci(small, seed=1)
    assert mean.shape == low.shape == high.shape == (5,)
    assert np.all(low <= mean) and np.all(mean <= high)
    _, low_big, high_big = bootstrap_mean_ci(rng.normal(1.0, 1.0, (200, 5)), seed=1)
    assert np.all(high_big - low_big < high - low)
    with pytest.raises(DataError):
        bootstrap_mean_ci(np.zeros((0, 5)))
