"""Segmenters: the contract every registered one keeps, watershed, cellpose, label helpers,
and ``segment_images`` / ``epikit segment``.

The contract test is parametrised over ``epikit.list_segmenters()``. Networks that need
weights run with tiny networks built here: cellpose through its own ``CPSAM`` class with a
1-block, 16-wide ViT encoder, SAM through the ``epikit-sam`` builders; ``maskrcnn`` uses
its shipped weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import epikit
from epikit.analysis.segmentation_metrics import evaluate_segmentation
from epikit.errors import ConfigError, EpikitError, InputError, ModelError, PluginError
from epikit.registry import get_entry, get_segmenter
from epikit.segmenters.labels import (
    fill_label_holes,
    filter_by_area,
    finalize_labels,
    nuclear_plane,
    relabel_sequential,
)
from epikit.segmenters.watershed import WatershedSegmenter

SHAPE = (96, 128)  # not square: catches transposed outputs
HAS_CELLPOSE = importlib.util.find_spec("cellpose") is not None


def assert_label_contract(labels: np.ndarray, shape: tuple[int, int]) -> int:
    """int32, the image's shape, 0 = background, labels 1..n without gaps; returns n."""
    assert isinstance(labels, np.ndarray)
    assert labels.dtype == np.int32
    assert labels.shape == shape
    values = np.unique(labels)
    n = int(values.max()) if values.size else 0
    assert values.min() >= 0
    assert set(values.tolist()) | {0} == set(range(n + 1)), "labels must be 1..n without gaps"
    return n


def simulated(seed: int, **params):
    from epikit.simulate import simulate_field

    field = simulate_field(np.random.default_rng(seed), **params)
    return field.image.astype(np.float32), field.labels


@pytest.fixture(scope="module")
def small_field():
    """A 3-channel (Hoechst, CTCF, H3K27ac) simulated 96 x 128 field with a few nuclei."""
    return simulated(1, size=SHAPE, n_nuclei=(4, 6), radius=(8.0, 12.0))


# --- a tiny Cellpose-SAM network ---------------------------------------------------------

def disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


@pytest.fixture
def tiny_cellpose(monkeypatch, tmp_path):
    """Make cellpose build a 1-block, 16-wide ViT; return a function saving its weights.

    cellpose 4 always builds ``CPSAM`` on ``segment_anything.sam_model_registry["vit_l"]``;
    pointing that entry at a tiny encoder for the test keeps cellpose's own network class,
    loader, tiling, dynamics and mask code. ``grid=True`` sets the read-out layer by hand so
    that every 8 x 8 patch predicts "cell" with flows pointing to the patch centre: the
    exact answer is then a grid of 8 x 8 masks.
    """
    pytest.importorskip("cellpose")
    import segment_anything
    import torch
    from segment_anything.build_sam import _build_sam

    def tiny_vit(checkpoint=None):
        return _build_sam(encoder_embed_dim=16, encoder_depth=1, encoder_num_heads=1,
                          encoder_global_attn_indexes=[], checkpoint=checkpoint)

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_l", tiny_vit)
    from cellpose.vit import CPSAM

    def save(grid: bool = False) -> str:
        torch.manual_seed(0)
        net = CPSAM(dtype=torch.float32)
        if grid:
            with torch.no_grad():
                rows = torch.arange(net.ps, dtype=torch.float32)[:, None].expand(net.ps, net.ps)
                centre = (net.ps - 1) / 2
                bias = torch.stack([centre - rows, centre - rows.T, torch.full_like(rows, 5.0)])
                net.out.weight.zero_()
                net.out.bias.copy_(bias.reshape(-1))
        path = tmp_path / ("grid.pt" if grid else "random.pt")
        torch.save(net.state_dict(), path)
        return str(path)

    return save


# --- the contract, for every registered segmenter ----------------------------------------

TINY_SAM = {
    "encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
    "encoder_global_attn_indexes": [0], "image_size": 128, "patch_size": 16, "window_size": 4,
    "prompt_embed_dim": 32, "mask_in_chans": 4, "decoder_depth": 1, "decoder_mlp_dim": 64,
    "decoder_num_heads": 2, "iou_head_depth": 2, "iou_head_hidden_dim": 32,
}


def cheap_segmenter(name: str, request: pytest.FixtureRequest):
    """Build segmenter ``name`` as cheaply as possible, or skip when it cannot run here."""
    if name == "cellpose":
        weights = request.getfixturevalue("tiny_cellpose")(grid=True)
        return get_segmenter(name, pretrained_model=weights, precision="fp32")
    if name == "sam":
        import torch
        from epikit_sam.models import SamArchitecture, build_sam

        path = request.getfixturevalue("tmp_path") / "tiny_sam.pth"
        torch.manual_seed(0)
        torch.save(build_sam(SamArchitecture.from_dict(TINY_SAM)).state_dict(), path)
        return get_segmenter(name, checkpoint=str(path), model_type="custom",
                             architecture=TINY_SAM, points_per_side=4)
    try:
        return get_segmenter(name)
    except (PluginError, ModelError) as error:
        if get_entry("segmenter", name).distribution == "epikit":
            raise  # built-ins must work out of the box (maskrcnn ships its weights)
        pytest.skip(f"{name} cannot run here: {error}")


@pytest.mark.parametrize("name", epikit.list_segmenters())
def test_contract_on_a_field_with_nuclei(name, request, small_field):
    segmenter = cheap_segmenter(name, request)
    image, _ = small_field
    assert_label_contract(segmenter.segment(image, nuclear_channel=0), SHAPE)


@pytest.mark.parametrize("name", epikit.list_segmenters())
def test_contract_on_empty_nan_and_constant_fields(name, request):
    segmenter = cheap_segmenter(name, request)
    blank = np.zeros((3, *SHAPE), dtype=np.float32)
    assert assert_label_contract(segmenter.segment(blank), SHAPE) == 0
    for value in (np.nan, 700.0):
        image = np.full((3, *SHAPE), value, dtype=np.float32)
        try:
            labels = segmenter.segment(image, nuclear_channel=0)
        except EpikitError as error:
            assert str(error) and "\n" not in str(error)
        else:
            assert assert_label_contract(labels, SHAPE) == 0, f"{name} found nuclei in {value}"


# --- watershed ---------------------------------------------------------------------------

def test_watershed_finds_simulated_nuclei_of_an_unseen_seed():
    segmenter = WatershedSegmenter()
    scores = []
    for seed in (901, 902, 903):
        image, truth = simulated(seed, size=(256, 256), n_nuclei=(5, 8),
                                 condition="vpa" if seed % 2 else "ctrl")
        labels = segmenter.segment(image)
        assert_label_contract(labels, truth.shape)
        scores.append(evaluate_segmentation(labels, truth)["ap_50"])
    assert np.mean(scores) >= 0.75, scores


def test_watershed_splits_touching_nuclei_and_fills_holes():
    shape = (80, 100)
    truth = np.zeros(shape, dtype=np.int32)
    truth[disk(shape, 40, 30, 14)] = 1
    truth[disk(shape, 40, 56, 14) & (truth == 0)] = 2  # touches nucleus 1
    truth[disk(shape, 15, 85, 8)] = 3
    plane = (truth > 0) * 1000.0
    plane[disk(shape, 40, 30, 4)] = 200.0  # a dark nucleolus: a hole after thresholding
    image = np.stack([plane + 100, np.full(shape, 50.0), np.zeros(shape)]).astype(np.float32)
    labels = WatershedSegmenter(sigma=0).segment(image)
    assert assert_label_contract(labels, shape) == 3
    result = evaluate_segmentation(labels, truth)
    assert result["tp"] == 3 and result["mean_matched_iou"] > 0.9
    assert labels[40, 30] != 0, "the nucleolus hole is filled"


def test_watershed_parameters():
    image, truth = simulated(904, size=(128, 128), n_nuclei=(3, 4), radius=(10.0, 12.0))
    default = WatershedSegmenter().segment(image)
    assert default.max() >= 2
    assert WatershedSegmenter(min_area=10_000).segment(image).max() == 0
    assert WatershedSegmenter(max_area=10).segment(image).max() == 0
    above_everything = float(image[0].max()) + 1
    assert WatershedSegmenter(threshold=above_everything).segment(image).max() == 0
    assert WatershedSegmenter(threshold="otsu", diameter=22).segment(image).max() >= 2
    # Nuclei in the third channel are found when that channel is named.
    moved = image[[1, 2, 0]]
    assert np.array_equal(WatershedSegmenter().segment(moved, nuclear_channel=2), default)
    for bad in ({"threshold": "magic"}, {"sigma": -1}, {"diameter": 0},
                {"min_area": 50, "max_area": 10}):
        with pytest.raises(ConfigError):
            WatershedSegmenter(**bad)


def test_watershed_on_noise_and_nan():
    rng = np.random.default_rng(0)
    noise = rng.normal(100, 10, (3, 128, 128)).astype(np.float32)
    assert WatershedSegmenter().segment(noise).max() == 0
    empty, truth = simulated(905, size=(128, 128), n_nuclei=0)
    assert truth.max() == 0 and WatershedSegmenter().segment(empty).max() == 0
    noise[0, 5, 7] = np.nan
    with pytest.raises(InputError, match="NaN"):
        WatershedSegmenter().segment(noise)


# --- label helpers -----------------------------------------------------------------------

def test_relabel_and_area_filter():
    labels = np.array([[0, 7, 7], [3, 3, 0], [9, 0, 0]])
    assert relabel_sequential(labels).tolist() == [[0, 2, 2], [1, 1, 0], [3, 0, 0]]
    assert relabel_sequential(labels).dtype == np.int32
    assert filter_by_area(labels, min_area=2).tolist() == [[0, 7, 7], [3, 3, 0], [0, 0, 0]]
    assert filter_by_area(labels, max_area=1).tolist() == [[0, 0, 0], [0, 0, 0], [9, 0, 0]]
    assert relabel_sequential(np.zeros((2, 2), np.int64)).dtype == np.int32


def test_holes_go_to_the_nucleus_that_surrounds_them_most():
    labels = np.zeros((9, 12), dtype=np.int32)
    labels[1:8, 1:8] = 1
    labels[1:8, 8:11] = 2
    labels[3:6, 2:4] = 0  # a hole inside nucleus 1
    labels[3:5, 6:9] = 0  # a hole on the border of 1 and 2: 8 neighbours in 1, 6 in 2
    filled = fill_label_holes(labels)
    assert (filled[3:6, 2:4] == 1).all()
    assert (filled[3:5, 6:9] == 1).all()
    assert (filled[labels > 0] == labels[labels > 0]).all()
    open_bay = np.zeros((5, 5), dtype=np.int32)
    open_bay[1:4, 0:4] = 1
    open_bay[2, 0:3] = 0  # open to the image border: not a hole
    assert np.array_equal(finalize_labels(open_bay), open_bay)


def test_nuclear_plane_rejects_bad_input():
    assert nuclear_plane(np.ones((4, 5))).shape == (4, 5)
    assert nuclear_plane(np.ones((2, 4, 5), np.uint16), 1).dtype == np.float32
    with pytest.raises(InputError, match=r"\(C, Y, X\)"):
        nuclear_plane(np.ones((1, 2, 3, 4)))
    with pytest.raises(InputError, match="does not exist"):
        nuclear_plane(np.ones((2, 4, 5)), 2)
    with pytest.raises(InputError, match="NaN"):
        nuclear_plane(np.full((1, 4, 5), np.inf))


# --- cellpose ----------------------------------------------------------------------------

@pytest.mark.skipif(not HAS_CELLPOSE, reason="optional dependency cellpose is not installed")
def test_cellpose_runs_the_real_pipeline_with_a_hand_built_network(tiny_cellpose, small_field):
    image, _ = small_field
    weights = tiny_cellpose(grid=True)
    labels = get_segmenter("cellpose", pretrained_model=weights, precision="fp32").segment(image)
    # Every 8 x 8 patch is one cell: a 12 x 16 grid of 64-pixel masks.
    assert assert_label_contract(labels, SHAPE) == (SHAPE[0] // 8) * (SHAPE[1] // 8)
    assert (np.bincount(labels.ravel())[1:] == 64).all()
    assert len(np.unique(labels[:8, :8])) == 1 and labels[0, 0] != labels[0, 8]
    # Parameters reach cellpose: the diameter rescales (30 / 60: 16 x 16 cells), the
    # cell-probability threshold and the size filter remove everything.
    coarse = get_segmenter("cellpose", pretrained_model=weights, precision="fp32", diameter=60)
    assert (np.bincount(coarse.segment(image).ravel())[1:] == 256).all()
    for params in ({"cellprob_threshold": 6.0}, {"min_size": 100, "flow_threshold": 0.0}):
        segmenter = get_segmenter("cellpose", pretrained_model=weights, precision="fp32", **params)
        assert segmenter.segment(image).max() == 0


@pytest.mark.skipif(not HAS_CELLPOSE, reason="optional dependency cellpose is not installed")
def test_cellpose_weights_errors(tiny_cellpose, tmp_path, monkeypatch):
    import cellpose.models
    import cellpose.utils
    import torch

    def offline(url, *args, **kwargs):
        raise OSError(f"cannot reach {url}: network is unreachable")

    # Simulate an offline machine with an empty model folder (never download in tests).
    monkeypatch.setattr(cellpose.utils, "download_url_to_file", offline)
    monkeypatch.setattr(cellpose.models, "MODEL_DIR", tmp_path / "models")
    with pytest.raises(ModelError, match="CELLPOSE_LOCAL_MODELS_PATH") as caught:
        get_segmenter("cellpose", pretrained_model="cpsam")
    assert "pretrained_model=" in str(caught.value)
    with pytest.raises(ConfigError, match="neither a file nor a known model"):
        get_segmenter("cellpose", pretrained_model="nuclei-v9")
    cp3_style = tmp_path / "cp3.pt"
    torch.save({"downsample.weight": torch.zeros(2)}, cp3_style)
    with pytest.raises(ModelError, match="not a loadable Cellpose 4 weights file"):
        get_segmenter("cellpose", pretrained_model=str(cp3_style))
    with pytest.raises(ConfigError, match="precision"):
        get_segmenter("cellpose", precision="fp8")


def test_cellpose_missing_gives_an_install_hint(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cellpose", None)  # `import cellpose` now fails
    monkeypatch.delitem(sys.modules, "cellpose.models", raising=False)
    assert "cellpose" in epikit.list_segmenters()
    with pytest.raises(PluginError, match=r"pip install 'epikit\[cellpose\]'"):
        get_segmenter("cellpose")


# --- segment_images and the CLI ----------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from epikit.simulate import simulate_dataset

    out = tmp_path_factory.mktemp("sim") / "data"
    simulate_dataset(out, n_fields=2, size=(128, 128), n_nuclei=(3, 5), radius=(9.0, 12.0), seed=5)
    return out


def test_segment_command_writes_masks_and_counts(dataset, tmp_path):
    import pandas as pd

    from epikit.cli import app
    from epikit.io import read_labels

    out = tmp_path / "run"
    args = ["segment", str(dataset / "images"), "--segmenter", "watershed", "-p", "sigma=1.0",
            "--out", str(out), "--channels", "Hoechst,CTCF,H3K27ac", "--nuclear-channel", "Hoechst"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "segmentation.csv")
    assert len(table) == 4 and set(table["condition"]) == {"ctrl", "vpa"}
    assert f"{table['n_nuclei'].sum()} nuclei in 4 image(s)" in result.output
    for row in table.itertuples():
        labels = read_labels(out / "masks" / f"{row.image_id}.tif")
        assert assert_label_contract(labels, (128, 128)) == row.n_nuclei
    assert not table["reused"].any()
    # The masks score well against the simulator's ground truth.
    json_file = tmp_path / "scores.json"
    scores = CliRunner().invoke(app, ["eval-segmentation", str(out), str(dataset), "--json", str(json_file)])
    assert scores.exit_code == 0, scores.output
    assert json.loads(json_file.read_text())["overall"]["ap_50"] >= 0.75
    # A second run reuses the masks instead of segmenting again ...
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0
    assert pd.read_csv(out / "segmentation.csv")["reused"].all()
    recorded = json.loads((out / "segmentation.json").read_text())
    assert recorded["settings"]["params"] == {"sigma": 1.0}
    assert recorded["provenance"]["distribution"] == "epikit"
    # ... but not masks made with other settings, unless told to overwrite them.
    other = [*args[:5], "sigma=2.0", *args[6:]]
    refused = CliRunner().invoke(app, other)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    replaced = CliRunner().invoke(app, [*other, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert not pd.read_csv(out / "segmentation.csv")["reused"].any()


def test_segment_images_library_call(dataset, tmp_path):
    from epikit.io import discover_images
    from epikit.segmentation import segment_images, summarise_counts

    records = discover_images(dataset / "images")
    table = segment_images(records, WatershedSegmenter(), tmp_path, progress=False)
    from epikit.io import read_labels

    assert table["image_id"].tolist() == [r.image_id for r in records]
    for row in table.itertuples():
        assert read_labels(row.mask).max() == row.n_nuclei
    summary = summarise_counts(table)
    assert summary["nuclei"] == table["n_nuclei"].sum() > 0
    assert set(summary["per_condition"]) == {"ctrl", "vpa"}
    (tmp_path / "masks" / "ctrl").rename(tmp_path / "gone")
    redo = segment_images(records, WatershedSegmenter(), tmp_path, progress=False)
    assert redo["reused"].tolist() == [False, False, True, True]


def test_segment_errors_name_the_file(tmp_path):
    import tifffile

    from epikit.cli import app
    from epikit.io import discover_images
    from epikit.segmentation import segment_images

    folder = tmp_path / "in" / "ctrl"
    folder.mkdir(parents=True)
    image = np.full((2, 32, 32), 10.0, dtype=np.float32)
    image[0, 4, 4] = np.nan
    tifffile.imwrite(folder / "bad.tif", image)
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "in"), "-s", "watershed",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "bad.tif" in result.output and "NaN" in result.output
    assert not (tmp_path / "out" / "masks" / "ctrl" / "bad.tif").exists()
    unknown = CliRunner().invoke(app, ["segment", str(tmp_path / "in"), "-s", "watershd",
                                       "--out", str(tmp_path / "out")])
    assert unknown.exit_code == 2 and "did you mean 'watershed'" in unknown.output
    bad_param = CliRunner().invoke(app, ["segment", str(tmp_path / "in"), "-s", "watershed",
                                         "-p", "sigmaa=2", "--out", str(tmp_path / "out")])
    assert bad_param.exit_code == 2 and "accepted parameters" in bad_param.output

    class FloatLabels:
        def segment(self, image, nuclear_channel=0):
            return np.zeros(image.shape[1:], dtype=np.float32)

    image[0, 4, 4] = 1.0
    tifffile.imwrite(folder / "bad.tif", image)
    records = discover_images(tmp_path / "in", min_conditions=1)
    with pytest.raises(ModelError, match="FloatLabels"):
        segment_images(records, FloatLabels(), tmp_path / "out", progress=False)
    with pytest.raises(ConfigError, match="nuclear channel"):
        segment_images(records, WatershedSegmenter(), tmp_path / "out", nuclear_channel="DAPI",
                       progress=False)


def test_segment_stage_resumes_only_masks_of_its_settings(dataset, tmp_path):
    """The library stage owns the resume rules the CLI used to hold."""
    from epikit.io import discover_images, read_json
    from epikit.options import SegmentOptions
    from epikit.segmentation import run

    records = tuple(discover_images(dataset / "images"))
    options = SegmentOptions(segmenter="watershed", params={"sigma": 1.0}, images=records)
    first = run(tmp_path, options, progress=False)
    assert read_json(tmp_path / "metrics.json")["segmentation"] == first
    assert read_json(tmp_path / "segmentation.json")["settings"] == {
        "segmenter": "watershed", "params": {"sigma": 1.0}, "nuclear_channel": "0"}
    (tmp_path / "masks" / f"{records[0].image_id}.tif").unlink()  # as if interrupted there
    assert run(tmp_path, options, progress=False) == first
    table = pd.read_csv(tmp_path / "segmentation.csv")
    assert table["reused"].tolist() == [False] + [True] * (len(records) - 1)
    other = SegmentOptions(segmenter="watershed", params={"sigma": 2.0}, images=records)
    with pytest.raises(ConfigError, match="overwrite"):
        run(tmp_path, other, progress=False)
    run(tmp_path, dataclasses.replace(other, overwrite=True), progress=False)
    assert not pd.read_csv(tmp_path / "segmentation.csv")["reused"].any()
