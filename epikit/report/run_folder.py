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
    """``crops.zarr`` read without torch: crops (N,C,S,S), masks (N,S,S), channel names, attrs."""

    path: Path
    crops: Any
    has_masks: bool
    channel_names: list[str]
    attrs: dict[str, Any]

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Crops at rows ``indices`` (in that order) as float32 (N,C,S,S)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.zeros((0, *self.crops.shape[1:]), dtype=np.float32)
        order = np.argsort(indices)
        data = np.asarray(self.crops.get_orthogonal_selection((indices[order],)), dtype=np.float32)
        out = np.empty_like(data)
        out[order] = data
        return out

    def read_masks(self, indices: np.ndarray | list[int]) -> np.ndarray | None:
        """Nucleus masks at rows ``indices`` as bool (N,S,S); ``None`` without a masks array."""
        from epikit.explanation import read_masks

        return read_masks(self.path, np.asarray(indices, dtype=np.int64)) if self.has_masks else None


def _group_arrays(group: Any) -> dict[str, Any]:
    return {name: array for name, array in group.arrays()}


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
        attrs = dict(group.attrs)
        channels = _string_list(attrs.get("channel_names")) or [f"ch{i}" for i in range(crops.shape[1])]
        return CropStore(path, crops, "masks" in arrays, channels, attrs)

    @cached_property
    def map_sets(self) -> list[Any]:
        """Every view's maps in ``maps.zarr`` (:class:`epikit.explanation.StoredMaps`), primary first."""
        import zarr

        from epikit.explanation import MAPS_NAME, read_maps

        path = self.path / MAPS_NAME
        if not path.is_dir():
            return []
        root = zarr.open_group(str(path), mode="r")
        views = _string_list(root.attrs.get("views")) or [str(root.attrs.get("view"))]
        return [read_maps(self.path, view) for view in views]

    def map_averages(self, view: str) -> dict[str, dict[str, Any]]:
        """Stored aligned averages of a view: per condition ``map``, ``channels``, ``n_cells``."""
        import zarr

        from epikit.explanation import AVERAGE_GROUP, MAPS_NAME

        root = zarr.open_group(str(self.path / MAPS_NAME), mode="r")
        base = "" if root.attrs.get("view") == view else f"{view}/"
        averages = {}
        for condition in self.conditions:
            try:
                group = root[f"{base}{AVERAGE_GROUP}/{condition}"]
            except KeyError:
                continue
            arrays = _group_arrays(group)
            if "map" in arrays:
                averages[condition] = {
                    "map": np.asarray(arrays["map"][...], dtype=np.float32),
                    "channels": np.asarray(arrays["channels"][...], dtype=np.float32) if "channels" in arrays else None,
                    "n_cells": int(group.attrs.get("n_cells", 0)),
                }
        return averages

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
