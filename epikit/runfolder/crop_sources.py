"""A run folder's crops and nucleus masks as training crop sources (:mod:`epikit.training.crop_source`).

Both stay in memory when they take at most the budget (``crops_memory_mb``) as float32, and are
read from ``crops.zarr`` pool by pool otherwise: the train stage's crops and the biomarkers
stage's mask-only control never hold more than the budget, however many cells a study has.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from epikit.runfolder.crops import read_masks
from epikit.training.crop_source import CropSource, StoredCrops, TensorCrops, pool_size


def crop_source(dataset: Any, channel_index: list[int], budget_mb: float) -> CropSource:
    """The crops of a :class:`~epikit.runfolder.cells.CellDataset` (channels ``channel_index``).

    In memory (:class:`TensorCrops`, float32) when they take at most ``budget_mb`` MiB,
    else :class:`StoredCrops` read from ``crops.zarr`` in pools of that size.
    """
    import torch

    n, size = len(dataset), dataset.crop_size
    shape = (n, len(channel_index), size, size)
    cell_bytes = 4 * math.prod(shape[1:])
    selected = np.asarray(channel_index)
    if n * cell_bytes <= budget_mb * 2**20:
        return TensorCrops(torch.from_numpy(dataset.load_crops(np.arange(n))[:, selected]))
    every = list(channel_index) == list(range(len(dataset.channel_names)))
    return StoredCrops(
        read=dataset.load_crops if every else (lambda rows: dataset.load_crops(rows)[:, selected]),
        chunk=dataset.crop_chunks(), shape=shape, pool_cells=pool_size(budget_mb, cell_bytes),
        key=(dataset.content_key(), list(channel_index), budget_mb),
    )


def mask_source(dataset: Any, budget_mb: float) -> CropSource:
    """The nucleus masks of a dataset as 1-channel float crops (inside = 1), like :func:`crop_source`."""
    import torch

    n, size = len(dataset), dataset.crop_size
    crop_index = dataset.table["crop_index"].to_numpy(np.int64)

    def read(rows: np.ndarray) -> np.ndarray:
        return read_masks(dataset.store_path, crop_index[rows])[:, None].astype(np.float32)

    cell_bytes = 4 * size * size
    if n * cell_bytes <= budget_mb * 2**20:
        return TensorCrops(torch.from_numpy(read(np.arange(n))))
    return StoredCrops(read=read, chunk=dataset.crop_chunks(), shape=(n, 1, size, size),
                       pool_cells=pool_size(budget_mb, cell_bytes),
                       key=(dataset.content_key(), "masks", budget_mb))
