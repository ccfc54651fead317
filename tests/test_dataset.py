"""CellDataset over an extracted run: items, views, subsets, batch reads, workers, tables."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from epikit.runfolder.cells import CellDataset
from epikit.errors import ConfigError, InputError
from epikit.extraction import extract_cells
from epikit.runfolder.layout import CROPS
from epikit.io import discover_images
from epikit.simulate import simulate_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    data = simulate_dataset(root / "data", n_fields=2, size=160, n_nuclei=(5, 7), radius=(10.0, 14.0), seed=5)
    out = root / "run"
    extract_cells(discover_images(data / "images"), data / "masks", out, crop_size=24)
    return out


def _stored(run: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(run / CROPS), mode="r")["crops"][:]).astype(np.float32)


def test_items_labels_and_groups(run: Path) -> None:
    data = CellDataset(run)
    stored = _stored(run)
    assert len(data) == len(stored) > 10
    assert data.classes == ["ctrl", "vpa"] and data.channel_names == ["Hoechst", "CTCF", "H3K27ac"]
    crop, label = data[3]
    assert crop.dtype == torch.float32 and crop.shape == (3, 24, 24)
    np.testing.assert_array_equal(crop.numpy(), stored[data.table["crop_index"][3]])
    assert label == data.classes.index(data.table["condition"][3])
    np.testing.assert_array_equal(data.labels, [data.classes.index(c) for c in data.table["condition"]])
    assert list(data.groups) == list(data.table["group"])
    assert data[-1][0].shape == (3, 24, 24)
    with pytest.raises(IndexError):
        data[len(data)]


def test_channel_views_and_unknown_channel(run: Path) -> None:
    stored = _stored(run)
    view = CellDataset(run, channels=["H3K27ac"])
    assert view[0][0].shape == (1, 24, 24)
    np.testing.assert_array_equal(view[0][0].numpy()[0], stored[0, 2])
    reordered = CellDataset(run, channels=["H3K27ac", "Hoechst"])
    np.testing.assert_array_equal(reordered.load_crops([0])[0], stored[0, [2, 0]])
    with pytest.raises(ConfigError, match="unknown channel.*'H3K9me3'.*available: Hoechst, CTCF, H3K27ac"):
        CellDataset(run, channels=["H3K9me3"])


def test_subset_keeps_the_class_numbering(run: Path) -> None:
    full = CellDataset(run)
    vpa_rows = np.flatnonzero(full.table["condition"] == "vpa")
    subset = CellDataset(run, indices=vpa_rows[:3], transform=lambda x: x * 2)
    assert subset.classes == full.classes and set(subset.labels) == {1}
    crop, label = subset[1]
    np.testing.assert_allclose(crop.numpy(), full[int(vpa_rows[1])][0].numpy() * 2)
    assert label == 1
    with pytest.raises(ConfigError, match="indices"):
        CellDataset(run, indices=[len(full)])


def test_load_crops_in_any_order(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = CellDataset(run, channels=["CTCF", "H3K27ac"])
    everything = data.load_crops()
    assert everything.shape == (len(data), 2, 24, 24) and everything.dtype == np.float32
    for i in (0, 5, len(data) - 1):
        np.testing.assert_array_equal(everything[i], data[i][0].numpy())
    order = np.random.default_rng(0).permutation(len(data))[:9]
    monkeypatch.setattr("epikit.runfolder.cells.READ_BLOCK_BYTES", 1)  # one chunk per request
    np.testing.assert_array_equal(data.load_crops(order), everything[order])
    assert data.load_crops([]).shape == (0, 2, 24, 24)


def test_pickles_into_dataloader_workers(run: Path) -> None:
    data = CellDataset(run, channels=["H3K27ac"])
    data[0]  # opens the store in this process; the pickle must not carry it
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[2][0].numpy(), data[2][0].numpy())
    batches = list(DataLoader(data, batch_size=8, num_workers=2))
    crops = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    np.testing.assert_array_equal(crops.numpy(), data.load_crops())
    np.testing.assert_array_equal(labels.numpy(), data.labels)


def test_to_pandas_is_a_copy(run: Path) -> None:
    data = CellDataset(run)
    frame = data.to_pandas()
    assert len(frame) == len(data) and "H3K27ac_shell_1_share" in frame.columns
    frame.loc[0, "area"] = -1
    assert data.table.loc[0, "area"] != -1


def test_to_anndata(run: Path) -> None:
    pytest.importorskip("anndata")
    data = CellDataset(run)
    adata = data.to_anndata()
    features = data.feature_columns()
    assert adata.shape == (len(data), len(features))
    assert list(adata.var_names) == features and "area" in features and "H3K27ac_dshell_5_mean" in features
    assert list(adata.obs_names) == list(data.table["cell_id"])
    assert {"condition", "group", "image_id", "crop_index"} <= set(adata.obs.columns)
    np.testing.assert_allclose(adata.X[:, features.index("CTCF_mean")], data.table["CTCF_mean"], rtol=1e-6)
    assert adata.uns["epikit"]["crop_size"] == 24


def test_missing_run_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="epikit extract"):
        CellDataset(tmp_path)


def test_chunk_runs_group_neighbouring_chunks_up_to_a_length() -> None:
    from epikit.runfolder.cells import chunk_runs

    assert chunk_runs(np.array([0, 1, 2, 5, 6, 9]), 2) == [(0, 1), (2, 2), (5, 6), (9, 9)]
    assert chunk_runs(np.array([3]), 8) == [(3, 3)]
    assert chunk_runs(np.array([], dtype=np.int64), 8) == []
