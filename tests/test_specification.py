"""Specification-curve statistics (epikit.analysis.specification) and the compare grid's plan and cost."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from epikit.analysis.specification import curve_summary, effect_interval, joint_permutation_test
from epikit.compare.cost import estimate_cost
from epikit.compare.grid import Grid
from epikit.config import default_config
from epikit.errors import ConfigError, DataError, UnknownPluginError


def _images(n: int, shift: float, rng: np.random.Generator) -> tuple[pd.Series, pd.Series]:
    """Per-image values of n images per condition, the vpa ones shifted by ``shift``."""
    ids = [f"ctrl/{i}" for i in range(n)] + [f"vpa/{i}" for i in range(n)]
    conditions = pd.Series(["ctrl"] * n + ["vpa"] * n, index=ids)
    values = pd.Series(rng.normal(0, 1, 2 * n) + np.r_[np.zeros(n), np.full(n, shift)], index=ids)
    return values, conditions


def test_effect_interval_is_image_level_and_covers_the_truth():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(60):
        values, conditions = _images(12, 1.0, rng)
        out = effect_interval(values, conditions, "vpa", "ctrl", resamples=500, seed=1)
        assert out["effect"] == pytest.approx(values[12:].mean() - values[:12].mean())
        assert out["low"] < out["effect"] < out["high"]
        assert (out["n_condition"], out["n_reference"]) == (12, 12)
        covered += out["low"] <= 1.0 <= out["high"]
    assert 0.82 <= covered / 60 <= 1.0  # a percentile bootstrap with 12 images per side runs a little narrow


def test_effect_interval_without_enough_images():
    values = pd.Series([1.0, 2.0, 3.0], index=["a", "b", "c"])
    conditions = pd.Series(["ctrl", "ctrl", "vpa"], index=["a", "b", "c"])
    out = effect_interval(values, conditions, "vpa", "ctrl")
    assert out["effect"] == pytest.approx(1.5) and np.isnan(out["low"]) and np.isnan(out["high"])
    assert np.isnan(effect_interval(values, conditions, "other", "ctrl")["effect"])


def test_curve_summary_shares():
    summary = curve_summary([0.3, 0.2, -0.1, 0.4], [0.1, -0.1, -0.3, 0.2], [0.5, 0.5, 0.1, 0.6])
    assert summary["sign"] == 1 and summary["n"] == 4
    assert summary["share_same_sign"] == pytest.approx(0.75)
    assert summary["share_excluding_zero"] == pytest.approx(0.5)
    assert summary["median_effect"] == pytest.approx(0.25)
    negative = curve_summary([-0.3, -0.2, np.nan], [-0.5, -0.4, np.nan], [-0.1, 0.1, np.nan])
    assert negative["sign"] == -1 and negative["share_excluding_zero"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(4))
def test_joint_test_rejects_a_shared_effect_and_not_noise(seed):
    rng = np.random.default_rng(seed)
    base, conditions = _images(10, 2.5, rng)
    # Specifications: the same images seen through different analysis noise.
    curve = [base + rng.normal(0, 0.3, len(base)) for _ in range(5)]
    assert joint_permutation_test(curve, conditions, "vpa", "ctrl", permutations=999, seed=seed)["p_value"] < 0.05
    null, _ = _images(10, 0.0, rng)
    noise = [null + rng.normal(0, 0.3, len(null)) for _ in range(5)]
    result = joint_permutation_test(noise, conditions, "vpa", "ctrl", permutations=999, seed=seed)
    assert result["permutations"] == 1000 and not result["exact"]


def test_joint_test_null_p_values_are_uniform():
    """Under no effect the joint p-value rejects at about its level (the test's size)."""
    rng = np.random.default_rng(7)
    rejections = 0
    for _ in range(200):
        base, conditions = _images(6, 0.0, rng)
        curve = [base + rng.normal(0, 0.5, len(base)) for _ in range(4)]
        rejections += joint_permutation_test(curve, conditions, "vpa", "ctrl", permutations=200,
                                             seed=int(rng.integers(1 << 30)))["p_value"] < 0.05
    assert rejections / 200 < 0.1


def test_joint_test_is_exact_for_few_images_and_handles_missing_images():
    rng = np.random.default_rng(3)
    base, conditions = _images(4, 5.0, rng)
    partial = base.drop(["vpa/0"])
    result = joint_permutation_test([base, partial], conditions, "vpa", "ctrl", permutations=2000)
    assert result["exact"] and result["permutations"] == 70  # C(8, 4) relabellings
    assert result["p_value"] == pytest.approx(2 / 70)  # the observed split and its mirror image
    with pytest.raises(DataError):
        joint_permutation_test([base[:4]], conditions[:4], "vpa", "ctrl")


def _config(**demo):
    config = default_config()
    config["demo"].update(demo)
    return config


def test_grid_shares_stages_a_choice_cannot_change(tmp_path):
    grid = Grid(_config(), {"segmenter": "watershed,maskrcnn", "explainer": "gradcam,scorecam",
                            "shell": "scaled,distance", "classifier": "cnn"})
    assert len(grid) == 8
    assert [(level.stop_after, [a.name for a in level.axes]) for level in grid.levels()] == [
        ("train", ["segmenter", "crop_size", "scale", "classifier"]),
        ("explain", ["segmenter", "crop_size", "scale", "classifier", "target", "explainer"])]
    names = {grid.name(spec) for spec in grid.specifications()}
    assert "maskrcnn__cnn__scorecam__shell-distance" in names and len(names) == 8
    cost = estimate_cost(grid, tmp_path, n_images=20)
    assert cost.executions == {"segment": 2, "extract": 2, "train": 2, "explain": 4, "biomarkers": 8, "report": 8}
    assert cost.seconds > 0 and "26 instead of 48" in cost.describe()
    # Only the explanation varies: everything before it runs once, in shared/base.
    only = Grid(_config(), {"target": ["contrast", "own"]})
    assert [level.stop_after for level in only.levels()] == ["train"]
    spec = next(only.specifications())
    assert only.folders(tmp_path, spec)[0][0] == tmp_path / "shared" / "maskrcnn__resnet10"
    crops = Grid(_config(), {"crop_size": "48,64,96", "scale": "fit,native"})
    assert estimate_cost(crops, tmp_path, 20).executions["segment"] == 1
    assert estimate_cost(crops, tmp_path, 20).executions["extract"] == 6


@pytest.mark.parametrize(("choices", "message"), [
    ({"shell": "scaled,rings"}, "shell 'rings' is not one of"),
    ({"scale": "fit,stretch"}, "scale 'stretch' is not one of"),
    ({"crop_size": "48,big"}, "crop size 'big' must be a whole number"),
    ({"explainer": "gradcam,gradcam"}, "listed twice"),
    ({"explainer": "scorecm"}, "did you mean 'scorecam'"),
    ({"colour": "red"}, "unknown comparison axis colour"),
])
def test_grid_rejects_bad_choices_before_work(choices, message):
    with pytest.raises((ConfigError, UnknownPluginError), match=message):
        Grid(_config(), choices)


def test_the_compared_feature_defaults_to_the_first_non_nuclear_channel():
    from epikit.compare.measures import Feature, parse_feature

    channels = ["Hoechst", "CTCF", "H3K27ac"]
    assert parse_feature("", channels, 0, 5) == Feature("CTCF", "rim_vs_centre")
    assert parse_feature("", channels, "CTCF", 5) == Feature("Hoechst", "rim_vs_centre")
    assert str(parse_feature("H3K27ac:shell_5", channels, 0, 5)) == "H3K27ac:shell_5"
    with pytest.raises(ConfigError, match="must be CHANNEL:REGION"):
        parse_feature("H3K27ac:shell_6", channels, 0, 5)
    with pytest.raises(ConfigError, match="must be CHANNEL:REGION"):
        parse_feature("GFP:rim_vs_centre", channels, 0, 5)
    with pytest.raises(ConfigError, match="only the nuclear channel"):
        parse_feature("", ["Hoechst"], 0, 5)
