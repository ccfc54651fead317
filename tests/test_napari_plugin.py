"""The napari reader of ``plugins/epikit-napari``: layer data of a real run folder, without napari.

The run is segmented and extracted for real; its maps.zarr is written with epikit's own writer
from known maps (each cell's crop mask and its Hoechst crop), so placing them back on the
nuclei can be checked against the mask and the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

epikit_napari = pytest.importorskip("epikit_napari")

from epikit.config import default_config, merge_config  # noqa: E402
from epikit.pipeline import run_pipeline  # noqa: E402
from epikit.runfolder.maps import ViewMaps, write_maps  # noqa: E402

MANIFEST = Path(epikit_napari.__file__).with_name("napari.yaml")
CLASSES = ["ctrl", "tsa", "vpa"]
TSA_SCALE = 0.5  # the reference cells' tsa maps: their vpa maps at half height


@pytest.fixture(scope="module", params=["none", "major-axis"])
def run_with_maps(request, tmp_path_factory) -> Path:
    from epikit.runfolder.crops import crops_fingerprint
    from epikit.runfolder.reader import RunFolder
    from epikit.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("napari")
    simulate_dataset(root / "sim", n_fields=2, size=(96, 96), n_nuclei=(3, 4), radius=(10.0, 12.0), seed=5)
    config = merge_config(default_config(), {
        "input": str(root / "sim" / "images"), "read": {"pixel_size_um": 0.2},
        "segment": {"segmenter": "watershed"}, "extract": {"crop_size": 24, "align": request.param}})
    run = root / "run"
    run_pipeline(config, run, progress=False, stop_after="extract")
    import pandas as pd

    cells = pd.read_parquet(run / "cells.parquet")
    crops = RunFolder(run).crops
    masks = crops.read_masks(np.arange(len(cells))).astype(np.float32)
    hoechst = crops.read(np.arange(len(cells)))[:, 0].astype(np.float32)
    # As explain writes them under the contrast policy with three classes: every cell explained
    # for vpa, and the reference's (ctrl) cells once more for tsa, with a map of their own.
    ctrl = np.flatnonzero(cells["condition"].to_numpy() == "ctrl")
    rows = np.concatenate([np.arange(len(cells)), ctrl])
    targets = np.concatenate([np.full(len(cells), CLASSES.index("vpa")), np.full(len(ctrl), CLASSES.index("tsa"))])
    views = [ViewMaps(view, np.concatenate([maps, TSA_SCALE * maps[ctrl]]), rows,
                      cells["crop_index"].to_numpy()[rows], np.zeros(len(rows), np.int64), targets,
                      {"view": view, "views": ["mask", "hoechst"], "explainer": "gradcam", "layer": "layer2",
                       "target": "contrast", "reference": "ctrl", "classes": CLASSES,
                       "cell_ids": cells["cell_id"].to_numpy()[rows].tolist(),
                       "crops_fingerprint": crops_fingerprint(run)})
             for view, maps in (("mask", masks), ("hoechst", hoechst / max(hoechst.max(), 1e-6)))]
    write_maps(run / "maps.zarr", views, {})
    return run


def test_reader_layers_of_a_run_folder(run_with_maps):
    reader = epikit_napari.napari_get_reader(str(run_with_maps))
    assert reader is not None and epikit_napari.napari_get_reader(str(run_with_maps.parent)) is None
    layers = reader(str(run_with_maps))
    kinds = [kind for _, _, kind in layers]
    assert kinds == ["image", "labels", "image", "image", "image", "image"]
    image_id = layers[1][1]["name"].removesuffix(" nuclei")
    assert image_id.startswith("ctrl/")  # the first field: a reference field, explained for tsa and vpa
    assert [kwargs["name"] for _, kwargs, _ in layers[2:]] == [
        f"{image_id} gradcam evidence for {target} ({view})" for view in ("mask", "hoechst") for target in ("tsa", "vpa")]
    # Each class's layer holds that class's maps, none overwritten by the other's.
    (tsa_map, _, _), (vpa_map, _, _) = layers[2:4]
    inside = ~np.isnan(vpa_map)
    np.testing.assert_allclose(tsa_map[inside], TSA_SCALE * vpa_map[inside], atol=1e-3)
    layers = [layer for layer in layers if "evidence for tsa" not in str(layer[1]["name"])]
    (image, image_kwargs, _), (labels, label_kwargs, _) = layers[:2]
    assert image.shape == (3, 96, 96) and image_kwargs["channel_axis"] == 0
    assert image_kwargs["name"][0].endswith("Hoechst") and image_kwargs["scale"] == (0.2, 0.2)
    features = label_kwargs["features"]
    assert set(features["index"]) <= set(np.unique(labels)) - {0} and "area_um2" in features
    mask_map, hoechst_map = layers[2][0], layers[3][0]
    mapped = np.isin(labels, features["index"].to_numpy())
    assert np.isnan(mask_map[~mapped]).all() and not np.isnan(mask_map[mapped]).any()
    # The crop mask placed back covers its nucleus: ~1 inside (bilinear at the rim).
    assert np.mean(mask_map[mapped] > 0.5) > 0.97
    # The Hoechst crop placed back follows the image's Hoechst inside the nuclei.
    assert np.corrcoef(hoechst_map[mapped], image[0][mapped])[0, 1] > 0.9


def test_reader_opens_the_field_of_a_mask_file(run_with_maps):
    mask = sorted((run_with_maps / "masks").rglob("*.tif"))[-1]
    layers = epikit_napari.napari_get_reader(str(mask))(str(mask))
    image_id = mask.relative_to(run_with_maps / "masks").with_suffix("").as_posix()
    assert layers[1][1]["name"] == f"{image_id} nuclei"
    assert set(layers[1][1]["features"]["condition"]) == {image_id.split("/")[0]}


def test_manifest_is_a_valid_npe2_manifest():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "epikit-napari"
    assert [r.command for r in manifest.contributions.readers] == ["epikit-napari.get_reader"]
    manifest.validate_imports()
