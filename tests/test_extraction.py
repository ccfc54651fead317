"""The extract stage on simulated fields with ground-truth masks: content, effect, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from skimage.measure import regionprops
from typer.testing import CliRunner

from epikit.cli import app
from epikit.errors import DataError, InputError
from epikit.extraction import extract_cells
from epikit.runfolder.crop_writer import CropWriter
from epikit.runfolder.layout import CELLS, CROPS
from epikit.runfolder.scratch import scratch_folders
from epikit.io import discover_images, mask_path, read_labels, write_tiff
from epikit.simulate import simulate_dataset

OPTIONS = {"crop_size": 32, "min_area": 30}


class Interrupted(Exception):
    """Stands for a kill in the middle of an extraction."""


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extract_sim")
    return simulate_dataset(root / "data", n_fields=3, size=192, n_nuclei=(6, 9), radius=(11.0, 16.0),
                            seed=3, effect_size=0.5)


@pytest.fixture(scope="module")
def records(simulated: Path) -> list:
    return discover_images(simulated / "images")


@pytest.fixture(scope="module")
def full_run(simulated: Path, records: list, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("extract_full")
    extract_cells(records, simulated / "masks", out, **OPTIONS)
    return out


def _load(run: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    table = pd.read_parquet(run / CELLS)
    group = zarr.open_group(str(run / CROPS), mode="r")
    return table, np.asarray(group["crops"][:]), np.asarray(group["masks"][:])


def _assert_same_cells(run: Path, reference: Path) -> None:
    """Same cells, crops and masks as the reference run, no duplicates, rows match crops."""
    table, crops, masks = _load(run)
    ref_table, ref_crops, ref_masks = _load(reference)
    assert table["cell_id"].is_unique
    assert sorted(table["cell_id"]) == sorted(ref_table["cell_id"])
    assert len(crops) == len(masks) == len(table)
    np.testing.assert_array_equal(table["crop_index"], np.arange(len(table)))
    ref_row = {cell: i for i, cell in enumerate(ref_table["cell_id"])}
    order = [ref_row[cell] for cell in table["cell_id"]]
    np.testing.assert_array_equal(crops, ref_crops[order])
    np.testing.assert_array_equal(masks, ref_masks[order])
    features = [c for c in ref_table.columns if c.endswith("_share")]
    np.testing.assert_allclose(table[features].to_numpy(), ref_table[features].to_numpy()[order])


def test_one_crop_per_nucleus_that_does_not_touch_the_border(simulated: Path, records: list,
                                                             full_run: Path) -> None:
    table, crops, masks = _load(full_run)
    expected, border = {}, 0
    for record in records:
        labels = read_labels(mask_path(simulated / "masks", record))
        for region in regionprops(labels):
            y0, x0, y1, x1 = region.bbox
            if y0 == 0 or x0 == 0 or y1 == labels.shape[0] or x1 == labels.shape[1]:
                border += 1
            elif region.area >= OPTIONS["min_area"]:
                expected[f"{record.image_id}#{region.label}"] = region
    assert border > 0 and len(expected) > 20
    assert sorted(table["cell_id"]) == sorted(expected)
    for row in table.itertuples():
        region = expected[row.cell_id]
        assert row.label == region.label and row.area == region.area
        assert (row.bbox_y0, row.bbox_x0, row.bbox_y1, row.bbox_x1) == region.bbox
        assert (row.centroid_y, row.centroid_x) == pytest.approx(region.centroid)
        assert row.orientation == pytest.approx(region.orientation)
        assert row.eccentricity == pytest.approx(region.eccentricity)
        assert row.cell_id == f"{row.image_id}#{row.label}" and row.condition == row.image_id.split("/")[0]
    assert crops.shape == (len(table), 3, 32, 32) and crops.dtype == np.float16
    assert masks.shape == (len(table), 32, 32) and masks.dtype == np.uint8
    # Crop i shows row i's nucleus: its mask area is the nucleus area times the scale squared.
    ratio = masks.reshape(len(masks), -1).sum(axis=1) / (table["area"] * table["crop_scale"] ** 2)
    assert ratio.between(0.9, 1.1).all()
    np.testing.assert_array_equal(table["crop_index"], np.arange(len(table)))
    assert not (crops * (masks[:, None] == 0)).any()  # zero outside the nucleus

    attrs = dict(zarr.open_group(str(full_run / CROPS), mode="r").attrs)
    assert attrs["channel_names"] == ["Hoechst", "CTCF", "H3K27ac"]
    assert (attrs["crop_size"], attrs["normalisation"], attrs["scale_mode"], attrs["align"],
            attrs["dtype"]) == (32, "image", "fit", "none", "float16")
    assert "H3K27ac_shell_1_share" in attrs["feature_columns"]
    assert set(attrs["feature_columns"]) <= set(table.columns)

    metrics = json.loads((full_run / "metrics.json").read_text())["extraction"]
    assert metrics["n_cells"] == len(table) and metrics["n_skipped_border"] == border
    assert metrics["n_images"] == len(records) and metrics["cells_per_second"] > 0


def test_planted_rim_effect_shows_in_h3k27ac_shells_only(full_run: Path) -> None:
    table = pd.read_parquet(full_run / CELLS)
    # Image-level means: the image (field) is the statistical unit.
    images = table.groupby(["condition", "image_id"]).mean(numeric_only=True)
    for method in ("shell", "dshell"):
        rim = {c: images[f"{c}_{method}_1_share"] for c in ("H3K27ac", "CTCF", "Hoechst")}
        effect = rim["H3K27ac"]["vpa"].mean() - rim["H3K27ac"]["ctrl"].mean()
        assert rim["H3K27ac"]["vpa"].min() > rim["H3K27ac"]["ctrl"].max()
        assert effect > 0.02
        for channel in ("CTCF", "Hoechst"):
            assert abs(rim[channel]["vpa"].mean() - rim[channel]["ctrl"].mean()) < effect / 3
    centre = images["H3K27ac_shell_5_share"]
    assert centre["vpa"].mean() < centre["ctrl"].mean()


def test_rerun_on_the_same_inputs_does_nothing(simulated: Path, records: list, full_run: Path,
                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    before = {p: p.stat().st_mtime_ns for p in (run / CELLS, run / "metrics.json")}
    summary = extract_cells(records, simulated / "masks", run, **OPTIONS)
    assert summary["n_images_processed"] == 0 and summary["n_images_resumed"] == len(records)
    assert before == {p: p.stat().st_mtime_ns for p in before}
    _assert_same_cells(run, full_run)


def test_interrupted_run_resumes_without_duplicates(simulated: Path, records: list, full_run: Path,
                                                    tmp_path: Path) -> None:
    def stop_after_two(record: object, count: int) -> None:
        seen.append(record)
        if len(seen) == 2:
            raise Interrupted

    seen: list = []
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        extract_cells(records, simulated / "masks", run, on_image=stop_after_two, **OPTIONS)
    assert not (run / CELLS).exists() and not (run / CROPS).exists()
    [work] = scratch_folders(run, "extract")
    log = work / "progress.jsonl"
    assert len(log.read_text().splitlines()) == 2
    with open(log, "a") as handle:  # a third line torn by the kill
        handle.write('{"image_id": "vpa/fie')
    summary = extract_cells(records, simulated / "masks", run, **OPTIONS)
    assert summary["n_images_resumed"] == 2 and summary["n_images_processed"] == len(records) - 2
    _assert_same_cells(run, full_run)


def test_half_written_image_is_never_counted(simulated: Path, records: list, full_run: Path,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill after an image's crops were written but before its commit: the image is redone."""
    original = CropWriter.commit
    calls = []

    def commit_then_die(self: CropWriter, entry: dict, part: object) -> None:
        calls.append(entry["image_id"])
        if len(calls) == 3:
            raise Interrupted
        original(self, entry, part)

    monkeypatch.setattr(CropWriter, "commit", commit_then_die)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        extract_cells(records, simulated / "masks", run, **OPTIONS)
    [folder] = scratch_folders(run, "extract")
    work = zarr.open_group(str(folder / CROPS), mode="r")
    log = (folder / "progress.jsonl").read_text().splitlines()
    committed = sum(json.loads(line)["count"] for line in log)
    assert len(log) == 2
    assert work["crops"].shape[0] > committed  # the third image's crops are in the store
    monkeypatch.setattr(CropWriter, "commit", original)
    extract_cells(records, simulated / "masks", run, **OPTIONS)
    _assert_same_cells(run, full_run)


def test_subset_first_then_all_images(simulated: Path, records: list, full_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = extract_cells(records[:2], simulated / "masks", run, **OPTIONS)
    assert first["n_images"] == 2
    summary = extract_cells(records, simulated / "masks", run, **OPTIONS)
    assert summary["n_images_resumed"] == 2
    _assert_same_cells(run, full_run)


def test_changed_settings_start_again(simulated: Path, records: list, tmp_path: Path) -> None:
    run = tmp_path / "run"
    extract_cells(records[:2], simulated / "masks", run, **OPTIONS)
    with pytest.warns(UserWarning, match="settings changed"):
        summary = extract_cells(records[:2], simulated / "masks", run, crop_size=24, align="major-axis")
    assert summary["n_images_processed"] == 2
    table, crops, _ = _load(run)
    assert crops.shape[1:] == (3, 24, 24) and len(crops) == len(table)


def _write_pair(root: Path, condition: str, name: str, image: np.ndarray, labels: np.ndarray) -> None:
    write_tiff(root / "images" / condition / f"{name}.tif", image, photometric="minisblack")
    write_tiff(root / "masks" / condition / f"{name}.tif", labels)


def _blob_labels(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 6) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for label, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = label
    return labels


def test_mask_shape_differs_from_image(tmp_path: Path) -> None:
    image = np.full((3, 64, 64), 100, np.uint16)
    _write_pair(tmp_path, "ctrl", "a", image, _blob_labels((64, 60), [(30, 30)]))
    records = discover_images(tmp_path / "images", min_conditions=1)
    with pytest.raises(InputError) as caught:
        extract_cells(records, tmp_path / "masks", tmp_path / "run")
    message = str(caught.value)
    assert str(tmp_path / "masks" / "ctrl" / "a.tif") in message
    assert str(tmp_path / "images" / "ctrl" / "a.tif") in message and "64x60" in message


def test_missing_and_empty_label_images(tmp_path: Path) -> None:
    image = np.full((3, 64, 64), 100, np.uint16)
    _write_pair(tmp_path, "ctrl", "a", image, _blob_labels((64, 64), [(30, 30), (20, 45)]))
    _write_pair(tmp_path, "ctrl", "empty", image, np.zeros((64, 64), np.int32))
    records = discover_images(tmp_path / "images", min_conditions=1)
    with pytest.warns(UserWarning, match=r"1 of 2 label images hold no nucleus.*ctrl/empty"):
        summary = extract_cells(records, tmp_path / "masks", tmp_path / "run", crop_size=16)
    assert summary["n_cells"] == 2 and summary["n_images_empty"] == 1

    empty_only = [r for r in records if r.image_id == "ctrl/empty"]
    with pytest.raises(DataError, match="none of the 1 label images holds a nucleus"):
        extract_cells(empty_only, tmp_path / "masks", tmp_path / "run_empty")

    (tmp_path / "masks" / "ctrl" / "a.tif").unlink()
    with pytest.raises(InputError, match=r"a\.tif: no label image"):
        extract_cells(records, tmp_path / "masks", tmp_path / "run_missing")


def test_crop_too_small_warns_with_the_clipped_count(simulated: Path, records: list, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"(\d+) of (\d+) nuclei are larger than the 16x16 crop") as caught:
        summary = extract_cells(records[:2], simulated / "masks", tmp_path / "run", crop_size=16,
                                scale="native", features=False)
    clipped = int(pd.read_parquet(tmp_path / "run" / CELLS)["clipped"].sum())
    assert summary["n_clipped"] == clipped > 0
    assert any(str(w.message).startswith(f"{clipped} of {summary['n_cells']} nuclei") for w in caught)


def test_cli_extract(simulated: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["extract", str(simulated / "images"), "--masks", str(simulated / "masks"),
                                 "--out", str(out), "--crop-size", "24", "--align", "major-axis",
                                 "--normalise", "cell", "--no-features"])
    assert result.exit_code == 0, result.output
    assert "cells from 6 image(s)" in result.output
    table = pd.read_parquet(out / CELLS)
    assert "H3K27ac_mean" not in table.columns and len(table) > 0
    attrs = dict(zarr.open_group(str(out / CROPS), mode="r").attrs)
    assert (attrs["align"], attrs["normalisation"], attrs["crop_size"]) == ("major-axis", "cell", 24)

    bad = runner.invoke(app, ["extract", str(simulated / "images"), "--masks", str(simulated / "masks"),
                              "--out", str(tmp_path / "bad"), "--scale", "zoom"])
    assert bad.exit_code == 2 and "error: scale must be one of fit, native" in bad.output
