"""Map findings are held to account: planted effects reach the map rows, nulls stay silent, and the
target-swap control catches a difference manufactured by explaining each side for its own class.

Tiny real runs (simulate -> extract -> train -> explain with Grad-CAM -> biomarkers); each
property held for seeds 0-5 when checked (bench/README.md, "Map findings"), the tests run seed 0.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from epikit.analysis.targets import plan_targets, side_targets
from epikit.biomarker_stage import biomarker_run
from epikit.errors import DataError
from epikit.explanation import explain_run
from epikit.extraction import extract_cells
from epikit.io import discover_images
from epikit.runfolder.maps import read_maps
from tiny_runs import build_learnable_run, make_conditions_identical

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def map_rows(run):
    table = pd.read_csv(run / "biomarkers.csv")
    return table[(table["source"] == "map") & (table["unit"] == "image")]


def map_findings(run):
    return [f for f in json.loads((run / "metrics.json").read_text())["findings"] if f["source"] == "map"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    run = build_learnable_run(tmp_path_factory.mktemp("planted"), "periphery")
    explain_run(run, "gradcam", progress=False)
    biomarker_run(run, trust=False)
    return run


def test_a_planted_effect_gives_a_map_finding_whose_one_target_needs_no_swap(planted):
    stored = read_maps(planted)
    assert stored.attrs["target"] == "contrast" and (stored.target == 1).all()  # all explained for vpa
    assert (map_rows(planted)["q_value"] < 0.05).any()
    found = map_findings(planted)
    assert found
    for finding in found:
        assert "gradcam evidence for vpa (all view)" in finding["text"] and finding["target"] == "vpa"
    shells = [f for f in found if f["region"].startswith("shell") or f["region"] == "rim_vs_centre"]
    assert any("lies nearer the" in f["text"] for f in shells)  # a rim or centre localisation
    for finding in shells:
        assert "in vpa than in ctrl nuclei" in finding["text"] and finding["target"] == "vpa"
        # Both sides explained for vpa: the target has no part in the difference by construction,
        # recorded without explaining the cells again.
        control = finding["target_swap"]
        assert not control["computed"] and not control["needed"] and "target_effect" not in control
        assert control["target_in_comparison"] == 0 and not control["target_driven"]
        assert "explained for vpa" in control["text"] and "target-driven" not in finding["trust"]["flags"]


def test_no_effect_gives_no_map_row_under_the_default_policy(tmp_path):
    run = build_learnable_run(tmp_path, "none")
    explain_run(run, "gradcam", progress=False)
    biomarker_run(run, trust=False)
    rows = map_rows(run)
    assert len(rows) == 6 and (rows["q_value"] >= 0.05).all()


def test_own_targets_on_identical_cells_manufacture_a_difference_the_control_flags(planted, tmp_path):
    run = tmp_path / "identical"
    shutil.copytree(planted, run)
    make_conditions_identical(run)
    explain_run(run, "gradcam", target="own", cells="correct", progress=False)
    summary = biomarker_run(run, trust=False)
    found = map_findings(run)
    assert found, "explaining each side for its own class should manufacture a map difference"
    for finding in found:
        control = finding["target_swap"]  # explained again for the other class: computed
        assert control["computed"] and np.isfinite([control["target_effect"], control["swapped_effect"]]).all()
        assert "target-driven" in finding["trust"]["flags"] and control["target_driven"]
        assert "own condition" in finding["text"]
    assert summary["n_target_driven"] >= len(found)
    explain_run(run, "gradcam", progress=False)  # the default policy: one target, nothing to find
    biomarker_run(run, trust=False)
    assert (map_rows(run)["q_value"] >= 0.05).all()


def test_maps_of_cells_extracted_again_are_refused(planted, tmp_path):
    run = tmp_path / "again"
    shutil.copytree(planted, run)
    records = discover_images(planted.parent / "input" / "images")
    extract_cells(records, run / "masks", tmp_path / "other", crop_size=24, min_area=400)
    for name in ("crops.zarr", "cells.parquet"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
        shutil.move(tmp_path / "other" / name, run / name)
    with pytest.raises(DataError, match="made from other cells or crops") as error:
        biomarker_run(run, trust=False)
    assert "\n" not in str(error.value)


def test_contrast_targets_with_three_conditions_pair_each_condition_with_the_reference():
    conditions = np.array(["ctrl", "tsa", "vpa", "ctrl", "vpa"])
    positions, targets = plan_targets(conditions, None, "contrast", ["ctrl", "tsa", "vpa"], "ctrl")
    pairs = sorted(zip(positions.tolist(), targets.tolist()))
    # reference cells once per comparison, each other cell once, for its own comparison's class
    assert pairs == [(0, 1), (0, 2), (1, 1), (2, 2), (3, 1), (3, 2), (4, 2)]
    assert side_targets("contrast", "vpa", "ctrl") == ("vpa", "vpa")
    assert side_targets("own", "vpa", "ctrl") == ("vpa", "ctrl")
    own = plan_targets(conditions, None, "own", ["ctrl", "tsa", "vpa"], "ctrl")[1]
    assert own.tolist() == [0, 1, 2, 0, 2]


def test_the_report_shows_a_map_findings_target_swap_control_and_opposite_localisation(planted):
    from epikit.report.sections.biomarkers import _finding_block

    finding = {**map_findings(planted)[0], "opposite": "intensity findings (H3K27ac shell_1) localise the change the other way"}
    html = str(_finding_block(finding))
    assert "Target-swap control:" in html and finding["target_swap"]["text"].split(" (")[0] in html
    assert "Opposite localisation:" in html and "the other way" in html


def test_map_and_intensity_findings_at_opposite_ends_are_noted_next_to_both():
    from epikit.analysis.biomarkers import note_opposite_localisations

    base = {"condition": "vpa", "reference": "ctrl", "region": "rim_vs_centre"}
    found = note_opposite_localisations([
        {**base, "source": "image", "channel": "H3K27ac", "localisation": "rim-enriched"},
        {**base, "source": "map", "channel": "all", "localisation": "centre-enriched"},
        {**base, "source": "image", "channel": "CTCF", "localisation": "mid"},
        {**base, "source": "image", "channel": "Hoechst", "localisation": "rim-enriched", "condition": "tsa"},
    ])
    assert "map findings (all rim_vs_centre)" in found[0]["opposite"]
    assert "intensity findings (H3K27ac rim_vs_centre)" in found[1]["opposite"]
    assert "opposite" not in found[2] and "opposite" not in found[3]


def test_shell_profiles_of_maps_follow_the_comparisons_and_never_mix_targets():
    """Contrast with three conditions: the reference's maps for tsa and for vpa are two profiles."""
    from epikit.analysis.biomarkers import shell_profiles, shares_table

    rows, shares_by_target = [], {"tsa": [0.4, 0.3, 0.3], "vpa": [0.2, 0.3, 0.5]}
    for condition, targets in (("ctrl", ("tsa", "vpa")), ("tsa", ("tsa",)), ("vpa", ("vpa",))):
        cells = pd.DataFrame({"cell_id": [f"{condition}{i}" for i in range(8)],
                              "image_id": [f"{condition}/f{i // 2}" for i in range(8)], "condition": condition})
        for target in targets:
            shares = np.tile(shares_by_target[target], (8, 1))
            rows.append(shares_table(cells, shares, "map", "gradcam", "all", np.full(8, target)))
        rows.append(shares_table(cells, np.tile([0.3, 0.3, 0.4], (8, 1)), "image", "", "H3K27ac"))
    profiles = shell_profiles(pd.concat(rows, ignore_index=True), n_boot=50, target="contrast", reference="ctrl")
    maps = {(p["target"], p["condition"]): p["mean"] for p in profiles if p["source"] == "map"}
    assert set(maps) == {("tsa", "ctrl"), ("tsa", "tsa"), ("vpa", "ctrl"), ("vpa", "vpa")}
    assert maps[("vpa", "ctrl")] == pytest.approx(shares_by_target["vpa"])
    assert maps[("tsa", "ctrl")] == pytest.approx(shares_by_target["tsa"])
    images = [p for p in profiles if p["source"] == "image"]
    assert len(images) == 3 and {p["target"] for p in images} == {""}
    # under ``own`` the reference's side needs maps for ctrl: these cells have none, so no ctrl profile
    own = shell_profiles(pd.concat(rows, ignore_index=True), n_boot=50, target="own", reference="ctrl")
    assert {(p["target"], p["condition"]) for p in own if p["source"] == "map"} == {("own", "tsa"), ("own", "vpa")}
