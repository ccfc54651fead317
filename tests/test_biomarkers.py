"""The explain stage, shell statistics of maps and images, biomarkers.csv and findings, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from typer.testing import CliRunner

from epikit.nuclei.averaging import AlignedAverage, aligned_average, align_crops
from epikit.biomarker_stage import biomarker_run
from epikit.analysis.biomarkers import (
    COLUMNS,
    localisation,
    map_shell_shares,
    region_values,
)
from epikit.cli import app
from epikit.errors import ConfigError, DataError, InputError, ModelError
from epikit.explanation import explain_run, select_cells
from epikit.runfolder.layout import SCRATCH_DIR
from epikit.runfolder.maps import read_maps
from epikit.registry import get_explainer
from epikit.runfolder.models import load_fold_models
from tiny_runs import build_tiny_run


@pytest.fixture(scope="module")
def periphery_run(tmp_path_factory):
    run = build_tiny_run(tmp_path_factory.mktemp("periphery"), "periphery")
    explain_run(run, "gradcam", cells="all", progress=False)
    return run


def test_explain_run_writes_maps_keyed_by_out_of_fold_cells(periphery_run):
    cells = pd.read_parquet(periphery_run / "cells.parquet")
    stored = read_maps(periphery_run)
    tested = cells[cells["fold"] >= 0]
    assert sorted(stored.cell_ids) == sorted(tested["cell_id"])
    group = zarr.open_group(str(periphery_run / "maps.zarr"), mode="r")
    assert group["maps"].dtype == np.float16 and group["maps"].shape == (len(tested), 16, 16)
    assert group.attrs["explainer"] == "gradcam" and group.attrs["layer"] == "features"
    assert group.attrs["target"] == "contrast" and group.attrs["classes"] == ["ctrl", "vpa"]
    assert group.attrs["reference"] == "ctrl" and group.attrs["crops_fingerprint"]
    assert 0 <= stored.maps.min() and stored.maps.max() <= 1
    by_id = cells.set_index("cell_id")
    np.testing.assert_array_equal(stored.fold, by_id.loc[stored.cell_ids, "fold"].to_numpy())
    np.testing.assert_array_equal(stored.target, 1)  # every cell explained for vpa, the non-reference
    # Each map comes from the fold model that did not train on the cell.
    from epikit.runfolder.cells import CellDataset

    models = load_fold_models(periphery_run)
    crops = CellDataset(periphery_run).load_crops(by_id.index.get_indexer(stored.cell_ids[:4]))
    expected = get_explainer("gradcam").explain(models[int(stored.fold[0])], torch.as_tensor(crops[:1]),
                                                 torch.as_tensor(stored.target[:1]))
    assert np.abs(expected.numpy()[0] - stored.maps[0]).max() < 2e-3  # float16 storage
    for condition in ("ctrl", "vpa"):
        average = group[f"average/{condition}"]
        assert average["map"].shape == (16, 16) and average["channels"].shape == (3, 16, 16)
        assert average.attrs["n_cells"] == int((tested["condition"] == condition).sum())
    metrics = json.loads((periphery_run / "metrics.json").read_text())
    assert metrics["explanation"]["n_cells"] == len(tested)


def test_interrupted_explain_run_resumes_with_the_unfinished_chunks(periphery_run, tmp_path, monkeypatch):
    import shutil

    import epikit.explanation as explanation

    run = tmp_path / "copy"
    shutil.copytree(periphery_run, run)
    real, calls = explanation.explain_chunk, []

    def interrupted(*args, **kwargs):
        calls.append(args[0].name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(explanation, "explain_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        explain_run(run, "gradcam", cells="all", chunk=4, progress=False)
    assert len(list((run / SCRATCH_DIR / "explain").rglob("*.npy"))) == 2
    monkeypatch.setattr(explanation, "explain_chunk", real)
    summary = explain_run(run, "gradcam", cells="all", chunk=4, progress=False)
    assert summary["n_cells_resumed"] == 8 and not list((run / SCRATCH_DIR / "explain").rglob("*.npy"))
    fresh = explain_run(periphery_run, "gradcam", cells="all", chunk=4, progress=False)
    assert fresh["n_cells_resumed"] == 0
    resumed, complete = read_maps(run), read_maps(periphery_run)
    assert resumed.cell_ids == complete.cell_ids and np.array_equal(resumed.maps, complete.maps)


def test_cell_selection_and_its_errors(periphery_run):
    cells = pd.read_parquet(periphery_run / "cells.parquet")
    correct = select_cells(cells, "correct")
    wrong = select_cells(cells, "misclassified") if (cells["correct"] == False).any() else np.array([], int)  # noqa: E712
    assert set(correct).isdisjoint(wrong)
    assert len(correct) + len(wrong) == int((cells["fold"] >= 0).sum())
    capped = select_cells(cells, "all", max_cells=3, seed=1)
    assert cells.iloc[capped].groupby("condition").size().max() == 3
    assert np.array_equal(capped, select_cells(cells, "all", max_cells=3, seed=1))
    with pytest.raises(ConfigError, match="cells="):
        select_cells(cells, "some")
    with pytest.raises(ConfigError, match="max_cells"):
        select_cells(cells, "all", max_cells=0)
    with pytest.raises(DataError, match="train a classifier"):
        select_cells(cells.drop(columns=["fold"]), "all")
    none_correct = cells.assign(correct=False)
    with pytest.raises(DataError, match="no cells to explain"):
        select_cells(none_correct, "correct")


def test_explain_run_options_and_errors(periphery_run, tmp_path):
    with pytest.raises(ConfigError, match="neither a policy .* nor a class"):
        explain_run(periphery_run, "gradcam", cells="all", target="tsa", progress=False)
    with pytest.raises(ConfigError, match="not trained; trained views: all"):
        explain_run(periphery_run, "gradcam", views=["H3K27ac"], progress=False)
    with pytest.raises(ModelError, match="no layer 'nope'"):
        explain_run(periphery_run, "gradcam", {"layer": "nope"}, cells="all", max_cells=2, progress=False)
    untrained = build_tiny_run(tmp_path, train=False, n_fields=2)
    with pytest.raises(ModelError, match="no trained model"):
        explain_run(untrained, "gradcam", progress=False)


def test_a_channel_subset_view_averages_its_channels_gets_no_foreign_trust_and_stale_maps_stop(tmp_path):
    from epikit.training.stage import train_run

    run = build_tiny_run(tmp_path, train=False)
    train_run(run, classifier="cnn", params={"width": 4, "depth": 2}, folds=2, epochs=1, batch_size=32,
              views=["all", "Hoechst"], progress=False)
    explain_run(run, "gradcam", cells="all", progress=False)
    group = zarr.open_group(str(run / "maps.zarr"), mode="r")
    for view, n_channels in (("", 3), ("Hoechst/", 1)):
        average = group[f"{view}average/vpa"]
        assert average["channels"].shape[0] == len(average.attrs["channel_names"]) == n_channels
    biomarker_run(run, trust=True, trust_cells=4, control_epochs=1)
    findings = json.loads((run / "metrics.json").read_text())["findings"]
    for finding in findings:
        if finding["source"] == "map" and finding["channel"] == "Hoechst":
            assert "sanity" not in finding["trust"] and finding["trust"]["flags"] == []
    # retrained models (another seed: other weights) no longer match the maps
    train_run(run, classifier="cnn", params={"width": 4, "depth": 2}, folds=2, epochs=1, batch_size=32,
              views=["all", "Hoechst"], progress=False, seed=1)
    with pytest.raises(DataError, match="retrained; run `epikit explain"):
        biomarker_run(run, trust=False)


def test_region_values_and_localisation():
    shares = np.array([[0.4, 0.2, 0.2, 0.1, 0.1]])
    values = region_values(shares)
    assert list(values) == ["shell_1", "shell_2", "shell_3", "shell_4", "shell_5", "rim_vs_centre"]
    assert values["rim_vs_centre"][0] == pytest.approx(0.3)
    assert localisation("shell_1", 0.1, 5) == "rim-enriched"
    assert localisation("shell_5", -0.1, 5) == "rim-enriched"
    assert localisation("shell_5", 0.1, 5) == "centre-enriched"
    assert localisation("rim_vs_centre", -0.1, 5) == "centre-enriched"
    assert localisation("shell_3", 0.1, 5) == "mid"


def test_findings_tied_on_q_and_delta_rank_the_clearer_separation_first():
    from epikit.analysis.biomarkers import rank_findings

    base = {"source": "image", "explainer": "", "region": "shell_1", "condition": "vpa",
            "reference": "ctrl", "cliffs_delta": 1.0, "p_value": 0.001, "q_value": 0.002,
            "unit": "image", "n_condition": 6, "n_reference": 6}
    table = pd.DataFrame([
        {**base, "channel": "narrow", "effect": 0.5, "hedges_g": 1.5},  # bigger raw effect
        {**base, "channel": "clear", "effect": 0.01, "hedges_g": 6.0},
        {**base, "channel": "weak", "effect": 0.9, "hedges_g": 0.4, "q_value": 0.04, "cliffs_delta": 0.6},
        {**base, "channel": "cell", "effect": 0.9, "hedges_g": 9.0, "unit": "cell", "q_value": 1e-9},
    ])
    assert [f["channel"] for f in rank_findings(table)] == ["clear", "narrow", "weak"]


def test_map_shell_shares_of_a_rim_map_and_a_centre_map():
    yy, xx = np.mgrid[:32, :32] - 15.5
    radius = np.hypot(yy, xx)
    mask = radius < 14
    rim = np.clip(radius / 14, 0, 1) * mask
    centre = (1 - np.clip(radius / 14, 0, 1)) * mask
    shares = map_shell_shares(np.stack([rim, centre]), np.stack([mask, mask]))
    assert shares.shape == (2, 5)
    np.testing.assert_allclose(shares.sum(axis=1), 1)
    assert np.all(np.diff(shares[0]) < 0) and np.all(np.diff(shares[1]) > 0)


def test_aligned_average_undoes_rotation():
    yy, xx = np.mgrid[:32, :32] - 15.5
    values, masks = [], []
    for theta in (0.2, 1.1, 2.3):
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        mask = (u / 13) ** 2 + (v / 5) ** 2 <= 1
        values.append((np.abs(u) > 6)[None] * mask)  # hot at both poles of the major axis
        masks.append(mask)
    aligned, inside = align_crops(np.array(values, float), np.array(masks))
    # After alignment the major axis is horizontal: the nucleus spans the width, not the height.
    assert inside.any(axis=1).sum(axis=1).min() >= 30 and inside.any(axis=2).sum(axis=1).max() <= 16
    average, coverage = aligned_average(np.array(values, float), np.array(masks))
    assert average.shape == (1, 32, 32) and coverage.max() == 1
    assert average[0, 16, [2, 29]].min() > 0.9 and average[0, 16, 16] < 0.1
    blocks = AlignedAverage()  # the same average, accumulated a few nuclei at a time
    for start in range(0, len(values), 2):
        blocks.add(np.array(values[start:start + 2], float), np.array(masks[start:start + 2]))
    np.testing.assert_allclose(blocks.result()[0], average, atol=1e-5)  # batch padding: float rounding
    np.testing.assert_allclose(blocks.result()[1], coverage)
    with pytest.raises(DataError):
        align_crops(np.zeros((2, 1, 8, 8)), np.zeros((3, 8, 8)))
    with pytest.raises(DataError, match="no nuclei"):
        AlignedAverage().result()


def test_biomarkers_periphery_top_finding_is_rim_enriched_vpa(periphery_run):
    summary = biomarker_run(periphery_run, trust=False)
    table = pd.read_csv(periphery_run / "biomarkers.csv", keep_default_na=False, na_values=[""])
    assert list(table.columns) == list(COLUMNS)
    assert set(table["source"]) == {"map", "image"} and set(table["unit"]) == {"image", "cell"}
    radial = table["region"].str.startswith("radial[")  # intervals of the radial profiles (test_profiles.py)
    assert set(table.loc[~radial, "region"]) == {"shell_1", "shell_2", "shell_3", "shell_4", "shell_5", "rim_vs_centre"}
    assert (table["reference"] == "ctrl").all() and (table["condition"] == "vpa").all()
    image_rows = table[table["unit"] == "image"]
    assert (image_rows["n_condition"] == 6).all() and (image_rows["n_reference"] == 6).all()
    metrics = json.loads((periphery_run / "metrics.json").read_text())
    findings = metrics["findings"]
    assert findings and findings[0]["localisation"] == "rim-enriched"
    assert findings[0]["condition"] == "vpa" and findings[0]["q_value"] < 0.05
    assert findings[0]["unit"] == "image"
    assert summary["findings"][0] == findings[0]["text"] and "vpa" in findings[0]["text"]
    profiles = metrics["biomarkers"]["profiles"]
    h3 = {p["condition"]: p for p in profiles if p["source"] == "image" and p["channel"] == "H3K27ac"}
    assert h3["vpa"]["mean"][0] > h3["ctrl"]["mean"][0]
    assert all(lo <= m <= hi for p in profiles for lo, m, hi in zip(p["low"], p["mean"], p["high"]))


@pytest.mark.parametrize("effect, expected", [("interior", "centre-enriched"), ("none", None)])
def test_biomarkers_interior_moves_to_centre_and_null_finds_nothing(tmp_path, effect, expected):
    run = build_tiny_run(tmp_path, effect, train=False)
    biomarker_run(run, trust=False, maps=False)
    findings = json.loads((run / "metrics.json").read_text())["findings"]
    if expected is None:
        table = pd.read_csv(run / "biomarkers.csv")
        assert findings == [] and (table.loc[table.unit == "image", "q_value"] >= 0.05).all()
    else:
        assert findings[0]["localisation"] == expected and findings[0]["channel"] == "H3K27ac"


def test_biomarker_errors(periphery_run, tmp_path):
    with pytest.raises(ConfigError, match="reference condition 'dmso' not found"):
        biomarker_run(periphery_run, reference="dmso", trust=False)
    with pytest.raises(ConfigError, match="shell method"):
        biomarker_run(periphery_run, trust=False, shell_method="rings")
    with pytest.raises(ConfigError, match="image-level test"):
        biomarker_run(periphery_run, trust=False, image_test="t")
    with pytest.raises(ConfigError, match="trust checks examine"):
        biomarker_run(periphery_run, trust=True, maps=False)
    with pytest.raises(InputError, match="maps.zarr: not found"):
        biomarker_run(build_tiny_run(tmp_path, train=False, n_fields=2), trust=False)


def test_cli_explain_and_biomarkers(periphery_run, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["explain", str(periphery_run), "--explainer", "gradcampp",
                                 "--cells", "all", "--max-cells", "4", "-q"])
    assert result.exit_code == 0, result.output
    assert "view all: 8 cells explained (ctrl: 4, vpa: 4)" in result.output
    assert read_maps(periphery_run).attrs["explainer"] == "gradcampp"
    result = runner.invoke(app, ["biomarkers", str(periphery_run), "--no-trust", "--reference", "ctrl"])
    assert result.exit_code == 0, result.output
    assert "reference ctrl" in result.output and "1. " in result.output
    bad = runner.invoke(app, ["explain", str(periphery_run), "--explainer", "scorecam", "-p", "weighting=max"])
    assert bad.exit_code == 2 and "error:" in bad.output and "weighting" in bad.output
    missing = runner.invoke(app, ["explain", str(tmp_path)])
    assert missing.exit_code != 0 and "error:" in missing.output
