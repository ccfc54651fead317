"""`epikit run` (segment + extract, then the report) on real-microscope inputs made in the test.

Simulated fields are written as an OME-Zarr 2x2-well plate, OME-TIFF Z-stacks and one file
per channel; the pixel size and channel names must reach cells.parquet, manifest.json and
the report, and plate / well / field must become cell columns and groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

from epikit.config import default_config, merge_config
from epikit.io import read_image
from epikit.io.omezarr import write_plate
from epikit.pipeline import run_pipeline

NAMES = ("Hoechst", "CTCF", "H3K27ac")


@pytest.fixture(scope="module")
def fields(tmp_path_factory) -> dict[str, list[np.ndarray]]:
    """Four simulated fields per condition, (C, Y, X) uint16."""
    from epikit.simulate import simulate_dataset

    root = simulate_dataset(tmp_path_factory.mktemp("sim") / "sim", n_fields=4, size=(96, 96), n_nuclei=(3, 4),
                            radius=(10.0, 12.0), seed=3)
    return {condition: [read_image(p).array.astype(np.uint16)
                        for p in sorted((root / "images" / condition).glob("*.tif"))]
            for condition in ("ctrl", "vpa")}


def settings(source: Path, **read: object) -> dict:
    return merge_config(default_config(), {"input": str(source), "read": read,
                                           "segment": {"segmenter": "watershed"},
                                           "extract": {"crop_size": 16}})


def finish_with_report(run: Path) -> str:
    from epikit import report
    from epikit.options import ReportOptions

    report.run(run, ReportOptions(), progress=False)
    return (run / "report.html").read_text(encoding="utf-8")


def test_plate_run_has_units_plate_columns_and_well_groups(tmp_path, fields):
    wells = {("A", "1"): fields["ctrl"][:2], ("A", "2"): fields["ctrl"][2:],
             ("B", "1"): fields["vpa"][:2], ("B", "2"): fields["vpa"][2:]}
    plate = write_plate(tmp_path / "screen.zarr", {w: [f[:, None] for f in fs] for w, fs in wells.items()},
                        NAMES, 0.25)
    layout = tmp_path / "layout.csv"
    layout.write_text("well,condition,dose\nA01,ctrl,0\nA02,ctrl,0\nB01,vpa,1.5\nB02,vpa,1.5\n")
    run = tmp_path / "run"
    manifest = run_pipeline(settings(plate, layout=str(layout)), run, progress=False, stop_after="extract")
    cells = pd.read_parquet(run / "cells.parquet")
    assert set(cells["well"]) == {"A01", "A02", "B01", "B02"} and set(cells["plate"]) == {"screen"}
    assert set(cells["field"]) == {"0", "1"} and set(cells["dose"]) == {0.0, 1.5}  # typed
    assert set(cells["group"]) == {"screen/A01", "screen/A02", "screen/B01", "screen/B02"}
    assert (cells["pixel_size_um"] == 0.25).all()
    np.testing.assert_allclose(cells["area_um2"], cells["area"] * 0.0625)
    np.testing.assert_allclose(cells["diameter_um"], 2 * np.sqrt(cells["area"] / np.pi) * 0.25)
    assert {"Hoechst_mean", "H3K27ac_shell_1_mean"} <= set(cells.columns)
    assert manifest["reading"]["pixel_size_um"] == 0.25 and manifest["reading"]["channel_names"] == list(NAMES)
    assert manifest["inputs"][0]["metadata"]["well"] == "A01"
    assert len(list((run / "masks").rglob("*.tif"))) == 8
    html = finish_with_report(run)
    assert "Pixel size: 0.25 µm (from metadata)" in html and "Hoechst, CTCF, H3K27ac" in html


def test_z_stack_run_with_absolute_rings(tmp_path, fields):
    root = tmp_path / "input"
    for condition, images in fields.items():
        (root / condition).mkdir(parents=True)
        for k, image in enumerate(images):
            stack = np.stack([image // 2, image, image // 3], axis=1)  # plane 1 is the brightest
            tifffile.imwrite(root / condition / f"f{k}.ome.tif", stack, ome=True,
                             metadata={"axes": "CZYX", "Channel": {"Name": list(NAMES)}})
    config = merge_config(settings(root, pixel_size_um=0.5), {"extract": {"ring_width_um": 1.0}})
    run = tmp_path / "run"
    manifest = run_pipeline(config, run, progress=False, stop_after="extract")
    cells = pd.read_parquet(run / "cells.parquet")
    assert (cells["pixel_size_um"] == 0.5).all() and "Hoechst_ring_5_share" in cells
    np.testing.assert_allclose(cells[[f"CTCF_ring_{k}_share" for k in range(1, 6)]].sum(axis=1), 1.0)
    reading = manifest["reading"]
    assert (reading["z"], reading["max_z_planes"], reading["pixel_size_source"]) == ("max", 3, "--pixel-size")
    html = finish_with_report(run)
    assert "Z-stacks (up to 3 planes) were reduced by maximum projection (the default" in html
    assert "from --pixel-size" in html


def test_cli_run_on_per_channel_files_with_a_pattern(tmp_path, fields, monkeypatch):
    from epikit.cli import app

    folder = tmp_path / "export"
    folder.mkdir()
    rows = ["well,condition"]
    for condition, row in (("ctrl", "C"), ("vpa", "D")):
        rows.append(f"{row}05,{condition}")
        for k, image in enumerate(fields[condition]):
            for c in range(len(NAMES)):
                tifffile.imwrite(folder / f"{row}05_s{k + 1}_w{c + 1}.tif", image[c])
    (tmp_path / "layout.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.setattr("epikit.pipeline.STAGES", ("segment", "extract"))
    result = CliRunner().invoke(app, [
        "run", str(folder), "-o", str(tmp_path / "run"), "-q", "--pattern", "{well}_{field}_w{channel}.tif",
        "--channels", "1=Hoechst,2=CTCF,3=H3K27ac", "--layout", str(tmp_path / "layout.csv"),
        "--pixel-size", "0.2", "--segmenter", "watershed", "-p", "extract.crop_size=16"])
    assert result.exit_code == 0, result.output
    cells = pd.read_parquet(tmp_path / "run" / "cells.parquet")
    assert set(cells["image_id"]) == {f"{c}/{r}05_s{k}" for c, r in (("ctrl", "C"), ("vpa", "D")) for k in range(1, 5)}
    assert set(cells["group"]) == {"C05", "D05"} and (cells["pixel_size_um"] == 0.2).all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert len(manifest["inputs"][0]["channel_files"]) == 3
    assert manifest["parameters"]["read"]["pattern"] == "{well}_{field}_w{channel}.tif"


def test_cli_bad_inputs_stop_with_one_line(tmp_path, fields):
    from epikit.cli import app

    root = tmp_path / "input"
    for condition in ("ctrl", "vpa"):
        (root / condition).mkdir(parents=True)
        tifffile.imwrite(root / condition / "f.ome.tif", fields[condition][0][:, None], ome=True,
                         metadata={"axes": "CZYX"})
    result = CliRunner().invoke(app, ["run", str(root), "-o", str(tmp_path / "run"), "--z", "99",
                                      "--segmenter", "watershed", "-q"])
    assert result.exit_code != 0
    message = result.output.strip().splitlines()[-1]
    assert "f.ome.tif: has 1 z-plane(s), so --z 99 does not exist" in message
