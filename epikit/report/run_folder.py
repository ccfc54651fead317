"""Read-only, lazy access to the artefacts of a run folder for the report.

Each artefact is loaded on first use and cached; one that is missing reads as ``None``
(or an empty dict for JSON files), so every report section can say "not available"
instead of failing. The layout is the run-folder contract of ``DESIGN.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import InputError


def _read_json_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); re-run the stage that writes it") from error
    return data if isinstance(data, dict) else {"value": data}


def _string_list(value: Any) -> list[str] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


@dataclass
class CropStore:
    """``crops.zarr``: crops (N,C,S,S), nucleus masks (N,S,S) and channel names."""

    crops: Any
    masks: Any | None
    channel_names: list[str]
    scale: float | None
    offset: float | None
    attrs: dict[str, Any]

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Crops at ``indices`` as float32 (N,C,S,S), scaled back when stored as integers."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros((0, *self.crops.shape[1:]), dtype=np.float32)
        order = np.argsort(indices)
        data = np.asarray(self.crops.get_orthogonal_selection((indices[order],)), dtype=np.float32)
        data = data[np.argsort(order)]
        if self.scale is not None:
            data = data * np.float32(self.scale)
        if self.offset is not None:
            data = data + np.float32(self.offset)
        return data

    def read_masks(self, indices: np.ndarray | list[int]) -> np.ndarray | None:
        """Nucleus masks at ``indices`` as bool (N,S,S), or ``None`` without a mask array."""
        if self.masks is None:
            return None
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros((0, *self.masks.shape[1:]), dtype=bool)
        order = np.argsort(indices)
        data = np.asarray(self.masks.get_orthogonal_selection((indices[order],)))
        return data[np.argsort(order)] > 0


@dataclass
class MapSet:
    """One set of explanation maps (one view / explainer) from ``maps.zarr``."""

    name: str
    maps: Any
    cell_ids: list[str]
    attrs: dict[str, Any]

    def read(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """Maps at ``rows`` as float32 (N,S,S)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, *self.maps.shape[1:]), dtype=np.float32)
        order = np.argsort(rows)
        data = np.asarray(self.maps.get_orthogonal_selection((rows[order],)), dtype=np.float32)
        return data[np.argsort(order)]


def _group_arrays(group: Any) -> dict[str, Any]:
    return {name: array for name, array in group.arrays()}


def _map_set(name: str, group: Any) -> MapSet | None:
    arrays = _group_arrays(group)
    if "maps" not in arrays:
        return None
    attrs = dict(group.attrs)
    maps = arrays["maps"]
    attrs.update({k: v for k, v in dict(maps.attrs).items() if k not in attrs})
    cell_ids = None
    for key in ("cell_ids", "cell_id"):
        cell_ids = cell_ids or _string_list(attrs.get(key))
        if cell_ids is None and key in arrays:
            cell_ids = [str(v) for v in np.asarray(arrays[key][:]).tolist()]
    if cell_ids is None or len(cell_ids) != maps.shape[0]:
        return None
    attrs.pop("cell_ids", None)
    attrs.pop("cell_id", None)
    return MapSet(str(attrs.get("view", name)), maps, cell_ids, attrs)


class RunFolder:
    """The artefacts of one run folder, each read on first access (``None`` if missing)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir)
        if not self.path.is_dir():
            raise InputError(f"{self.path}: run folder not found; give the --out folder of "
                             "an `epikit run`")

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """``manifest.json`` (empty when missing)."""
        return _read_json_file(self.path / "manifest.json")

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` (empty when missing)."""
        return _read_json_file(self.path / "metrics.json")

    @cached_property
    def training(self) -> dict[str, Any]:
        """``model/training.json`` with the training curves (empty when missing)."""
        return _read_json_file(self.path / "model" / "training.json")

    @cached_property
    def config_text(self) -> str | None:
        """The text of ``config.toml``."""
        path = self.path / "config.toml"
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    @cached_property
    def cells(self) -> Any | None:
        """``cells.parquet`` as a DataFrame."""
        import pandas as pd

        path = self.path / "cells.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    @cached_property
    def biomarkers(self) -> Any | None:
        """``biomarkers.csv`` as a DataFrame."""
        return self._csv("biomarkers.csv")

    @cached_property
    def segmentation(self) -> Any | None:
        """``segmentation.csv``: nuclei counted per image."""
        return self._csv("segmentation.csv")

    def _csv(self, name: str) -> Any | None:
        import pandas as pd

        path = self.path / name
        if not path.is_file():
            return None
        # Keep user strings (condition, channel names such as "NA") as written.
        return pd.read_csv(path, keep_default_na=False, na_values=[""])

    @cached_property
    def crops(self) -> CropStore | None:
        """``crops.zarr`` opened read-only."""
        import zarr

        path = self.path / "crops.zarr"
        if not path.is_dir():
            return None
        group = zarr.open_group(str(path), mode="r")
        arrays = _group_arrays(group)
        if "crops" not in arrays:
            return None
        crops = arrays["crops"]
        attrs = {**dict(crops.attrs), **dict(group.attrs)}
        channels = _string_list(attrs.get("channel_names")) or [f"ch{i}" for i in range(crops.shape[1])]
        integer = np.dtype(crops.dtype).kind in "iu"
        scale = attrs.get("scale") if integer else None
        offset = attrs.get("offset") if integer else None
        return CropStore(crops, arrays.get("masks"), channels,
                         float(scale) if isinstance(scale, (int, float)) else None,
                         float(offset) if isinstance(offset, (int, float)) else None, attrs)

    @cached_property
    def map_sets(self) -> list[MapSet]:
        """Explanation maps in ``maps.zarr``: the root set and one per sub-group (view)."""
        import zarr

        path = self.path / "maps.zarr"
        if not path.is_dir():
            return []
        group = zarr.open_group(str(path), mode="r")
        sets = []
        root = _map_set(str(group.attrs.get("view", "all")), group)
        if root is not None:
            sets.append(root)
        for name, child in sorted(group.groups()):
            found = _map_set(name, child)
            if found is not None:
                sets.append(found)
        return sets

    @cached_property
    def conditions(self) -> list[str]:
        """Conditions in sorted order, from cells.parquet, else the manifest inputs."""
        if self.cells is not None and "condition" in self.cells:
            return sorted(str(c) for c in self.cells["condition"].dropna().unique())
        inputs = self.manifest.get("inputs") or []
        return sorted({str(i.get("condition")) for i in inputs if isinstance(i, dict)})

    @cached_property
    def channel_names(self) -> list[str]:
        """Channel names from crops.zarr, else the configuration, else none."""
        if self.crops is not None:
            return self.crops.channel_names
        channels = _string_list((self.manifest.get("parameters") or {}).get("channels"))
        return channels or []

    def mask_file(self, path: str, condition: str) -> Path:
        """The label image the segment stage wrote for the input image at ``path``."""
        from epikit.io import ImageRecord, mask_path

        record = ImageRecord(Path(path), condition, condition, (), condition)
        return mask_path(self.path / "masks", record)
