"""Replicates, doses and the power planner end to end: simulate -> extract -> biomarkers / power.

Real stages at toy sizes (ground-truth masks stand in for segmentation, image channels only,
no classifier): each run folder takes about two seconds to build.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from epikit.analysis.design import attach_design, describe_design
from epikit.analysis.multigroup import across_conditions
from epikit.biomarker_stage import biomarker_run
from epikit.cli import app
from epikit.errors import ConfigError, InputError
from epikit.extraction import extract_cells
from epikit.io import discover_images
from epikit.runfolder.layout import CONDITION_TESTS, MIXED_MODELS, POWER_FIGURE, POWER_TABLE
from epikit.simulate import simulate_dataset

FIELDS = dict(size=128, n_nuclei=(5, 7), radius=(10.0, 14.0))


def design_run(root: Path, seed: int = 0, **simulation) -> Path:
    """A run folder (cells.parquet, crops.zarr) of a simulated design, from its manifest."""
    simulate_dataset(root / "input", seed=seed, **FIELDS, **simulation)
    run = root / "run"
    run.mkdir(parents=True)
    shutil.copytree(root / "input" / "masks", run / "masks")
    extract_cells(discover_images(root / "input" / "manifest.csv"), run / "masks", run, crop_size=16,
                  progress=False)
    return run


def rim_rows(run: Path) -> pd.DataFrame:
    table = pd.read_csv(run / "biomarkers.csv")
    return table[(table["channel"] == "H3K27ac") & (table["region"] == "rim_vs_centre")].set_index("unit")


def test_simulated_replicates_and_doses_reach_the_manifest_and_cells(tmp_path):
    simulate_dataset(tmp_path / "a", n_fields=2, conditions=("ctrl", "d1", "d2"), doses=(0, 1, 2), replicates=2,
                     replicate_sd=0.2, **FIELDS)
    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv")))
    assert [r["replicate"] for r in rows[:4]] == ["rep1", "rep1", "rep2", "rep2"]
    assert {r["condition"]: r["dose"] for r in rows} == {"ctrl": "0", "d1": "1", "d2": "2"}
    info = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert info["effect_sizes"] == {"ctrl": 0.0, "d1": 0.25, "d2": 0.5}
    shifts = {(f["condition"], f["replicate"]): f["ratio_shift"] for f in info["fields"]}
    assert len(set(shifts.values())) == 6 and all(abs(s) < 1 for s in shifts.values())
    # replicate 1 keeps the single-replicate streams: its fields equal a replicates=1 simulation's
    simulate_dataset(tmp_path / "b", n_fields=2, conditions=("ctrl", "d1", "d2"), doses=(0, 1, 2), **FIELDS)
    assert (tmp_path / "a/masks/d1/rep1_field_001.tif").read_bytes() == (tmp_path / "b/masks/d1/field_001.tif").read_bytes()
    with pytest.raises(ConfigError, match="one dose per condition"):
        simulate_dataset(tmp_path / "c", doses=(0, 1, 2), **FIELDS)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,condition,dose\na/images/ctrl/rep1_field_000.tif,ctrl,high\n")
    with pytest.raises(InputError, match="line 2 has dose 'high'"):
        discover_images(bad)


def test_cli_simulate_names_a_dose_series(tmp_path):
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "s"), "--fields", "1", "--size", "96",
                                      "--nuclei", "3", "--radius", "10", "--doses", "0,0.5,2",
                                      "--replicates", "2", "--replicate-sd", "0.1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "s" / "images").iterdir()) == ["ctrl", "dose0p5", "dose2"]
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "t"), "--doses", "0,x"])
    assert result.exit_code != 0 and "--doses '0,x' is not a comma-separated list" in result.output


def test_replicate_effect_alone_is_not_significant_at_the_replicate_level(tmp_path):
    """3 replicates x 4 fields per condition, strong replicate effect, no treatment effect."""
    run = design_run(tmp_path, seed=1, n_fields=4, replicates=3, replicate_sd=0.5, effect="none")
    summary = biomarker_run(run, trust=False, maps=False, model="mixed")
    design = summary["design"]
    assert design["unit"] == "replicate" and design["units_per_condition"]["replicate"] == {"ctrl": 3, "vpa": 3}
    assert design["n_significant"] == 0 and summary["findings"] == []
    assert design["n_significant_by_unit"]["cell"] > 0  # what pseudo-replication would have claimed
    rows = rim_rows(run)
    assert rows.loc["replicate", "role"] == "design" and rows.loc["cell", "role"] == "comparison"
    assert rows.loc["replicate", "n_condition"] == 3 and rows.loc["image", "n_condition"] >= 10
    mixed = pd.read_csv(run / MIXED_MODELS)
    assert {"var_replicate", "var_image", "var_cell", "icc"} <= set(mixed.columns)
    assert not (run / CONDITION_TESTS).exists()  # two conditions, no doses
    # the radial profiles are tested at the same unit: 3 replicates per condition, not 12 images
    assert summary["radial_profiles"]["unit"] == "replicate"
    curves = pd.read_csv(run / "profile_curves.csv")
    assert set(curves.loc[curves["kind"] == "condition", "n_units"]) == {3}
    radial = pd.read_csv(run / "biomarkers.csv").query("region.str.startswith('radial')")
    assert ((radial["unit"] == "replicate") & (radial["role"] == "design") & (radial["n_condition"] == 3)).all()


def test_a_real_effect_is_found_at_the_replicate_level_and_stated_with_its_unit(tmp_path):
    run = design_run(tmp_path, n_fields=4, replicates=3, replicate_sd=0.1, effect_size=1.0)
    summary = biomarker_run(run, trust=False, maps=False, model="mixed")
    assert summary["design"]["n_significant"] > 0
    assert "(replicate level, 3 vs 3 replicates)" in summary["findings"][0]
    finding = json.loads((run / "metrics.json").read_text())["findings"][0]
    assert finding["unit"] == "replicate" and finding["effective_n"] == {"vpa": 3, "ctrl": 3}
    assert 0 <= finding["mixed"]["icc"] <= 1
    rows = rim_rows(run)
    assert rows.loc["replicate", "effect"] > 0 and rows.loc["replicate", "q_value"] < 0.05


def test_four_doses_give_a_trend_with_the_right_sign_and_shuffled_doses_do_not(tmp_path):
    run = design_run(tmp_path, n_fields=2, replicates=3, conditions=("ctrl", "d1", "d2", "d4"), doses=(0, 1, 2, 4),
                     effect_size=1.0, replicate_sd=0.05)
    summary = biomarker_run(run, trust=False, maps=False)
    assert summary["design"]["unit"] == "replicate"
    tests = pd.read_csv(run / CONDITION_TESTS)
    row = tests[(tests["channel"] == "H3K27ac") & (tests["region"] == "rim_vs_centre")].iloc[0]
    assert row["trend_direction"] == "increasing" and row["trend_q"] < 0.05 and row["n_units"] == 12
    fit = [float(v) for v in row["monotone_fit"].split(";")]
    assert fit == sorted(fit)
    # control: the replicates' condition-and-dose labels shuffled across replicate units
    cells = pd.read_parquet(run / "cells.parquet")
    units = cells[["condition", "replicate"]].drop_duplicates().reset_index(drop=True)
    shuffled = units.sample(frac=1.0, random_state=3).reset_index(drop=True)
    relabel = {(a.condition, a.replicate): b.condition for a, b in zip(units.itertuples(), shuffled.itertuples())}
    cells["condition"] = [relabel[(c, r)] for c, r in zip(cells["condition"], cells["replicate"])]
    cells["dose"] = cells["condition"].map({"ctrl": 0.0, "d1": 1.0, "d2": 2.0, "d4": 4.0})
    long = attach_design(pd.DataFrame({"cell_id": cells["cell_id"], "image_id": cells["cell_id"].str.split("#").str[0],
                                       "condition": cells["condition"], "source": "image", "explainer": "",
                                       "channel": "H3K27ac", "region": "rim_vs_centre",
                                       "value": cells["H3K27ac_shell_1_share"] - cells["H3K27ac_shell_5_share"]}),
                         cells.drop(columns="condition"))
    control = across_conditions(long, ["region"], describe_design(long), n_permutations=1999)
    assert control["trend_q"].iloc[0] > 0.05


def test_epikit_power_prints_its_table_and_writes_the_plan(tmp_path):
    run = design_run(tmp_path, n_fields=3, replicates=3, replicate_sd=0.2, effect="none")
    result = CliRunner().invoke(app, ["power", str(run), "--effect", "0.05", "--feature", "H3K27ac:rim_vs_centre",
                                      "--replicates", "2,3,6", "--images", "2,4", "--simulations", "500"])
    assert result.exit_code == 0, result.output
    assert "variance between replicates" in result.output and "false_positive_rate" in result.output
    table = pd.read_csv(run / POWER_TABLE)
    assert len(table) == 6 and (run / POWER_FIGURE).stat().st_size > 1000
    power = table.set_index(["replicates", "images_per_replicate"])["power"]
    assert power[(6, 4)] >= power[(3, 4)]
    assert (table.loc[table["unit"] == "replicate", "false_positive_rate"] < 0.1).all()
    plan = json.loads((run / "metrics.json").read_text())["power"]
    assert plan["components"]["replicate"] is not None and plan["components"]["n_images"] == 18
    result = CliRunner().invoke(app, ["power", str(run), "--feature", "H3K27ac:middle"])
    assert result.exit_code != 0 and "region 'middle'" in result.output
    detectable = CliRunner().invoke(app, ["power", str(run), "--replicates", "3", "--images", "2",
                                          "--simulations", "300"])
    assert detectable.exit_code == 0 and "detectable_effect" in detectable.output
    assert np.isfinite(pd.read_csv(run / POWER_TABLE)["detectable_effect"]).all()
    # --min-units: with 2 replicates per condition enough, 2 replicates are tested at the replicate level
    two = CliRunner().invoke(app, ["power", str(run), "--effect", "0.05", "--replicates", "2", "--images", "2",
                                   "--simulations", "200", "--min-units", "2"])
    assert two.exit_code == 0, two.output
    assert list(pd.read_csv(run / POWER_TABLE)["unit"]) == ["replicate"]
    assert json.loads((run / "metrics.json").read_text())["power"]["min_units"] == 2
    bad = CliRunner().invoke(app, ["power", str(run), "--min-units", "1"])
    assert bad.exit_code != 0 and "min_units = 1 must be a whole number >= 2" in bad.output


def test_the_design_reports_the_min_units_it_used(tmp_path):
    cells = pd.DataFrame({"cell_id": range(8), "image_id": [f"i{k // 2}" for k in range(8)],
                          "condition": ["ctrl"] * 4 + ["vpa"] * 4})
    design = describe_design(cells, min_units=2)
    assert design.unit == "image" and design.to_dict()["min_units"] == 2
    assert describe_design(cells).to_dict()["min_units"] == 3 and describe_design(cells).unit == "image"


def test_the_classifier_trains_on_every_condition_of_a_dose_series(tmp_path):
    from epikit.training.stage import train_run

    run = design_run(tmp_path, n_fields=2, replicates=2, conditions=("ctrl", "d1", "d4"), doses=(0, 1, 4),
                     effect_size=1.0)
    train_run(run, classifier="cnn", params={"width": 4, "depth": 2}, folds=2, epochs=1, batch_size=32,
              progress=False)
    scores = json.loads((run / "metrics.json").read_text())["classification"]
    assert sorted(scores["per_class"]) == ["ctrl", "d1", "d4"]
    matrix = np.array(scores["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == len(pd.read_parquet(run / "cells.parquet"))


@pytest.mark.parametrize("bad, message", [
    ({"alpha": 1.5}, "biomarkers.alpha = 1.5 must lie strictly between 0 and 1"),
    ({"profile_resamples": -5}, "biomarkers.profile_resamples = -5 must be a whole number >= 1"),
    ({"profile_bins": 1}, "profile bins must be an integer from 2 to 1000"),
    ({"profile_bin_um": 0.0}, "profile bin width must be a positive number"),
    ({"min_units": 1}, "biomarkers.min_units = 1 must be a whole number >= 2"),
    ({"unit_test": "z"}, "biomarkers.unit_test 'z' is not one of"),
    ({"overall_test": "anova"}, "biomarkers.overall_test 'anova' is not one of"),
    ({"model": "glmm"}, "biomarkers.model 'glmm' is not one of"),
])
def test_biomarker_options_are_checked_before_any_work(tmp_path, bad, message):
    """A bad option is a one-line ConfigError before the run folder is even read (none exists here)."""
    with pytest.raises(ConfigError, match=message) as error:
        biomarker_run(tmp_path / "no-run-yet", trust=False, maps=False, **bad)
    assert "\n" not in str(error.value)
