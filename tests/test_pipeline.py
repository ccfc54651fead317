"""`epikit run` end to end on a small simulated input: contract, finding, resume, bad input."""

from __future__ import annotations

import json
import shutil
import types

import numpy as np
import pandas as pd
import pytest
import tifffile

import epikit
from epikit.config import default_config, merge_config
from epikit.errors import InputError
from epikit.pipeline import STATE_FILE, run_pipeline
from epikit.plugins import build_plugin_manager
from epikit.registry import use_registry

# Small but statistically meaningful: 6 fields per condition allow image-level p < 0.01.
TINY = {
    "demo": {"fields": 6, "size": 192, "min_nuclei": 8, "max_nuclei": 12},
    "segment": {"segmenter": "flaky-watershed"},
    "train": {"classifier": "cnn", "folds": 2, "epochs": 3, "patience": 2},  # patience: a loop option
    "explain": {"explainer": "gradcam", "max_cells": 12},
    "biomarkers": {"trust": False},
}


class FlakyWatershed:
    """The real watershed segmenter, interrupted once after a set number of images."""

    interrupt_after: int | None = None
    calls = 0

    def __init__(self) -> None:
        from epikit.segmenters.watershed import WatershedSegmenter

        self.inner = WatershedSegmenter()

    def segment(self, image, nuclear_channel=0):
        FlakyWatershed.calls += 1
        if FlakyWatershed.interrupt_after is not None and FlakyWatershed.calls > FlakyWatershed.interrupt_after:
            FlakyWatershed.interrupt_after = None
            raise KeyboardInterrupt("simulated Ctrl-C")
        return self.inner.segment(image, nuclear_channel)


def _plugin() -> types.ModuleType:
    module = types.ModuleType("flaky_plugin")

    @epikit.hookimpl
    def epikit_register_segmenters(register):
        register("flaky-watershed", FlakyWatershed, summary="watershed that can be interrupted")

    module.epikit_register_segmenters = epikit_register_segmenters
    return module


@pytest.fixture(scope="module")
def registry():
    with use_registry(build_plugin_manager((_plugin(),))) as current:
        yield current


@pytest.fixture(scope="module")
def finished_run(registry, tmp_path_factory):
    """A run interrupted during segmentation, then restarted with the same configuration."""
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    config = merge_config(default_config(), TINY)
    FlakyWatershed.calls, FlakyWatershed.interrupt_after = 0, 5
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, run_dir, progress=False)
    state = json.loads((run_dir / STATE_FILE).read_text())
    assert state["segment"]["done"] is False
    assert len(list((run_dir / "masks").rglob("*.tif"))) == 5
    FlakyWatershed.calls = 0
    manifest = run_pipeline(config, run_dir, progress=False)
    return run_dir, config, manifest


def test_run_folder_contract(finished_run):
    run_dir, _, manifest = finished_run
    for name in ("manifest.json", "config.toml", "masks", "segmentation.csv", "segmentation.json",
                 "cells.parquet", "crops.zarr", "model",
                 "maps.zarr", "biomarkers.csv", "metrics.json", "report.html", "figures"):
        assert (run_dir / name).exists(), name
    masks = sorted((run_dir / "masks").rglob("*.tif"))
    assert len(masks) == 12
    assert tifffile.imread(masks[0]).dtype == np.int32
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("segmentation", "extraction", "classification", "explanation", "biomarkers", "findings"):
        assert key in metrics, key
    for key in ("accuracy", "balanced_accuracy", "roc_auc", "folds"):
        assert key in metrics["classification"], key
    assert {p["kind"] for p in manifest["plugins"]} == {"segmenter", "classifier", "explainer"}
    assert all(len(item["sha256"]) == 64 for item in manifest["inputs"])
    assert set(manifest["stage_seconds"]) == {"segment", "extract", "train", "explain", "biomarkers", "report"}
    assert manifest["device"] == "cpu"


def test_resume_after_interruption_has_no_duplicated_or_missing_cells(finished_run):
    run_dir, _, _ = finished_run
    segmentation = pd.read_csv(run_dir / "segmentation.csv")
    assert segmentation["reused"].sum() == 5  # the images finished before the interruption
    cells = pd.read_parquet(run_dir / "cells.parquet")
    assert cells["cell_id"].is_unique
    assert FlakyWatershed.calls == 12 - 5
    expected = set()
    for row in segmentation.itertuples():
        labels = tifffile.imread(row.mask)
        expected.update(f"{row.image_id}#{label}" for label in np.unique(labels[labels > 0]))
    assert set(cells["cell_id"]) <= expected
    assert len(cells) == json.loads((run_dir / "metrics.json").read_text())["extraction"]["n_cells"]


def test_planted_periphery_effect_is_the_top_finding(finished_run):
    run_dir, _, _ = finished_run
    findings = json.loads((run_dir / "metrics.json").read_text())["findings"]
    assert findings, "no biomarker reached q < 0.05 at the image level"
    top = findings[0]
    assert (top["condition"], top["localisation"], top["unit"]) == ("vpa", "rim-enriched", "image")
    assert top["q_value"] < 0.05


def test_a_copied_run_folder_resumes_without_redoing_a_stage(finished_run, tmp_path):
    run_dir, config, _ = finished_run
    copy = tmp_path / "copied-run"
    shutil.copytree(run_dir, copy)
    calls = FlakyWatershed.calls
    run_pipeline(config, copy, progress=False)
    before = json.loads((run_dir / STATE_FILE).read_text())
    after = json.loads((copy / STATE_FILE).read_text())
    assert {stage: after[stage]["hash"] for stage in after} == {stage: before[stage]["hash"] for stage in before}
    assert FlakyWatershed.calls == calls  # nothing segmented again


def test_changed_option_reruns_only_later_stages(finished_run):
    run_dir, config, _ = finished_run
    before = json.loads((run_dir / STATE_FILE).read_text())
    model_files = {p: p.stat().st_mtime_ns for p in (run_dir / "model").rglob("*.pt")}
    changed = merge_config(config, {"explain": {"max_cells": 6}})
    run_pipeline(changed, run_dir, progress=False)
    after = json.loads((run_dir / STATE_FILE).read_text())
    for stage in ("segment", "extract", "train"):
        assert after[stage] == before[stage], stage
    for stage in ("explain", "biomarkers", "report"):
        assert after[stage]["hash"] != before[stage]["hash"], stage
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "model").rglob("*.pt")} == model_files
    assert FlakyWatershed.calls == 12 - 5  # no image was segmented again


def test_corrupt_tiff_stops_with_the_file_named_or_is_skipped(registry, tmp_path):
    from epikit.simulate import simulate_dataset

    data = simulate_dataset(tmp_path / "data", n_fields=3, size=96, n_nuclei=(3, 5), seed=1)
    bad = data / "images" / "vpa" / "field_999.tif"
    bad.write_bytes(b"II*\x00 truncated")
    config = merge_config(default_config(), {**TINY, "input": str(data / "images")})
    with pytest.raises(InputError, match="field_999.tif"):
        run_pipeline(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "masks").exists()
    FlakyWatershed.interrupt_after = None
    skipped = merge_config(config, {"skip_bad": True, "train": {"folds": 2, "epochs": 1},
                                    "report": {"enabled": False}})
    with pytest.warns(UserWarning, match="field_999"):
        manifest = run_pipeline(skipped, tmp_path / "run", progress=False, stop_after="extract")
    assert [s["path"] for s in manifest["skipped_inputs"]] == [str(bad)]
