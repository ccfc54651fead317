"""`epikit compare` as a specification curve: a 2 segmenter x 2 explainer x 2 shell grid on tiny demos.

With a rim effect planted in the first non-nuclear channel (the default compared feature)
every intensity specification has the same sign and the joint test rejects; the map curve is
shown whatever it says; with no effect neither joint test rejects. Stages are shared where
a choice cannot change them, the cost is printed first and the report opens in a browser.
Seeds 0-4 of both grids are recorded in bench/README.md (bench/bench_specification.py).
"""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from browser import chromium, rendered_dom
from epikit.cli import app

TINY = ["-p", "demo.fields=5", "-p", "demo.size=160", "-p", "demo.min_nuclei=6", "-p", "demo.max_nuclei=9",
        "-p", "train.folds=2", "-p", "train.epochs=2", "-p", "explain.max_cells=6", "-p", "extract.crop_size=32",
        "-p", "biomarkers.trust=false", "-p", "biomarkers.profile_resamples=200", "-p", "report.enabled=false",
        "-p", "demo.effect_channel=CTCF"]
GRID = ["--segmenters", "watershed,maskrcnn", "--classifiers", "cnn", "--explainers", "gradcam,gradcampp",
        "--shells", "scaled,distance", "--permutations", "500"]


def _compare(out, *extra):
    result = CliRunner().invoke(app, ["compare", *GRID, "--out", str(out), "-q", *TINY, *extra])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted") / "cmp"
    output = _compare(out, "-p", "demo.effect=periphery", "-p", "demo.effect_size=1.0")
    return out, output


def test_planted_rim_effect_survives_every_intensity_specification(planted):
    out, output = planted
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 8
    assert set(zip(table["segmenter"], table["explainer"], table["shell"])) == {
        (s, e, h) for s in ("watershed", "maskrcnn") for e in ("gradcam", "gradcampp") for h in ("scaled", "distance")}
    for column in ("nuclei", "seg_ap50", "balanced_accuracy", "deletion_auc", "top_finding", "top_map_finding",
                   "intensity_effect", "intensity_low", "intensity_high", "map_effect", "map_low", "map_high",
                   "agrees", "explainers_agree", "seconds_segment", "seconds_explain"):
        assert column in table, column
    assert table["seg_ap50"].between(0, 1).all()  # scored against the demo's ground truth
    assert (table["intensity_low"] <= table["intensity_effect"]).all()
    assert (table["intensity_effect"] <= table["intensity_high"]).all()
    curves = json.loads((out / "specification_curve.json").read_text())
    assert curves["feature"] == "CTCF:rim_vs_centre" and (curves["condition"], curves["reference"]) == ("vpa", "ctrl")
    intensity = curves["intensity"]
    # Explainers cannot change intensities: one intensity specification per segmenter x shell.
    assert intensity["n"] == 4 and intensity["axes"] == ["segmenter", "crop_size", "scale", "shell"]
    assert all(s["effect"] > 0 for s in intensity["specifications"])  # planted: more CTCF at the rim
    assert intensity["share_same_sign"] == 1.0
    assert intensity["joint_test"]["exact"] and intensity["joint_test"]["n_images"] == 10
    assert intensity["rejects"] and intensity["joint_test"]["p_value"] < 0.05
    # The map curve is reported whatever it says.
    assert curves["map"]["n"] == 8 and 0 <= curves["map"]["joint_test"]["p_value"] <= 1
    effects = [s["effect"] for s in curves["map"]["specifications"]]
    assert effects == sorted(effects)
    assert "grid: 8 run(s)" in output and "estimated time" in output


def test_stages_are_shared_where_the_choice_cannot_change_them(planted):
    out, _ = planted
    runs = out / "runs"

    def same_file(a, b):
        return os.stat(a).st_ino == os.stat(b).st_ino

    # One segmentation + extraction + training per segmenter, one explanation per explainer:
    # the run folders hold hard links of the shared folders' files.
    for segmenter in ("watershed", "maskrcnn"):
        shared = out / "shared" / f"{segmenter}__cnn"
        masks = sorted(p.relative_to(shared) for p in (shared / "masks").rglob("*.tif"))
        assert masks
        for explainer in ("gradcam", "gradcampp"):
            for shell in ("scaled", "distance"):
                run = runs / f"{segmenter}__cnn__{explainer}__shell-{shell}"
                assert all(same_file(shared / m, run / m) for m in masks)
                assert same_file(shared / "cells.parquet", run / "cells.parquet")
            scaled, distance = (runs / f"{segmenter}__cnn__{explainer}__shell-{s}" for s in ("scaled", "distance"))
            array = next(p.relative_to(scaled) for p in (scaled / "maps.zarr").rglob("*") if p.is_file())
            assert same_file(scaled / array, distance / array)
    assert sorted(p.name for p in (out / "shared").iterdir()) == sorted(
        [f"{s}__cnn" for s in ("watershed", "maskrcnn")]
        + [f"{s}__cnn__{e}" for s in ("watershed", "maskrcnn") for e in ("gradcam", "gradcampp")])
    table = pd.read_csv(out / "comparison.csv")
    assert table.groupby("segmenter")["balanced_accuracy"].nunique().eq(1).all()


def test_explainers_are_compared_by_finding_and_cell_by_cell(planted):
    out, _ = planted
    pairs = pd.read_csv(out / "explainer_agreement.csv")
    assert len(pairs) == 4  # per segmenter x shell: gradcam vs gradcampp
    assert set(pairs["explainer_a"]) == {"gradcam"} and set(pairs["explainer_b"]) == {"gradcampp"}
    assert (pairs["n_cells"] > 0).all() and pairs["median_rho"].between(-1, 1).all()
    table = pd.read_csv(out / "comparison.csv")
    for _, group in table.groupby(["segmenter", "shell"]):
        keys = set(zip(group["map_finding_key"].fillna(""), group["map_effect"].gt(0)))
        assert group["explainers_agree"].nunique() == 1
        assert bool(group["explainers_agree"].iloc[0]) == (len(keys) == 1)  # "no map finding" is a conclusion too


def test_comparison_report_shows_both_curves(planted):
    out, _ = planted
    html = (out / "comparison.html").read_text()
    # Summary and findings: 8 specifications + header each; 4 explainer pairs + header
    assert html.count("<tr") == 9 + 9 + 5
    assert "no report" in html  # per-run reports were switched off
    assert "CTCF:rim_vs_centre intensity: vpa minus ctrl" in html and "CTCF:rim_vs_centre map" in html
    assert "rejects no effect" in html
    figures = {p.name for p in (out / "comparison_figures").iterdir()}
    assert any(name.startswith("curve-intensity") for name in figures)
    assert any(name.startswith("curve-map") for name in figures)
    for run in pd.read_csv(out / "comparison.csv")["run"]:
        assert (out / "runs").as_posix() in run


def test_the_cost_estimate_uses_timings_measured_under_the_folder(planted):
    from epikit.cli.run import resolve_settings
    from epikit.compare import plan_comparison

    out, _ = planted
    settings = resolve_settings(None, None, None, TINY[1::2])
    choices = {"segmenter": "watershed,maskrcnn", "classifier": "cnn", "explainer": "gradcam,gradcampp",
               "shell": "scaled,distance"}
    _, cost = plan_comparison(settings, out, choices)
    assert (cost.measured, cost.referenced) == (26, 0)
    table = pd.read_csv(out / "comparison.csv")
    explain = table.groupby(["segmenter", "explainer"])["seconds_explain"].first().sum()
    assert cost.per_stage["explain"] == pytest.approx(explain, rel=1e-6)
    # A new explainer has no timings yet: its stages come from the reference table.
    _, bigger = plan_comparison(settings, out, {**choices, "explainer": "gradcam,scorecam"})
    assert (bigger.measured, bigger.referenced) == (24, 2)  # the two scorecam explanations


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (CI: apt-get install -y chromium)")
def test_comparison_report_in_headless_chromium(planted, tmp_path):
    out, _ = planted
    dom = rendered_dom(out / "comparison.html", tmp_path / "profile")
    assert "Specification curves" in dom


def test_no_effect_no_joint_test_rejects(tmp_path):
    out = tmp_path / "cmp"
    _compare(out, "-p", "demo.effect_size=0", "-p", "seed=1")
    curves = json.loads((out / "specification_curve.json").read_text())
    for source in ("intensity", "map"):
        assert not curves[source]["rejects"], (source, curves[source]["joint_test"])
        assert curves[source]["joint_test"]["p_value"] >= 0.05


def test_crop_sizes_and_target_policies_reuse_one_segmentation(tmp_path):
    import zarr

    out = tmp_path / "cmp"
    output = CliRunner().invoke(app, ["compare", "--segmenters", "watershed", "--classifiers", "cnn",
                                      "--explainers", "gradcam", "--crop-sizes", "24,32", "--targets", "contrast,own",
                                      "--out", str(out), "-q", *TINY, "-p", "demo.fields=3"])
    assert output.exit_code == 0, output.output
    assert "segment 1x, extract 2x, train 2x, explain 4x" in output.output
    table = pd.read_csv(out / "comparison.csv")
    assert sorted(table["name"]) == sorted(f"watershed__crop{c}__cnn__target-{t}__gradcam"
                                           for c in (24, 32) for t in ("contrast", "own"))
    masks = {os.stat(next((out / "runs" / name / "masks").rglob("*.tif"))).st_ino for name in table["name"]}
    assert len(masks) == 1  # one segmentation, hard-linked into every run
    for _, row in table.iterrows():
        run = out / "runs" / row["name"]
        assert zarr.open_group(str(run / "crops.zarr"), mode="r")["crops"].shape[-1] == row["crop_size"]
        assert zarr.open_group(str(run / "maps.zarr"), mode="r").attrs["target"] == row["target"]
    assert set(table["map_effect"].notna()) == {True}


def test_max_runs_and_unknown_names_fail_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["compare", *GRID, "--max-runs", "6", "--out", str(tmp_path / "cmp"), "-q"])
    assert result.exit_code == 2
    assert "8 runs (2 segmenter x 2 explainer x 2 shell), more than --max-runs 6" in result.output
    result = CliRunner().invoke(app, ["compare", "--segmenters", "watershed,maskrcn", "--out",
                                      str(tmp_path / "cmp"), "-q"])
    assert result.exit_code == 2
    assert "did you mean 'maskrcnn'" in result.output
    assert not (tmp_path / "cmp").exists()
