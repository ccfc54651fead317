"""``crops.zarr`` read without torch: nucleus masks by row and the :class:`CropStore` the report uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import DataError
from epikit.runfolder.rows import read_rows


def read_masks(crops_path: Path, crop_index: np.ndarray) -> np.ndarray:
    """Nucleus masks (N, S, S) bool of crops.zarr rows ``crop_index`` (in that order)."""
    import zarr

    group = zarr.open_group(str(crops_path), mode="r")
    if "masks" not in dict(group.arrays()):
        raise DataError(f"{crops_path} has no 'masks' array; re-run extraction")
    return read_rows(group["masks"], crop_index) > 0


@dataclass
class CropStore:
    """``crops.zarr`` read without torch: crops (N,C,S,S), masks (N,S,S), channel names, attrs."""

    path: Path
    crops: Any
    has_masks: bool
    channel_names: list[str]
    attrs: dict[str, Any]

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Crops at rows ``indices`` (in that order) as float32 (N,C,S,S)."""
        return read_rows(self.crops, indices, dtype=np.float32)

    def read_masks(self, indices: np.ndarray | list[int]) -> np.ndarray | None:
        """Nucleus masks at rows ``indices`` as bool (N,S,S); ``None`` without a masks array."""
        return read_masks(self.path, np.asarray(indices, dtype=np.int64)) if self.has_masks else None
