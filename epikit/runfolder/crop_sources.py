"""A run folder's crops and nucleus masks as training crop sources (:mod:`epikit.training.crop_source`).

Both stay in memory when they take at most the budget (``crops_memory_mb``) as float32, and are
read from ``crops.zarr`` pool by pool otherwise: the train stage's crops and the biomarkers
stage's mask-only control never hold more than the budget, however many cells a study has.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from epikit.runfolder.crops import read_masks
from epikit.training.crop_source import CropSource, StoredCrops, TensorCrops, pool_size


def crop_source(dataset: Any, budget_mb: float) -> CropSource:
    """The crops of a :class:`~epikit.runfolder.cells.CellDataset`, in its channels."""
    shape = (len(dataset), len(dataset.channel_names), dataset.crop_size, dataset.crop_size)
    return _within_budget(dataset, dataset.load_crops, shape, dataset.content_key(), budget_mb)


def mask_source(dataset: Any, budget_mb: float) -> CropSource:
    """The nucleus masks of a dataset as 1-channel float crops (inside = 1)."""
    crop_index = dataset.table["crop_index"].to_numpy(np.int64)

    def read(rows: np.ndarray) -> np.ndarray:
        return read_masks(dataset.store_path, crop_index[rows])[:, None].astype(np.float32)

    shape = (len(dataset), 1, dataset.crop_size, dataset.crop_size)
    return _within_budget(dataset, read, shape, (dataset.content_key(), "masks"), budget_mb)


def _within_budget(dataset: Any, read: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int, int, int],
                   key: Any, budget_mb: float) -> CropSource:
    """:class:`TensorCrops` of everything ``read`` gives when it fits ``budget_mb`` MiB, else
    :class:`StoredCrops` reading pools of that size."""
    import torch

    cell_bytes = 4 * math.prod(shape[1:])
    if shape[0] * cell_bytes <= budget_mb * 2**20:
        return TensorCrops(torch.from_numpy(read(np.arange(shape[0]))))
    return StoredCrops(read=read, chunk=dataset.crop_chunks(), shape=shape,
                       pool_cells=pool_size(budget_mb, cell_bytes), key=(key, budget_mb))
