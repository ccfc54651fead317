"""``crops.zarr`` read without torch: nucleus masks by row and the :class:`CropStore` the report uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import DataError
from epikit.runfolder.layout import CELLS, CROPS
from epikit.runfolder.rows import read_rows


def read_masks(crops_path: Path, crop_index: np.ndarray) -> np.ndarray:
    """Nucleus masks (N, S, S) bool of crops.zarr rows ``crop_index`` (in that order)."""
    import zarr

    group = zarr.open_group(str(crops_path), mode="r")
    if "masks" not in dict(group.arrays()):
        raise DataError(f"{crops_path} has no 'masks' array; re-run extraction")
    return read_rows(group["masks"], crop_index) > 0


#: The crops.zarr attribute holding :func:`content_hash`, written once when extraction finishes.
CONTENT_HASH_ATTR = "content_hash"


def content_hash(crops_path: str | Path) -> str:
    """Hash of the content of a crops.zarr store: its crops and masks, read in slices."""
    import zarr

    from epikit.config import section_hash

    arrays = dict(zarr.open_group(str(crops_path), mode="r").arrays())
    return section_hash(*(arrays[name] for name in ("crops", "masks") if name in arrays))


def crops_fingerprint(run_dir: str | Path) -> str:
    """Fingerprint of the cells a run folder's maps are made from: the cell ids and crop rows of
    ``cells.parquet`` and the content of ``crops.zarr`` (crops and masks).

    The content's hash is stored in the store's attrs when extraction writes it
    (:data:`CONTENT_HASH_ATTR`), so reading the fingerprint reads two columns, not every crop;
    a store written before that is hashed in slices. A re-run extraction (other
    ``--min-area``, crop size, normalisation...) changes it.
    """
    import pandas as pd
    import zarr

    from epikit.config import section_hash

    run_dir = Path(run_dir)
    table = pd.read_parquet(run_dir / CELLS, columns=["cell_id", "crop_index"])
    group = zarr.open_group(str(run_dir / CROPS), mode="r")
    ids, rows = table["cell_id"].astype(str).tolist(), table["crop_index"].to_numpy(np.int64)
    stored = group.attrs.get(CONTENT_HASH_ATTR)
    if stored is not None:
        return section_hash(ids, rows, str(stored))
    arrays = dict(group.arrays())
    return section_hash(ids, rows, *(arrays[name] for name in ("crops", "masks") if name in arrays))


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
