"""Tests of the simulator: determinism, exact ground truth, the planted effect, the CLI."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from epikit.errors import ConfigError
from epikit.simulate import (
    CHANNEL_NAMES,
    sample_diverse_field_params,
    simulate_dataset,
    simulate_field,
)

SMALL = dict(size=(128, 128), n_nuclei=(4, 6), radius=(12.0, 16.0))
# Default nucleus sizes and blur, small fields: what the effect's documented numbers refer to.
EFFECT_FIELDS = dict(size=(160, 160), n_nuclei=(4, 6))
ACETYL = CHANNEL_NAMES.index("H3K27ac")


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` keyed by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def rim_centre_ratios(plane: np.ndarray, labels: np.ndarray, background: float) -> np.ndarray:
    """Per nucleus not cut by the field border: mean of the outer half (by distance to the mask
    edge) / mean of the inner half."""
    ratios = []
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or index in border:
            continue
        mask = np.pad(labels[box] == index, 1)
        if mask.sum() < 80:
            continue
        distance = ndi.distance_transform_edt(mask)[mask]
        values = np.pad(plane[box].astype(float), 1)[mask] - background
        rim = distance <= np.median(distance)
        ratios.append(values[rim].mean() / values[~rim].mean())
    return np.asarray(ratios)


def paired_fields(seeds: range, **params) -> tuple[list, list]:
    """ctrl and vpa fields drawn from identical random streams (same layout, same noise)."""
    ctrl = [simulate_field(np.random.default_rng(s), condition="ctrl", **params) for s in seeds]
    vpa = [simulate_field(np.random.default_rng(s), condition="vpa", **params) for s in seeds]
    return ctrl, vpa


def background_level(field, channel: int) -> float:
    return float(np.median(field.image[channel][field.labels == 0]))


def mean_ratio(fields, channel: int) -> float:
    return float(np.mean(np.concatenate([
        rim_centre_ratios(f.image[channel], f.labels, background_level(f, channel)) for f in fields])))


# --- determinism -----------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    params = dict(n_fields=2, **SMALL)
    first = digests(simulate_dataset(tmp_path / "a", seed=7, **params))
    second = digests(simulate_dataset(tmp_path / "b", seed=7, **params))
    other = digests(simulate_dataset(tmp_path / "c", seed=8, **params))
    assert first == second
    assert len(first) == 2 * 2 * 2 + 2  # images + masks for 2 conditions x 2 fields, manifest, json
    images = [k for k in first if k.startswith("images/")]
    assert all(first[k] != other[k] for k in images)


def test_fields_simulated_in_parallel_processes_are_byte_identical(tmp_path):
    serial = digests(simulate_dataset(tmp_path / "serial", n_fields=3, seed=4, **SMALL))
    parallel = digests(simulate_dataset(tmp_path / "parallel", n_fields=3, seed=4, workers=2, **SMALL))
    assert serial == parallel and len(serial) == 2 * 2 * 3 + 2
    with pytest.raises(ConfigError, match="workers"):
        simulate_dataset(tmp_path / "bad", n_fields=1, workers=0, **SMALL)


def test_a_field_does_not_depend_on_how_many_fields_come_before(tmp_path):
    few = digests(simulate_dataset(tmp_path / "few", n_fields=1, seed=3, **SMALL))
    many = digests(simulate_dataset(tmp_path / "many", n_fields=3, seed=3, **SMALL))
    for name in ("images/ctrl/field_000.tif", "masks/vpa/field_000.tif"):
        assert few[name] == many[name]


# --- files -----------------------------------------------------------------------------------

def test_dataset_layout_metadata_and_manifest(tmp_path):
    out = simulate_dataset(tmp_path / "sim", n_fields=4, seed=1, fields_per_group=2, **SMALL)
    with tifffile.TiffFile(out / "images/vpa/field_001.tif") as tif:
        image = tif.asarray()
        names = [c.attrib["Name"] for c in ElementTree.fromstring(tif.ome_metadata).iter() if c.tag.endswith("Channel")]
    assert image.dtype == np.uint16 and image.shape == (3, 128, 128)
    assert names == list(CHANNEL_NAMES)
    labels = tifffile.imread(out / "masks/vpa/field_001.tif")
    assert labels.dtype == np.int32 and labels.shape == (128, 128) and labels.max() >= 1
    with open(out / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows][:2] == ["images/ctrl/field_000.tif", "images/ctrl/field_001.tif"]
    assert {r["group"] for r in rows if r["condition"] == "vpa"} == {"vpa/well_00", "vpa/well_01"}
    assert all((out / r["path"]).is_file() for r in rows)
    info = json.loads((out / "simulation.json").read_text())
    assert info["effect"]["type"] == "periphery" and info["parameters"]["psf_sigma"] == 1.2
    assert sum(f["nuclei"] for f in info["fields"]) > 0


def test_epikit_io_reads_the_dataset(tmp_path):
    from epikit.io import discover_images, read_image

    out = simulate_dataset(tmp_path / "sim", n_fields=2, seed=2, **SMALL)
    records = discover_images(out / "manifest.csv")
    assert {r.condition for r in records} == {"ctrl", "vpa"}
    assert read_image(records[0].path).channel_names == CHANNEL_NAMES


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = simulate_dataset(tmp_path / "sim", n_fields=1, seed=0, **SMALL)
    with pytest.raises(ConfigError, match="already exists"):
        simulate_dataset(out, n_fields=1, seed=0, **SMALL)
    simulate_dataset(out, n_fields=2, seed=0, overwrite=True, **SMALL)
    assert (out / "images/ctrl/field_001.tif").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_failed_simulation_leaves_nothing_behind(tmp_path):
    with pytest.raises(ConfigError, match="psf_sigma"):
        simulate_dataset(tmp_path / "sim", n_fields=1, psf_sigma=-1.0, **SMALL)
    assert list(tmp_path.iterdir()) == []


# --- ground truth ----------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_labels_are_compact_int32_one_per_nucleus(seed):
    field = simulate_field(np.random.default_rng(seed), size=(160, 160), n_nuclei=(6, 6), radius=(10, 14), clump=0.8)
    assert field.labels.dtype == np.int32
    assert set(np.unique(field.labels)) == set(range(field.n_nuclei + 1))
    assert field.n_nuclei == len(field.centres) == len(field.radii)
    assert field.params["nuclei_placed"] == field.n_nuclei  # every nucleus drawn has a label
    assert field.n_nuclei == 6  # there is room for all of them


def test_clumped_nuclei_touch_without_sharing_pixels():
    field = simulate_field(np.random.default_rng(0), size=(128, 128), n_nuclei=(12, 12), radius=(10, 12),
                           clump=1.0, squeeze=0.2)
    grown = ndi.grey_dilation(field.labels, size=3)
    touching = (field.labels > 0) & (grown != field.labels)
    assert touching.sum() > 10  # some nuclei share a border


@pytest.mark.parametrize("radius, psf_sigma", [(9, 0.8), (9, 2.5), (20, 2.0)])
def test_ground_truth_is_the_half_maximum_of_the_blurred_nucleus(radius, psf_sigma):
    """GT area matches the half-max area of the image; edges sit where intensity crosses half."""
    params = dict(size=(96, 96), n_nuclei=(1, 1), radius=(radius, radius), psf_sigma=psf_sigma, noise=False,
                  texture=0.0, rim=0.0, dome=0.0, illumination=0.0, channels=("Hoechst",), effect="none")
    for seed in range(3):
        field = simulate_field(np.random.default_rng(seed), **params)
        plane = field.image[0].astype(float)
        background = np.median(plane[field.labels == 0])
        plateau = plane.max() - background
        half = ndi.binary_fill_holes(plane - background >= plateau / 2)
        gt = field.labels > 0
        assert abs(gt.sum() / half.sum() - 1) < 0.1
        inside_edge = gt & ~ndi.binary_erosion(gt)
        outside_edge = ndi.binary_dilation(gt) & ~gt
        assert plane[inside_edge].mean() - background > 0.5 * plateau > plane[outside_edge].mean() - background


def test_fields_cut_by_the_border_and_empty_fields():
    empty = simulate_field(np.random.default_rng(0), size=(64, 64), n_nuclei=0)
    assert empty.n_nuclei == 0 and not empty.labels.any() and empty.image.shape == (3, 64, 64)
    crowded = simulate_field(np.random.default_rng(1), size=(64, 64), n_nuclei=(40, 40), radius=(10, 12))
    assert 0 < crowded.n_nuclei < 40  # no room for all: placement stops, labels stay consistent
    assert set(np.unique(crowded.labels)) == set(range(crowded.n_nuclei + 1))


# --- the planted effect ----------------------------------------------------------------------

@pytest.mark.parametrize("effect_size", [0.5, 1.0])
def test_periphery_effect_is_measurable_in_the_ground_truth_masks(effect_size):
    ctrl, vpa = paired_fields(range(4), effect_size=effect_size, **EFFECT_FIELDS)
    gain = mean_ratio(vpa, ACETYL) / mean_ratio(ctrl, ACETYL)
    # Exact before blur; blur and the distance-transform split dilute it a little (~0.87 x).
    assert 1 + 0.75 * effect_size < gain < 1 + 1.05 * effect_size


def test_periphery_effect_keeps_total_signal_and_other_channels():
    ctrl, vpa = paired_fields(range(4), **SMALL)
    for a, b in zip(ctrl, vpa):
        assert np.array_equal(a.labels, b.labels)
        # Same random stream: the unaffected channels are identical pixel for pixel.
        assert np.array_equal(a.image[:ACETYL], b.image[:ACETYL])
        totals = [ndi.sum_labels(f.image[ACETYL].astype(float) - background_level(f, ACETYL), f.labels,
                                 range(1, f.n_nuclei + 1)) for f in (a, b)]
        # Equal before blur; a brighter rim loses a little more light across the mask edge.
        assert np.allclose(totals[1] / totals[0], 0.97, atol=0.05)


def test_interior_effect_reverses_and_none_plants_nothing():
    ctrl, vpa = paired_fields(range(4), effect="interior", effect_size=0.5, **EFFECT_FIELDS)
    assert 1.37 < mean_ratio(ctrl, ACETYL) / mean_ratio(vpa, ACETYL) < 1.53
    ctrl, vpa = paired_fields(range(4), effect="none", **SMALL)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(ctrl, vpa))


def test_effect_in_written_dataset_and_unaffected_channels_equal(tmp_path):
    out = simulate_dataset(tmp_path / "sim", n_fields=3, seed=11, n_nuclei=(5, 7), size=(160, 160), radius=(12, 16))
    ratios = {}
    for condition in ("ctrl", "vpa"):
        values = {c: [] for c in range(3)}
        for image_path in sorted((out / "images" / condition).glob("*.tif")):
            image = tifffile.imread(image_path)
            labels = tifffile.imread(out / "masks" / condition / image_path.name)
            for c in range(3):
                values[c].append(rim_centre_ratios(image[c], labels, float(np.median(image[c][labels == 0]))))
        ratios[condition] = {c: np.concatenate(v).mean() for c, v in values.items()}
    assert 1.3 < ratios["vpa"][ACETYL] / ratios["ctrl"][ACETYL] < 1.6
    for channel in (0, 1):  # Hoechst, CTCF: independent fields, no planted difference
        assert abs(ratios["vpa"][channel] / ratios["ctrl"][channel] - 1) < 0.07


def test_effect_on_another_channel_and_brightness_does_not_change_ratios():
    ctrl, vpa = paired_fields(range(3), effect_channel="CTCF", **SMALL)
    assert mean_ratio(vpa, 1) / mean_ratio(ctrl, 1) > 1.3
    assert np.array_equal(ctrl[0].image[ACETYL], vpa[0].image[ACETYL])
    # Strong per-field brightness differences scale whole fields, not the rim/centre shape.
    flat = [simulate_field(np.random.default_rng(s), condition="vpa", field_brightness_sd=0.0, **SMALL)
            for s in range(6)]
    varied = [simulate_field(np.random.default_rng(s), condition="vpa", field_brightness_sd=1.0, **SMALL)
              for s in range(6)]
    factors = [f.params["field_brightness"] for f in varied]
    assert max(factors) / min(factors) > 2
    for a, b in zip(flat, varied):
        signal = [float(f.image[ACETYL][f.labels > 0].mean()) - background_level(f, ACETYL) for f in (a, b)]
        assert signal[1] / signal[0] == pytest.approx(b.params["field_brightness"], rel=0.1)
    assert abs(mean_ratio(varied, ACETYL) / mean_ratio(flat, ACETYL) - 1) < 0.05


# --- diverse settings for segmentation training ----------------------------------------------

def test_diverse_params_span_the_requested_range():
    rng = np.random.default_rng(0)
    draws = [sample_diverse_field_params(rng) for _ in range(300)]
    radii = np.array([np.mean(d["radius"]) for d in draws])
    counts = np.array([d["n_nuclei"][1] for d in draws])
    assert radii.min() < 8 and radii.max() > 32
    assert counts.min() <= 3 and counts.max() >= 100
    assert min(d["psf_sigma"] for d in draws) < 0.8 and max(d["psf_sigma"] for d in draws) > 2.5
    assert max(d["mitotic_fraction"] for d in draws) > 0.1 and max(d["illumination"] for d in draws) > 0.8
    photons = [d["photons"] for d in draws]
    assert max(photons) / min(photons) > 50


def test_diverse_fields_have_exact_labels():
    rng = np.random.default_rng(5)
    for _ in range(4):
        params = sample_diverse_field_params(rng, size=128)
        field = simulate_field(rng, **params)
        assert field.image.shape == (1, 128, 128) and field.image.dtype == np.uint16
        assert set(np.unique(field.labels)) == set(range(field.n_nuclei + 1))
        for index, box in enumerate(ndi.find_objects(field.labels), start=1):
            assert ndi.label(field.labels[box] == index)[1] == 1  # one connected region per nucleus


# --- errors and the CLI ----------------------------------------------------------------------

@pytest.mark.parametrize("params, message", [
    (dict(effect="sideways"), "effect 'sideways' is unknown"),
    (dict(effect_channel="DAPI"), "effect channel 'DAPI'"),
    (dict(radius=(20, 10)), "radius"),
    (dict(size=8), "size"),
    (dict(channels=("Hoechst", "GFP")), "channels"),
])
def test_bad_field_parameters_raise_config_error(params, message):
    with pytest.raises(ConfigError, match=message):
        simulate_field(np.random.default_rng(0), **{**SMALL, **params})


def test_cli_writes_a_dataset(tmp_path):
    from typer.testing import CliRunner

    from epikit.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["simulate", str(out), "--fields", "1", "--size", "96", "--nuclei", "2-3",
                                      "--radius", "8-10", "--seed", "4", "--effect-size", "0.8",
                                      "-p", "mitotic_fraction=0.2"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "simulation.json").read_text())
    assert info["effect"]["size"] == 0.8 and info["parameters"]["mitotic_fraction"] == 0.2
    assert info["parameters"]["n_nuclei"] == [2, 3]
    assert (out / "masks/vpa/field_000.tif").is_file()


@pytest.mark.parametrize("args", [
    ["--nuclei", "5-x"],
    ["--effect", "sideways"],
    ["--effect-channel", "DAPI"],
    ["--effect-size", "-1"],
    ["--fields", "0"],
    ["--size", "12"],
    ["-p", "bogus=1"],
    ["--preset", "sorra"],
])
def test_cli_rejects_bad_values_with_one_line(tmp_path, args):
    from typer.testing import CliRunner

    from epikit.cli import app

    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "x"), *args])
    assert result.exit_code != 0
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "x").exists()


# --- presets ---------------------------------------------------------------------------------


def test_sora_preset_writes_study_sized_fields(tmp_path):
    from skimage.measure import regionprops
    from typer.testing import CliRunner

    from epikit.cli import app

    out = tmp_path / "sora"
    result = CliRunner().invoke(app, ["simulate", str(out), "--preset", "sora", "--fields", "1",
                                      "--conditions", "ctrl", "--seed", "2"])
    assert result.exit_code == 0, result.output
    image = tifffile.imread(out / "images/ctrl/field_000.tif")
    labels = tifffile.imread(out / "masks/ctrl/field_000.tif")
    assert image.shape == (3, 2048, 2048) and image.dtype == np.uint16 and labels.shape == (2048, 2048)
    assert 4000 < int(image[0].max()) < 65535  # uses the 16-bit range without saturating
    info = json.loads((out / "simulation.json").read_text())
    assert info["preset"] == "sora" and info["parameters"]["size"] == [2048, 2048]
    # Nuclei away from the border: 250-400 px across (blurred ground truth, irregular outlines).
    inner = [p for p in regionprops(labels) if min(p.bbox[:2]) > 0 and max(p.bbox[2:]) < 2048]
    assert len(inner) >= 5 and 14 <= labels.max() <= 20
    diameters = np.array([p.equivalent_diameter_area for p in inner])
    assert diameters.min() > 235 and diameters.max() < 415, diameters


def test_sora_preset_is_deterministic_and_explicit_options_win():
    from epikit.simulate import preset_params
    from epikit.simulate.dataset import field_rng

    params = {**preset_params("sora"), "channels": ("Hoechst",)}
    first = simulate_field(field_rng(5, "vpa", 0), condition="vpa", **params)
    second = simulate_field(field_rng(5, "vpa", 0), condition="vpa", **params)
    assert np.array_equal(first.image, second.image) and np.array_equal(first.labels, second.labels)
    assert first.params["psf_sigma"] == 2.0 and first.params["photons"] == 2000.0
    with pytest.raises(ConfigError, match="unknown simulation preset 'sorra'.*sora"):
        preset_params("sorra")


def test_dataset_preset_defaults_are_overridden_by_explicit_values(tmp_path):
    out = simulate_dataset(tmp_path / "sim", n_fields=1, conditions=("ctrl",), preset="sora",
                           size=(192, 192), radius=(20.0, 24.0), n_nuclei=(2, 3), photons=500.0)
    info = json.loads((out / "simulation.json").read_text())
    assert info["parameters"]["size"] == [192, 192] and info["parameters"]["photons"] == 500.0
    assert info["parameters"]["psf_sigma"] == 2.0 and info["parameters"]["clump"] == 0.1
