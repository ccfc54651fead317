"""Real microscope inputs: Z-stacks, pixel sizes, scenes, OME-Zarr, plates, per-channel files, vendor formats.

Every file is written in the test (tifffile, zarr); each bad input of the new kinds must stop
with one line naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from epikit.errors import ConfigError, InputError
from epikit.io import ImageRecord, find_images, probe_image, read_image, read_record
from epikit.io.omezarr import write_ome_zarr, write_plate
from epikit.io.plates import well_name
from epikit.io.zstack import project, sharpest_plane
from epikit.nuclei.crops import ring_width_pixels
from epikit.nuclei.shells import ring_regions
from epikit.options import ReadOptions

NAMES = ("Hoechst", "CTCF")


def blobs(seed: int, shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    """Two channels of bright discs on a noisy background, (C, Y, X) uint16."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(100, 5, (2, *shape))
    for _ in range(3):
        cy, cx = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10)
        image[:, (yy - cy) ** 2 + (xx - cx) ** 2 < 36] += [[1000], [400]]
    return image.astype(np.uint16)


def focus_stack(image: np.ndarray, sharp: int = 2, planes: int = 4) -> np.ndarray:
    """(C, Z, Y, X): plane ``sharp`` is ``image``, the others are blurred copies of it."""
    from scipy import ndimage as ndi

    stack = [image if z == sharp else ndi.gaussian_filter(image.astype(float), (0, 1 + abs(z - sharp), 1 + abs(z - sharp))).astype(image.dtype)
             for z in range(planes)]
    return np.stack(stack, axis=1)


def write_ome_tiff(path, stack_czyx: np.ndarray, pixel_size: float | None = 0.1, names=NAMES) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"axes": "CZYX", "Channel": {"Name": list(names)}}
    if pixel_size:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size, PhysicalSizeXUnit="µm")
    tifffile.imwrite(path, stack_czyx, ome=True, metadata=metadata)


def test_z_projections_of_an_ome_tiff_stack(tmp_path):
    image = blobs(0)
    stack = focus_stack(image)
    write_ome_tiff(tmp_path / "stack.ome.tif", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.ome.tif").array, stack.max(axis=1))
    np.testing.assert_allclose(read_image(tmp_path / "stack.ome.tif", z="mean").array, stack.mean(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.ome.tif", z="best").array, image)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.ome.tif", z=3).array, stack[:, 3])
    assert sharpest_plane(stack[0]) == 2
    with pytest.raises(InputError, match=r"stack.ome.tif: has 4 z-plane\(s\), so --z 99 does not exist; give a plane from 0 to 3"):
        read_image(tmp_path / "stack.ome.tif", z=99)
    with pytest.raises(ConfigError, match="--z 'sharpest' is neither"):
        project(stack, "sharpest")


def test_best_plane_follows_the_nuclear_channel(tmp_path):
    image = blobs(1)
    stack = focus_stack(image, sharp=1)
    stack[1] = focus_stack(image, sharp=3)[1]  # the second channel is sharpest elsewhere
    assert sharpest_plane(stack[1]) == 3
    np.testing.assert_array_equal(project(stack, "best", channel=0), stack[:, 1])
    np.testing.assert_array_equal(project(stack, "best", channel=1), stack[:, 3])


def test_imagej_stack_and_its_pixel_size(tmp_path):
    stack = focus_stack(blobs(2), planes=3)
    tifffile.imwrite(tmp_path / "hyper.tif", np.moveaxis(stack, 0, 1), imagej=True,
                     resolution=(1 / 0.25, 1 / 0.25), metadata={"axes": "ZCYX", "unit": "um"})
    info = probe_image(tmp_path / "hyper.tif")
    assert (info.shape, info.n_z, info.pixel_size_um) == ((2, 40, 48), 3, pytest.approx(0.25))
    np.testing.assert_array_equal(read_image(tmp_path / "hyper.tif", z=1).array, stack[:, 1])


def test_discovery_records_z_pixel_size_and_scenes(tmp_path):
    root = tmp_path / "input"
    write_ome_tiff(root / "ctrl" / "a.ome.tif", focus_stack(blobs(3)))
    (root / "vpa").mkdir()
    with tifffile.TiffWriter(root / "vpa" / "multi.ome.tif", ome=True) as writer:
        for seed in (4, 5):
            writer.write(blobs(seed), metadata={"axes": "CYX", "Channel": {"Name": list(NAMES)},
                                                "PhysicalSizeX": 100, "PhysicalSizeXUnit": "nm"})
    records, _ = find_images(root, reading=ReadOptions(z="best"), nuclear_channel="CTCF")
    assert [r.image_id for r in records] == ["ctrl/a", "vpa/multi_s0", "vpa/multi_s1"]
    assert [r.pixel_size_um for r in records] == pytest.approx([0.1, 0.1, 0.1])
    assert [r.scene for r in records] == [0, 0, 1] and [r.n_z for r in records] == [4, 1, 1]
    assert all(r.channel_names == NAMES and r.z == "best" and r.z_channel == 1 for r in records)
    np.testing.assert_array_equal(read_record(records[2]).array, blobs(5))


def test_mixed_pixel_sizes_stop_unless_overridden(tmp_path):
    root = tmp_path / "input"
    write_ome_tiff(root / "ctrl" / "a.ome.tif", blobs(0)[:, None], pixel_size=0.1)
    write_ome_tiff(root / "vpa" / "b.ome.tif", blobs(1)[:, None], pixel_size=0.2)
    with pytest.raises(InputError, match=r"b.ome.tif: pixel size 0.2 µm differs from .*a.ome.tif \(0.1 µm\); pass --pixel-size"):
        find_images(root)
    records, _ = find_images(root, reading=ReadOptions(pixel_size_um=0.15))
    assert [r.pixel_size_um for r in records] == [0.15, 0.15]


def test_ome_zarr_image_in_a_condition_folder(tmp_path):
    root = tmp_path / "input"
    stack = focus_stack(blobs(6), planes=3)
    write_ome_zarr(root / "ctrl" / "field.ome.zarr", stack, NAMES, 0.13)
    write_ome_zarr(root / "vpa" / "field.zarr", stack, NAMES, 0.13)
    records, _ = find_images(root)
    assert [r.image_id for r in records] == ["ctrl/field", "vpa/field"]
    assert records[0].pixel_size_um == pytest.approx(0.13) and records[0].channel_names == NAMES
    np.testing.assert_array_equal(read_record(records[0]).array, stack.max(axis=1))


def test_plate_with_layout_and_a_missing_well(tmp_path):
    fields = {(row, column): [blobs(i)[:, None], blobs(i + 10)[:, None]]
              for i, (row, column) in enumerate([("A", "1"), ("A", "2"), ("B", "1"), ("B", "2")])}
    plate = write_plate(tmp_path / "p1.zarr", fields, NAMES, 0.2)
    layout = tmp_path / "layout.csv"
    layout.write_text("well,condition,dose\nA1,ctrl,0\nA02,ctrl,0\nB01,vpa,2\nB/2,vpa,2\n")
    records, _ = find_images(plate, reading=ReadOptions(layout=str(layout)))
    assert len(records) == 8
    first = records[0]
    assert (first.image_id, first.group, first.condition) == ("ctrl/p1_A01_f0", "p1/A01", "ctrl")
    assert first.metadata == {"plate": "p1", "well": "A01", "field": "0", "dose": "0"}
    np.testing.assert_array_equal(read_record(records[1]).array, blobs(10))
    layout.write_text("well,condition\nA01,ctrl\nA02,ctrl\nB01,vpa\n")
    with pytest.raises(InputError, match=r"layout.csv: no row for well B02 \(found in .*p1.zarr\); add a row 'B02,<condition>'"):
        find_images(plate, reading=ReadOptions(layout=str(layout)))
    with pytest.raises(InputError, match="p1.zarr: an OME-Zarr plate needs a layout CSV"):
        find_images(plate)


def test_well_names():
    assert [well_name(w) for w in ("A1", "a01", "B/12", "H-3")] == ["A01", "A01", "B12", "H03"]
    with pytest.raises(InputError, match="'13' is not a well name"):
        well_name("13")


def write_channel_files(folder, prefix, seed, shapes=((40, 48), (40, 48))):
    folder.mkdir(parents=True, exist_ok=True)
    image = blobs(seed)
    for c, shape in enumerate(shapes):
        tifffile.imwrite(folder / f"{prefix}_w{c + 1}.tif", image[c][: shape[0], : shape[1]])
    return image


def test_manifest_with_one_path_column_per_channel(tmp_path):
    images = {name: write_channel_files(tmp_path / "img", name, seed) for seed, name in enumerate(["A01_s1", "B01_s1"])}
    manifest = tmp_path / "fields.csv"
    manifest.write_text("path_Hoechst,path_CTCF,condition,plate\n"
                        "img/A01_s1_w1.tif,img/A01_s1_w2.tif,ctrl,p1\nimg/B01_s1_w1.tif,img/B01_s1_w2.tif,vpa,p1\n")
    records, _ = find_images(manifest)
    assert [r.image_id for r in records] == ["ctrl/A01_s1_w1", "vpa/B01_s1_w1"]
    assert records[0].channel_names == NAMES and records[0].metadata == {"plate": "p1"}
    np.testing.assert_array_equal(read_record(records[1]).array, images["B01_s1"])


def test_pattern_with_channel_values_layout_and_shape_mismatch(tmp_path):
    folder = tmp_path / "export"
    images = {prefix: write_channel_files(folder, prefix, seed)
              for seed, prefix in enumerate(["A01_s1", "A01_s2", "B01_s1", "B01_s2"])}
    tifffile.imwrite(folder / "A01_s1_w3.tif", images["A01_s1"][0])  # a channel not asked for
    layout = tmp_path / "layout.csv"
    layout.write_text("well,condition\nA01,ctrl\nB01,vpa\n")
    reading = ReadOptions(pattern="{well}_{field}_w{channel}.tif", layout=str(layout))
    records, _ = find_images(folder, ["1=Hoechst", "2=CTCF"], reading=reading)
    assert [r.image_id for r in records] == ["ctrl/A01_s1", "ctrl/A01_s2", "vpa/B01_s1", "vpa/B01_s2"]
    assert records[0].group == "A01" and records[0].metadata == {"well": "A01", "field": "s1"}
    assert records[0].channel_names == NAMES
    np.testing.assert_array_equal(read_record(records[3]).array, images["B01_s2"])
    write_channel_files(folder, "B01_s3", 9, shapes=((40, 48), (32, 48)))
    with pytest.raises(InputError, match=r"B01_s3_w2.tif: is 32x48 .* but .*B01_s3_w1.tif of the same field is 40x48"):
        find_images(folder, ["1=Hoechst", "2=CTCF"], reading=reading)


def test_pattern_conditions_from_sub_folders_and_missing_channel(tmp_path):
    for condition, seed in (("ctrl", 0), ("vpa", 1)):
        write_channel_files(tmp_path / "in" / condition, "C03_f00", seed)
    records, _ = find_images(tmp_path / "in", reading=ReadOptions(pattern="{well}_{field}_w{channel}.tif"))
    assert [(r.image_id, r.channel_names) for r in records] == [("ctrl/C03_f00", ("1", "2")), ("vpa/C03_f00", ("1", "2"))]
    with pytest.raises(InputError, match="lacks channel.* 3; add the files"):
        find_images(tmp_path / "in", ["1", "2", "3"], reading=ReadOptions(pattern="{well}_{field}_w{channel}.tif"))
    with pytest.raises(ConfigError, match="must hold {channel} once"):
        find_images(tmp_path / "in", reading=ReadOptions(pattern="{well}_{field}.tif"))


def test_unknown_extension_names_the_install(tmp_path):
    for condition in ("ctrl", "vpa"):
        (tmp_path / condition).mkdir()
        (tmp_path / condition / "field.nd2").write_bytes(b"not really nd2")
    with pytest.raises(InputError, match=r"field.nd2: .*pip install"):
        find_images(tmp_path)
    (tmp_path / "odd.xyz").write_bytes(b"?")
    with pytest.raises(InputError, match=r"odd.xyz: .*pip install"):
        read_record(ImageRecord(tmp_path / "odd.xyz", "c", "c", (), "c/odd"))


def test_bioio_reads_what_the_fast_path_reads(tmp_path):
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_tiff")
    from epikit.io.bioio_reader import read_bioio

    stack = focus_stack(blobs(7), planes=3)
    write_ome_tiff(tmp_path / "s.ome.tif", stack, pixel_size=0.11)
    pixels, info = read_bioio(tmp_path / "s.ome.tif")
    np.testing.assert_array_equal(pixels, stack)
    assert (info.channel_names, info.n_z, info.pixel_size_um) == (NAMES, 3, pytest.approx(0.11))


def test_fixed_width_rings_of_a_disc():
    yy, xx = np.mgrid[:41, :41]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2
    rings = ring_regions(disc, 4, 3.0)
    assert set(np.unique(rings[disc])) == {1, 2, 3, 4} and not rings[~disc].any()
    # Rings of fixed width: ring 1 spans the outer 3 px of the radius, the core the rest.
    radius = np.hypot(yy - 20, xx - 20)
    assert radius[rings == 1].min() >= 11.5 and radius[rings == 2].max() <= 12.5
    assert radius[rings == 4].max() <= 6.5
    assert ring_width_pixels(0.5, 0.25) == 2.0
    with pytest.raises(ConfigError, match="ring_width_um=0.5 needs .* pass --pixel-size"):
        ring_width_pixels(0.5, None)


@pytest.mark.parametrize("row, message", [
    ("B01,vpa,abc", r"layout.csv \(well B01\) has dose 'abc'; give a number >= 0"),
    ("B01,vpa,-1", r"layout.csv \(well B01\) has dose '-1'; give a number >= 0"),
    ("B01,vpa/2,2", r"layout.csv \(well B01\): condition 'vpa/2' is not a usable name"),
])
def test_layout_labels_are_checked_like_a_manifest_s(tmp_path, row, message):
    """A plate's and a --pattern's layout CSV: a bad dose or condition stops at discovery, naming the layout."""
    plate = write_plate(tmp_path / "p1.zarr", {("A", "1"): [blobs(0)[:, None]], ("B", "1"): [blobs(1)[:, None]]},
                        NAMES, 0.2)
    layout = tmp_path / "layout.csv"
    layout.write_text(f"well,condition,dose\nA01,ctrl,0\n{row}\n")
    with pytest.raises(InputError, match=message) as error:
        find_images(plate, reading=ReadOptions(layout=str(layout)))
    assert "\n" not in str(error.value)
    for prefix, seed in (("A01_s1", 0), ("B01_s1", 1)):
        write_channel_files(tmp_path / "export", prefix, seed)
    reading = ReadOptions(pattern="{well}_{field}_w{channel}.tif", layout=str(layout))
    with pytest.raises(InputError, match=r"B01_s1_w1.tif \(layout .*layout.csv, well B01\)"):
        find_images(tmp_path / "export", reading=reading)


def test_a_dose_in_a_pattern_field_is_checked(tmp_path):
    for prefix, seed in (("ctrl_0", 0), ("vpa_x2", 1)):
        write_channel_files(tmp_path / "export", prefix, seed)
    with pytest.raises(InputError, match=r"vpa_x2_w1.tif has dose 'x2'; give a number >= 0"):
        find_images(tmp_path / "export", reading=ReadOptions(pattern="{condition}_{dose}_w{channel}.tif"))


def write_two_scenes(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, ome=True) as writer:
        for seed in (4, 5):
            writer.write(blobs(seed), metadata={"axes": "CYX", "Channel": {"Name": list(NAMES)},
                                                "PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "µm"})


def test_discovery_opens_a_multi_scene_file_once(tmp_path, monkeypatch):
    write_two_scenes(tmp_path / "in" / "vpa" / "multi.ome.tif")
    write_ome_tiff(tmp_path / "in" / "ctrl" / "a.ome.tif", blobs(3)[:, None])
    opened = []
    real = tifffile.TiffFile
    monkeypatch.setattr(tifffile, "TiffFile", lambda path, *a, **k: opened.append(Path(path).name) or real(path, *a, **k))
    records, _ = find_images(tmp_path / "in")
    assert [r.image_id for r in records] == ["ctrl/a", "vpa/multi_s0", "vpa/multi_s1"]
    assert sorted(opened) == ["a.ome.tif", "multi.ome.tif"]


def test_bioio_probes_every_scene_from_one_open(tmp_path, monkeypatch):
    pytest.importorskip("bioio")
    pytest.importorskip("bioio_ome_tiff")
    from epikit.io import bioio_reader
    from epikit.io.images import probe_image_scenes

    write_two_scenes(tmp_path / "multi.ome.tif")
    opened = []
    real = bioio_reader.open_bioimage
    monkeypatch.setattr(bioio_reader, "open_bioimage", lambda path: opened.append(path) or real(path))
    infos = bioio_reader.probe_bioio_scenes(tmp_path / "multi.ome.tif")
    assert len(opened) == 1
    fast = probe_image_scenes(tmp_path / "multi.ome.tif")
    assert [(i.shape, i.channel_names, i.n_scenes) for i in infos] == [(f.shape, f.channel_names, 2) for f in fast]
    assert [i.pixel_size_um for i in infos] == pytest.approx([0.1, 0.1])
