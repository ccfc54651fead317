"""Nested designs, many conditions and doses, and the power planner, on synthetic tables.

The statistics are checked on tables drawn from a known nested model (replicate, image and
cell variation), so their error rates can be measured over many data sets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from epikit.analysis.design import compare_design, describe_design, unit_means
from epikit.analysis.multigroup import (
    condition_doses,
    isotonic_fit,
    multigroup_table,
    overall_test,
    trend_test,
)
from epikit.analysis.mixed import pooled_variance
from epikit.analysis.power import VarianceComponents, simulate_power, variance_components
from epikit.analysis.stats import student_t
from epikit.errors import ConfigError, DataError


def nested_table(rng: np.random.Generator, effect: float = 0.0, replicates: int = 3, images: int = 4,
                 cells: int = 20, sd_replicate: float = 1.0, sd_image: float = 0.2, sd_cell: float = 1.0,
                 conditions: tuple[str, ...] = ("ctrl", "vpa"), doses: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per cell: replicate, image and cell draws; ``effect`` (times the dose) outside ctrl."""
    rows = []
    for condition in conditions:
        shift = effect * (doses[condition] if doses else (condition != "ctrl"))
        for r in range(replicates):
            rep = rng.normal(0, sd_replicate)
            for i in range(images):
                image = rng.normal(0, sd_image)
                values = shift + rep + image + rng.normal(0, sd_cell, cells)
                for k, value in enumerate(values):
                    rows.append({"cell_id": f"{condition}/{r}/{i}#{k}", "image_id": f"{condition}/r{r}_f{i}",
                                 "condition": condition, "replicate": f"rep{r + 1}", "group": f"{condition}/r{r}_f{i}",
                                 "region": "rim_vs_centre", "value": value,
                                 **({"dose": doses[condition]} if doses else {})})
    return pd.DataFrame(rows)


def test_design_unit_is_the_highest_level_with_three_units_per_condition():
    rng = np.random.default_rng(0)
    design = describe_design(nested_table(rng))
    assert design.levels == ("replicate", "image") and design.unit == "replicate"
    assert design.counts == {"replicate": {"ctrl": 3, "vpa": 3}, "image": {"ctrl": 12, "vpa": 12}}
    assert design.effective_n("vpa") == 3 and design.cells == {"ctrl": 240, "vpa": 240}

    two = describe_design(nested_table(rng, replicates=2))
    assert two.unit == "image" and "replicate level has fewer" in two.reason
    few = describe_design(nested_table(rng, replicates=1, images=2))
    assert few.unit == "image" and "no level has 3 units" in few.reason

    wells = nested_table(rng, replicates=1, images=6)
    wells["group"] = wells["image_id"].str[:-1] + (wells["image_id"].str[-1].astype(int) // 2).astype(str)
    design = describe_design(wells.drop(columns="replicate"))
    assert design.levels == ("group", "image") and design.unit == "group"
    assert design.counts["group"] == {"ctrl": 3, "vpa": 3}


def test_an_image_in_two_replicates_is_a_one_line_error():
    table = nested_table(np.random.default_rng(1))
    table.loc[table.index[0], "replicate"] = "rep9"
    with pytest.raises(DataError, match="image_id 'ctrl/r0_f0' spans more than one replicate"):
        describe_design(table)


def test_unit_means_weigh_every_image_alike():
    table = pd.DataFrame({"image_id": ["a1", "a1", "a1", "a2", "b1", "b2"], "condition": ["c"] * 4 + ["d"] * 2,
                          "replicate": ["r1"] * 6, "region": "x", "value": [0.0, 0.0, 3.0, 5.0, 1.0, 2.0]})
    means = unit_means(table, ["region"], "replicate")
    assert means["unit"].tolist() == ["c|r1", "d|r1"]
    assert means["value"].tolist() == pytest.approx([3.0, 1.5])  # (1 + 5) / 2, not 8 / 4


def test_replicate_effect_without_treatment_is_not_significant_at_the_design_unit_but_is_below():
    """Over 80 null data sets with a strong replicate effect: the replicate-level test keeps its
    5% rate, the field- and cell-level analyses (reported for comparison) do not."""
    rng = np.random.default_rng(2)
    rejections = {"replicate": 0, "image": 0, "cell": 0}
    runs = 80
    for _ in range(runs):
        table = nested_table(rng, cells=10)
        rows = compare_design(table, ["region"], describe_design(table), image_test="mannwhitney")
        for unit, p in zip(rows["unit"], rows["p_value"]):
            rejections[unit] += p < 0.05
        assert (rows["role"] == "design").sum() == 1 and rows.loc[rows["role"] == "design", "unit"].item() == "replicate"
    assert rejections["replicate"] / runs <= 0.11
    assert rejections["image"] / runs >= 0.18  # about 4x the nominal 5%
    assert rejections["cell"] / runs >= 0.6


def test_a_real_effect_is_found_at_the_replicate_level():
    rng = np.random.default_rng(3)
    found = 0
    for _ in range(20):
        table = nested_table(rng, effect=4.0, sd_replicate=0.5)
        rows = compare_design(table, ["region"], describe_design(table), image_test="mannwhitney")
        design_row = rows[rows["role"] == "design"].iloc[0]
        assert design_row["n_condition"] == 3 and design_row["test"] == "ttest"
        found += design_row["q_value"] < 0.05
    assert found >= 17


def test_student_t_matches_scipy_and_handles_constant_groups():
    x, y = [1.0, 2.0, 4.0], [3.0, 5.0, 6.0, 9.0]
    assert student_t(x, y) == pytest.approx(scipy_stats.ttest_ind(x, y).pvalue)
    assert student_t([1.0, 1.0], [1.0, 1.0]) == 1.0 and student_t([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert np.isnan(student_t([1.0], [2.0]))


def test_overall_test_agrees_with_scipy_and_is_calibrated():
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(0, 1, 8), rng.normal(0.3, 1, 8), rng.normal(2.5, 1, 8)])
    groups = np.repeat(["a", "b", "c"], 8)
    h, p = overall_test(values, groups, n_permutations=2999)
    assert h == pytest.approx(scipy_stats.kruskal(*np.split(values, 3)).statistic)
    assert p < 0.01
    f, p_f = overall_test(values, groups, "f", n_permutations=2999)
    assert f == pytest.approx(scipy_stats.f_oneway(*np.split(values, 3)).statistic)
    nulls = [overall_test(rng.normal(size=12), np.repeat(["a", "b", "c"], 4), n_permutations=199, seed=s)[1]
             for s in range(200)]
    assert 0.01 <= np.mean(np.array(nulls) < 0.05) <= 0.10
    with pytest.raises(ConfigError, match="unknown overall statistic"):
        overall_test(values, groups, "anova")


def test_dose_trend_has_the_right_sign_and_shuffled_doses_do_not():
    rng = np.random.default_rng(5)
    doses = np.repeat([0.0, 1.0, 2.0, 4.0], 4)
    values = -0.5 * doses + rng.normal(0, 0.5, doses.size)
    trend = trend_test(values, doses, n_permutations=1999)
    assert trend["direction"] == "decreasing" and trend["p"] < 0.01 and trend["tau"] < 0
    shuffled = [trend_test(values, rng.permutation(doses), n_permutations=199, seed=s)["p"] for s in range(100)]
    assert np.mean(np.array(shuffled) < 0.05) <= 0.12
    levels, means, fit = isotonic_fit(values, doses, increasing=False)
    assert levels.tolist() == [0.0, 1.0, 2.0, 4.0] and np.all(np.diff(fit) <= 1e-12)
    assert np.average(fit, weights=[4] * 4) == pytest.approx(means.mean())


def test_multigroup_table_on_replicate_means_with_doses():
    rng = np.random.default_rng(6)
    doses = {"ctrl": 0.0, "d1": 1.0, "d2": 2.0, "d4": 4.0}
    table = nested_table(rng, effect=1.0, sd_replicate=0.3, conditions=tuple(doses), doses=doses, replicates=4)
    assert condition_doses(table) == doses
    means = unit_means(table, ["region"], "replicate")
    out = multigroup_table(means, ["region"], "replicate", doses, n_permutations=999)
    row = out.iloc[0]
    assert row["n_units"] == 16 and row["n_conditions"] == 4 and row["unit"] == "replicate"
    assert row["trend_direction"] == "increasing" and row["trend_q"] < 0.01 and row["overall_q"] < 0.05
    assert row["doses"] == "0;1;2;4" and len(row["monotone_fit"].split(";")) == 4
    table.loc[table.index[0], "dose"] = 9.0
    with pytest.raises(DataError, match="condition 'ctrl' has several doses"):
        condition_doses(table)


def test_variance_components_recover_the_simulated_ones():
    rng = np.random.default_rng(7)
    table = nested_table(rng, replicates=30, images=4, cells=20, sd_replicate=0.5, sd_image=0.4, sd_cell=1.0)
    cells = table.rename(columns={"value": "feature"})
    components = variance_components(cells, "feature")
    assert components.cell == pytest.approx(1.0, rel=0.1)
    assert components.image == pytest.approx(0.16, abs=0.06)
    assert components.replicate == pytest.approx(0.25, abs=0.12)
    assert components.cells_per_image == pytest.approx(20) and components.replicates_per_condition == 30
    single = variance_components(cells[cells["replicate"] == "rep1"], "feature")
    assert single.replicate is None
    with pytest.raises(ConfigError, match="neither a cells.parquet column"):
        variance_components(cells, "nothing:rim_vs_centre")


def test_one_pooled_variance_serves_the_power_planner_and_the_mixed_models():
    values = pd.Series([1.0, 3.0, np.nan, 2.0, 2.0, 8.0, 5.0])
    within = pd.Series(["a", "a", "a", "b", "b", "c", "d"])
    variance, dof = pooled_variance(values, within)  # a: var 2 (1 dof), b: 0 (1 dof); c, d: single values
    assert (variance, dof) == (pytest.approx(1.0), 2)
    assert pooled_variance(values[5:], within[5:]) == (pytest.approx(np.nan, nan_ok=True), 0)
    # replicates rep1 .. rep3 recur in both conditions: six replicate units (condition|replicate)
    cells = nested_table(np.random.default_rng(2), replicates=3, images=3, cells=5).rename(columns={"value": "f"})
    components = variance_components(cells, "f")
    assert components.cell == pytest.approx(pooled_variance(cells["f"], cells["image_id"])[0])
    assert components.replicates_per_condition == 3
    assert components.images_per_replicate == 3


def test_simulated_power_matches_the_t_distribution_and_grows_with_replicates():
    components = VarianceComponents("f", replicate=0.04, image=0.0, cell=0.0, cells_per_image=1.0,
                                    images_per_replicate=1.0, replicates_per_condition=3.0, n_images=6, n_cells=6)
    table = simulate_power(components, 0.3, [3, 4, 8], [1], n_simulations=4000)
    expected = [scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, 2 * n - 2), 2 * n - 2, 0.3 / (0.2 * np.sqrt(2 / n)))
                for n in (3, 4, 8)]
    assert table["power"].to_numpy() == pytest.approx(expected, abs=0.03)
    assert (table["false_positive_rate"] <= 0.07).all()
    low = simulate_power(components, None, [3, 8], [2], n_simulations=1000)
    assert low["detectable_effect"].iloc[0] > low["detectable_effect"].iloc[1] > 0


def test_power_grid_flags_pseudo_replicated_image_level_designs():
    components = VarianceComponents("f", replicate=0.05, image=0.01, cell=0.1, cells_per_image=20.0,
                                    images_per_replicate=4.0, replicates_per_condition=3.0, n_images=24, n_cells=480)
    table = simulate_power(components, 0.2, [1, 3], [2, 8], n_simulations=1000)
    image_unit = table[table["replicates"] == 1]
    assert (image_unit["unit"] == "image").all() and image_unit["false_positive_rate"].iloc[-1] > 0.3
    assert image_unit["power"].iloc[0] == 0.0  # 2 vs 2 images: the permutation floor is 0.33
    assert (table.loc[table["replicates"] == 3, "false_positive_rate"] < 0.08).all()
