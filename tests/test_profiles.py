"""Radial profiles: geometry per nucleus, curve statistics on synthetic tables, and one small run per effect."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

import epikit
from epikit.analysis.design import describe_design
from epikit.analysis.curves import bootstrap_curves, cluster_test, hierarchical_mean, hierarchy, simultaneous_band
from epikit.analysis.radial import compare_profiles
from epikit.biomarker_stage import biomarker_run
from epikit.errors import ConfigError, DataError, InputError
from epikit.nuclei.profiles import bin_edges, outline_distance, radial_bins, radial_profiles
from epikit.simulate.profiles import simulate_profile_table
from tiny_runs import build_tiny_run

BINS = [f"b{b}" for b in range(20)]
EDGES = np.linspace(0, 1, 21)


def disc(size: int = 41, radius: float = 16.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    return np.hypot(yy, xx) <= radius


def test_outline_distance_matches_one_mask_at_a_time_and_nuclei_do_not_see_each_other():
    masks = np.stack([disc(), np.ones((41, 41), bool), np.zeros((41, 41), bool)])
    distance = outline_distance(masks)
    assert np.isnan(distance[2]).all() and np.isnan(distance[0][~masks[0]]).all()
    # A mask filling its crop is bounded by the crop edge, not by the next crop.
    assert distance[1][0, 20] == 0.5 and distance[1][20, 20] == 20.5
    alone = ndi.distance_transform_edt(np.pad(masks[0], 1))[1:-1, 1:-1] - 0.5
    np.testing.assert_allclose(distance[0][masks[0]], alone[masks[0]], rtol=1e-6)


def test_a_nucleus_clipped_by_its_crop_ends_at_the_crop_border_on_every_side():
    yy, xx = np.mgrid[:41, :41]
    centres = [(20, 6), (20, 34), (6, 20), (34, 20)]  # discs of radius 16 cut by the left, right, top, bottom
    clipped = np.stack([np.hypot(yy - cy, xx - cx) <= 16 for cy, cx in centres])
    distance = outline_distance(clipped)
    for mask, measured in zip(clipped, distance):
        alone = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1] - 0.5
        np.testing.assert_allclose(measured[mask], alone[mask], rtol=1e-9)
    assert distance[0][20, 0] == 0.5 and distance[2][0, 20] == 0.5  # a border pixel is on the outline


def test_relative_bins_run_from_the_outline_to_the_centre_and_follow_a_crescent():
    bins = radial_bins(disc()[None], 10)[0]
    assert bins[disc()].min() == 0 and bins[20, 20] == 9 and (bins[~disc()] == -1).all()
    assert bins[20, 4] == 0 and bins[20, 12] in (4, 5)
    crescent = disc() & ~np.roll(disc(radius=13), 9, axis=1)  # its centroid lies outside it
    depth = radial_bins(crescent[None], 5)[0]
    assert (depth[crescent] >= 0).all() and set(np.unique(depth[crescent])) == set(range(5))


def test_profiles_are_bin_means_over_the_nucleus_mean():
    mask = disc()
    yy, xx = np.mgrid[:41, :41] - 20
    rim_bright = np.where(np.hypot(yy, xx) > 10, 2.0, 1.0)
    values = np.stack([rim_bright, np.full(mask.shape, 3.0)])[None]
    profile = radial_profiles(values, mask[None], 8)
    assert profile.shape == (1, 2, 8)
    np.testing.assert_allclose(profile[0, 1], 1.0)  # flat channel: every bin at the nucleus mean
    assert profile[0, 0, 0] > 1 > profile[0, 0, -1]
    weights = np.bincount(radial_bins(mask[None], 8)[0][mask], minlength=8)
    assert np.average(profile[0, 0], weights=weights) == pytest.approx(1.0)  # area-weighted mean is 1
    maps = radial_profiles(values[:, 0], mask[None], 8)  # (N, S, S) maps -> (N, bins)
    np.testing.assert_allclose(maps, profile[:, 0])


def test_micrometre_bins_leave_what_a_nucleus_does_not_reach_empty():
    mask = disc(radius=10)[None]
    profile = radial_profiles(np.ones((1, 1, 41, 41)), mask, 10, "um", pixel_um=0.5, bin_um=1.0)[0, 0]
    # About 10.5 px = 5.25 um from outline to centre: bins 0..5 filled, 6..9 empty.
    assert np.isfinite(profile[:5]).all() and np.isnan(profile[6:]).all()
    np.testing.assert_allclose(bin_edges(10, "um", 1.0), np.arange(11.0))
    with pytest.raises(ConfigError, match="pixel size"):
        radial_bins(mask, 10, "um")
    with pytest.raises(InputError, match="positive, finite pixel size"):
        radial_bins(mask, 10, "um", pixel_um=np.array([np.nan]))
    with pytest.raises(ConfigError, match="profile scale"):
        bin_edges(10, "rings")
    with pytest.raises(InputError, match="masks"):
        radial_profiles(np.ones((2, 1, 41, 41)), mask, 10)


def test_hierarchy_nests_the_given_levels_and_averages_level_by_level():
    images = np.array(["a", "a", "b", "c", "c", "d"])
    assert len(hierarchy(images)) == 4 and all(len(unit) == 1 for unit in hierarchy(images))
    wells = np.array(["w1", "w1", "w1", "w2", "w2", "w2"])
    assert [len(unit) for unit in hierarchy(images, [wells])] == [2, 2]
    values = np.array([[0.0], [2.0], [4.0], [1.0], [1.0], [5.0]])
    curve, error = hierarchical_mean(values, images)
    assert curve[0] == pytest.approx(np.mean([1.0, 4.0, 1.0, 5.0])) and error[0] > 0
    assert hierarchical_mean(values, images, [wells])[0][0] == pytest.approx(2.75)
    # replicate -> group -> image: the one plate's mean is the mean of its two wells' means
    plates = np.array(["p1"] * 6)
    one_well = np.array(["p1|w1", "p1|w1", "p1|w1", "p1|w1", "p1|w1", "p1|w2"])
    nested = hierarchy(images, [plates, one_well])
    assert len(nested) == 1 and [len(well) for well in nested[0]] == [3, 1]
    assert hierarchical_mean(values, images, [plates, one_well])[0][0] == pytest.approx((np.mean([1, 4, 1]) + 5) / 2)


def replicate_profiles(rng: np.random.Generator, replicate_sd: float, effect: float = 0.0) -> pd.DataFrame:
    """Wide profiles of 3 plates x 2 wells (A01, A02 on every plate) x 2 fields per condition."""
    rows = []
    for condition in ("ctrl", "vpa"):
        for plate in range(1, 4):
            shift = rng.normal(0, replicate_sd, 20)
            for well in ("A01", "A02"):
                for field in range(2):
                    image = f"{condition}/p{plate}/{well}/f{field}"
                    values = 1 + shift + effect * (condition == "vpa") + rng.normal(0, 0.05, (8, 20))
                    rows += [{"cell_id": f"{image}#{k}", "image_id": image, "condition": condition,
                              "replicate": f"plate{plate}", "group": well, **dict(zip(BINS, v))}
                             for k, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_curves_are_tested_at_the_design_unit_with_the_designs_unit_ids():
    table = replicate_profiles(np.random.default_rng(0), 0.0, effect=0.3)
    result = compare_profiles(table[BINS].to_numpy(), table, "ctrl", EDGES, n_boot=50, n_permutations=50)
    # 3 plates per condition: the replicate is the unit (not the wells A01/A02 pooled over plates)
    assert result.unit == "replicate"
    assert set(result.curves.loc[result.curves["kind"] == "condition", "n_units"]) == {3}
    assert result.intervals and all(i["n_condition"] == 3 == i["n_reference"] for i in result.intervals)
    assert all(i["unit"] == "replicate" for i in result.intervals)
    # with fewer plates than min_units the wells, qualified by plate (4 per condition), are the unit
    few = table[table["replicate"] != "plate3"]
    result = compare_profiles(few[BINS].to_numpy(), few, "ctrl", EDGES, n_boot=50, n_permutations=50)
    assert result.unit == "group" and set(result.curves["n_units"][result.curves["kind"] == "condition"]) == {4}


def test_a_plate_effect_alone_is_no_radial_finding_at_the_design_unit():
    """Strong plate-to-plate differences, no treatment: images would be pseudo-replicates."""
    table = replicate_profiles(np.random.default_rng(4), 0.3)
    result = compare_profiles(table[BINS].to_numpy(), table, "ctrl", EDGES, n_boot=50, n_permutations=200)
    assert result.unit == "replicate" and not [i for i in result.intervals if i["p_value"] < 0.05]
    images = describe_design(table.drop(columns=["replicate", "group"]))
    as_images = compare_profiles(table[BINS].to_numpy(), table, "ctrl", EDGES, n_boot=50, n_permutations=200,
                                 design=images)
    assert as_images.unit == "image" and [i for i in as_images.intervals if i["p_value"] < 0.05]


def test_bootstrap_band_is_simultaneous_and_leaves_out_missing_bins():
    rng = np.random.default_rng(0)
    values = 1 + rng.normal(0, 0.1, (60, 5))
    values[:, 4] = np.nan
    images = np.repeat([f"i{k}" for k in range(6)], 10)
    (curve, error), (boot, boot_error) = hierarchical_mean(values, images), bootstrap_curves(values, images, n_boot=300)
    low, high = simultaneous_band(curve, error, boot, boot_error)
    assert np.isnan(curve[4]) and np.isnan(low[4])
    assert (low[:4] < curve[:4]).all() and (curve[:4] < high[:4]).all()
    pointwise = 1.96 * error[:4]
    assert ((high[:4] - curve[:4]) > pointwise).all()  # wider than a pointwise normal band
    two = images < "i2"  # two images: half the replicates draw one image twice, no band can be estimated
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = simultaneous_band(*hierarchical_mean(values[two], images[two]),
                                      *bootstrap_curves(values[two], images[two], n_boot=200))
    assert np.isnan(low).all() and np.isnan(high).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cluster_test_on_synthetic_tables_finds_the_planted_side_only(seed):
    for effect, first_sign in (("periphery", 1), ("interior", -1), ("none", 0)):
        table = simulate_profile_table(effect=effect, effect_size=0.2, seed=seed)
        result = compare_profiles(table[BINS].to_numpy(), table, "ctrl", EDGES, n_boot=200, seed=seed)
        significant = [i for i in result.intervals if i["p_value"] < 0.05]
        if effect == "none":
            assert not significant
            continue
        edge = [i for i in significant if i["start"] == 0]
        assert edge and np.sign(edge[0]["difference"]) == first_sign
        difference = result.curves[result.curves["kind"] == "difference"]
        assert difference["significant"].iloc[0] and difference["curve"].iloc[0] == "vpa - ctrl"


def test_cluster_test_is_exact_with_few_units_and_needs_two_per_side():
    rng = np.random.default_rng(3)
    x, y = rng.normal(1, 0.1, (4, 10)), rng.normal(0, 0.1, (4, 10))
    test = cluster_test(x, y)
    assert test.exact and test.n_permutations == 70 and test.min_p == pytest.approx(1 / 70)
    assert len(test.clusters) == 1 and test.clusters[0].p_value == pytest.approx(2 / 70)  # both labellings
    assert (test.clusters[0].start, test.clusters[0].stop, test.clusters[0].sign) == (0, 10, 1)
    assert cluster_test(x[:1], y).clusters == []
    with pytest.raises(DataError, match="reference condition 'dmso'"):
        compare_profiles(np.ones((2, 20)), pd.DataFrame({"image_id": ["a", "b"], "condition": ["x", "y"],
                                                         "group": ["a", "b"]}), "dmso", EDGES)


@pytest.fixture(scope="module")
def effect_runs(tmp_path_factory):
    runs = {}
    for effect in ("periphery", "interior", "none"):
        run = build_tiny_run(tmp_path_factory.mktemp(effect), effect, crop_size=32, train=False, seed=1)
        biomarker_run(run, trust=False, maps=False, profile_bins=10, profile_resamples=400)
        runs[effect] = run
    return runs


def test_end_to_end_periphery_interior_and_none(effect_runs):
    for effect, run in effect_runs.items():
        table = pd.read_csv(run / "biomarkers.csv", keep_default_na=False, na_values=[""])
        radial = table[table["region"].str.startswith("radial[") & (table["channel"] == "H3K27ac")]
        significant = radial[radial["p_value"] < 0.05]
        if effect == "none":
            assert (table.loc[table["region"].str.startswith("radial"), "q_value"] >= 0.05).all()
            continue
        sign = 1 if effect == "periphery" else -1
        at_edge = significant[significant["region"].str.startswith("radial[0.00,")]
        at_centre = significant[significant["region"].str.endswith(",1.00)")]
        assert len(at_edge) == 1 and np.sign(at_edge["effect"].iloc[0]) == sign
        assert len(at_centre) == 1 and np.sign(at_centre["effect"].iloc[0]) == -sign
        findings = json.loads((run / "metrics.json").read_text())["findings"]
        radial_findings = [f for f in findings if f["region"].startswith("radial")]
        expected = "rim-enriched" if effect == "periphery" else "centre-enriched"
        assert radial_findings and {f["localisation"] for f in radial_findings if f["channel"] == "H3K27ac"} == {expected}


def test_profiles_api_levels(effect_runs):
    run = effect_runs["periphery"]
    cells = epikit.profiles(run)
    n_cells = len(pd.read_parquet(run / "cells.parquet"))
    assert len(cells) == n_cells * 3 * 10 and set(cells["scale"]) == {"relative"}
    images = epikit.profiles(run, level="image")
    assert len(images) == 12 * 3 * 10 and images["n_cells"].sum() == len(cells)
    curves = epikit.profiles(run, level="condition")
    assert set(curves["curve"]) == {"ctrl", "vpa", "vpa - ctrl"} and (curves["explainer"] == "").all()
    assert (curves["low"] <= curves["value"]).all() and (curves["value"] <= curves["high"]).all()
    with pytest.raises(ConfigError, match="profile level"):
        epikit.profiles(run, level="well")


def test_micrometre_profiles_when_cells_have_a_pixel_size(effect_runs, tmp_path):
    from epikit.radial_biomarkers import measure_profiles
    from epikit.runfolder.cells import CellDataset

    dataset = CellDataset(effect_runs["periphery"])
    cells = dataset.table.assign(pixel_size_um=0.2)
    long = measure_profiles(effect_runs["periphery"], cells, dataset.channel_names, [], bins=10, bin_um=0.5)
    assert set(long["scale"]) == {"relative", "um"}
    um = long[long["scale"] == "um"]
    assert um["stop"].max() == pytest.approx(5.0) and um["value"].notna().any()


def test_report_draws_one_radial_figure_per_explained_class(tmp_path):
    """Contrast with three conditions: ctrl's maps for tsa and for vpa are two figures, never one."""
    from epikit.report.figures import FigureWriter
    from epikit.report.sections.common import ReportContext
    from epikit.report.sections.profiles import profiles_section
    from epikit.runfolder.reader import RunFolder

    def curve(name, kind, source, explainer, channel, target, level):
        return pd.DataFrame({"source": source, "explainer": explainer, "channel": channel, "target": target,
                             "scale": "relative", "curve": name, "kind": kind, "bin": np.arange(4),
                             "start": EDGES[:4], "stop": EDGES[1:5], "value": level, "low": level - 0.1,
                             "high": level + 0.1, "n_units": 6, "significant": False})

    parts = [curve("ctrl", "condition", "image", "", "H3K27ac", "", 1.0),
             curve("vpa", "condition", "image", "", "H3K27ac", "", 1.1),
             curve("vpa - ctrl", "difference", "image", "", "H3K27ac", "", 0.1)]
    for target, level in (("tsa", 0.5), ("vpa", 1.5)):
        parts += [curve("ctrl", "condition", "map", "gradcam", "all", target, level),
                  curve(target, "condition", "map", "gradcam", "all", target, level + 0.2),
                  curve(f"{target} - ctrl", "difference", "map", "gradcam", "all", target, 0.2)]
    pd.concat(parts).to_csv(tmp_path / "profile_curves.csv", index=False)
    pd.DataFrame([{"source": "map", "explainer": "gradcam", "channel": "all", "region": "radial[0.00,0.20)",
                   "target": "vpa", "condition": "vpa", "reference": "ctrl", "effect": 0.2, "p_value": 0.01,
                   "q_value": 0.02, "unit": "image", "n_condition": 6, "n_reference": 6}]).to_csv(
        tmp_path / "biomarkers.csv", index=False)
    html = str(profiles_section(ReportContext(RunFolder(tmp_path), FigureWriter(tmp_path / "figures"))))
    assert html.count("<img") == 3
    assert "gradcam maps (all view): evidence for tsa" in html and "evidence for vpa" in html
    assert "Average nuclei are left out" in html  # the stored averages do not tell the classes apart
    header = html[html.index("Tested intervals"):]
    assert "<th>target</th>" in header and "<td>vpa</td>" in header


def test_biomarkers_csv_keeps_the_statistic_of_radial_rows(effect_runs):
    table = pd.read_csv(effect_runs["periphery"] / "biomarkers.csv", keep_default_na=False, na_values=[""])
    radial = table["region"].str.startswith("radial")
    assert radial.any()
    assert (table.loc[radial, "statistic"] == "bin mean / nucleus mean; cluster mass of Welch t").all()
    assert set(table.loc[~radial, "statistic"]) == {"share", "share_rim - share_centre"}
    assert (table.loc[table["region"] == "rim_vs_centre", "statistic"] == "share_rim - share_centre").all()
