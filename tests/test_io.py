"""Input discovery and image reading: layouts, channel names, and every bad-input case."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from epikit.errors import DataError, InputError
from epikit.io import (
    atomic_path,
    discover_images,
    find_images,
    mask_path,
    read_image,
    read_json,
    read_labels,
)
from epikit.runfolder.metrics import update_metrics

CHANNELS = ["Hoechst", "CTCF", "H3K27ac"]


def write_field(path, channels=3, shape=(24, 32), channel_last=False, ome_names=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 4000, (channels, *shape), dtype=np.uint16)
    if ome_names:
        tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ome_names}})
    elif channel_last:
        tifffile.imwrite(path, np.moveaxis(data, 0, -1), photometric="rgb")
    else:
        tifffile.imwrite(path, data, photometric="minisblack")
    return data


@pytest.fixture
def condition_folder(tmp_path):
    root = tmp_path / "input"
    for condition in ("ctrl", "vpa"):
        for i in range(2):
            write_field(root / condition / f"field_{i}.tif", seed=i)
    return root


def test_condition_folders_are_discovered_in_order(condition_folder):
    records = discover_images(condition_folder, channels=CHANNELS)
    assert [r.image_id for r in records] == ["ctrl/field_0", "ctrl/field_1", "vpa/field_0", "vpa/field_1"]
    assert all(r.group == r.image_id for r in records)
    assert records[0].channel_names == tuple(CHANNELS)
    assert mask_path("masks", records[2]).as_posix() == "masks/vpa/field_0.tif"


def test_manifest_with_groups_and_metadata(tmp_path):
    for name in ("a", "b"):
        write_field(tmp_path / "img" / f"{name}.tif")
    manifest = tmp_path / "plates.csv"
    manifest.write_text("path,condition,group,plate\nimg/a.tif,ctrl,w1,p1\nimg/b.tif,vpa,w2,p2\n")
    records = discover_images(manifest)
    assert [(r.condition, r.group, r.metadata["plate"]) for r in records] == [("ctrl", "w1", "p1"), ("vpa", "w2", "p2")]
    assert records[0].channel_names == ("ch0", "ch1", "ch2")


def test_channel_last_and_ome_names_are_read(tmp_path):
    data = write_field(tmp_path / "last.tif", channel_last=True)
    image = read_image(tmp_path / "last.tif")
    assert image.array.shape == (3, 24, 32) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array, data)
    write_field(tmp_path / "named.ome.tif", ome_names=CHANNELS)
    assert read_image(tmp_path / "named.ome.tif").channel_names == tuple(CHANNELS)


def test_png_single_channel(tmp_path):
    from PIL import Image

    pixels = (np.arange(600).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "nuclei.png")
    image = read_image(tmp_path / "nuclei.png")
    assert image.array.shape == (1, 20, 30)


def test_labels_are_int32(tmp_path):
    tifffile.imwrite(tmp_path / "l.tif", np.arange(12, dtype=np.uint16).reshape(3, 4))
    labels = read_labels(tmp_path / "l.tif")
    assert labels.dtype == np.int32 and labels.max() == 11
    tifffile.imwrite(tmp_path / "f.tif", np.full((3, 4), 0.5, np.float32))
    with pytest.raises(InputError, match="integer"):
        read_labels(tmp_path / "f.tif")


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        discover_images(tmp_path / "nope")


def test_no_images(tmp_path):
    (tmp_path / "ctrl").mkdir()
    with pytest.raises(InputError, match="no images found"):
        discover_images(tmp_path)


@pytest.mark.parametrize(("row", "what"), [
    ("img/a.tif,../../x,w1", "condition '../../x'"),
    ("img/a.tif,ctrl/sub,w1", "condition 'ctrl/sub'"),
    ("img/a.tif,..,w1", "condition '..'"),
    ("img/a.tif,ctrl,../w1", "group '../w1'"),
    ("img/a.tif,ctrl,w\\1", "group 'w\\\\1'"),
])
def test_condition_and_group_names_that_would_leave_the_run_folder_name_the_manifest_line(tmp_path, row, what):
    write_field(tmp_path / "img" / "a.tif")
    write_field(tmp_path / "img" / "b.tif")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,condition,group\n{row}\nimg/b.tif,vpa,w2\n")
    with pytest.raises(InputError, match=r"m\.csv line 2: ") as error:
        discover_images(manifest)
    assert what in str(error.value) and "\n" not in str(error.value)


def test_loose_images_ask_for_condition_folders(tmp_path):
    write_field(tmp_path / "a.tif")
    with pytest.raises(InputError, match="one sub-folder per condition"):
        discover_images(tmp_path)


def test_one_condition_only(tmp_path):
    write_field(tmp_path / "ctrl" / "a.tif")
    with pytest.raises(DataError, match="only condition ctrl"):
        discover_images(tmp_path)
    assert len(discover_images(tmp_path, min_conditions=1)) == 1


def test_corrupt_file_is_named_or_skipped(condition_folder):
    bad = condition_folder / "vpa" / "broken.tif"
    bad.write_bytes(b"II*\x00not really a tiff")
    with pytest.raises(InputError) as info:
        discover_images(condition_folder)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.warns(UserWarning, match="broken.tif"):
        records, skipped = find_images(condition_folder, skip_bad=True)
    assert len(records) == 4 and [s.path for s in skipped] == [bad]


def test_channel_count_differs_between_files(condition_folder):
    write_field(condition_folder / "vpa" / "two.tif", channels=2)
    with pytest.raises(InputError, match="two.tif: has 2 channel"):
        discover_images(condition_folder)


def test_channels_option_must_name_every_channel(condition_folder):
    with pytest.raises(InputError, match="--channels names 2"):
        discover_images(condition_folder, channels=["Hoechst", "CTCF"])


def test_time_series_is_rejected(condition_folder):
    stack = condition_folder / "vpa" / "series.tif"
    tifffile.imwrite(stack, np.zeros((4, 3, 16, 16), np.uint16), photometric="minisblack", metadata={"axes": "TCYX"})
    with pytest.raises(InputError, match=r"series.tif: not a channel or Z axis \(T=4"):
        discover_images(condition_folder)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "store.zarr"
    for content in ("first", "second"):
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            (tmp / "data").write_text(content)
    assert (folder / "data").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_update_metrics_merges_keys(tmp_path):
    update_metrics(tmp_path, "a", {"x": np.float32(1.5)})
    update_metrics(tmp_path, "b", [np.int64(2), float("nan")])
    assert read_json(tmp_path / "metrics.json") == {"a": {"x": 1.5}, "b": [2, None]}
