"""Read-only, lazy access to the artefacts of a run folder (what the report reads).

Each artefact is loaded on first use and cached; one that is missing reads as ``None``
(or an empty dict for JSON files), so every report section can say "not available"
instead of failing. The layout is the run-folder contract of ``DESIGN.md``.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from epikit.errors import InputError
from epikit.runfolder import layout
from epikit.runfolder.crops import CropStore
from epikit.runfolder.layout import MAPS
from epikit.runfolder.maps import StoredMaps, read_averages, read_map_sets


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
        return _read_json_file(self.path / layout.MANIFEST)

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` (empty when missing)."""
        return _read_json_file(self.path / layout.METRICS)

    @cached_property
    def training(self) -> dict[str, Any]:
        """``model/training.json`` with the training curves (empty when missing)."""
        return _read_json_file(self.path / layout.MODEL / layout.TRAINING_INFO)

    @cached_property
    def config_text(self) -> str | None:
        """The text of ``config.toml``."""
        path = self.path / layout.CONFIG
        return path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None

    @cached_property
    def cells(self) -> Any | None:
        """``cells.parquet`` as a DataFrame."""
        import pandas as pd

        path = self.path / layout.CELLS
        return pd.read_parquet(path) if path.is_file() else None

    @cached_property
    def biomarkers(self) -> Any | None:
        """``biomarkers.csv`` as a DataFrame."""
        return self._csv(layout.BIOMARKERS)

    @cached_property
    def profile_curves(self) -> Any | None:
        """``profile_curves.csv``: per-condition radial curves and differences with bands."""
        curves = self._csv(layout.PROFILE_CURVES)
        return None if curves is None else curves.assign(explainer=curves["explainer"].fillna(""))

    @cached_property
    def segmentation(self) -> Any | None:
        """``segmentation.csv``: nuclei counted per image."""
        return self._csv(layout.SEGMENTATION_TABLE)

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

        path = self.path / layout.CROPS
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
    def map_sets(self) -> list[StoredMaps]:
        """Every view's maps in ``maps.zarr`` (:class:`~epikit.runfolder.maps.StoredMaps`), primary first."""
        if not (self.path / MAPS).is_dir():
            return []
        return read_map_sets(self.path)

    def map_averages(self, view: str) -> dict[str, dict[str, Any]]:
        """Stored aligned averages of a view: per condition ``map``, ``channels``, ``n_cells``."""
        return read_averages(self.path, view, self.conditions)

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

    def mask_file(self, image_id: str) -> Path:
        """The label image the segment stage wrote for the input image ``image_id``."""
        from epikit.io import ImageRecord, mask_path

        return mask_path(self.path / layout.MASKS, ImageRecord(Path(image_id), "", "", (), image_id))

    def input_record(self, image_id: str) -> Any | None:
        """The :class:`~epikit.io.ImageRecord` of input ``image_id`` from the manifest (None if absent)."""
        from epikit.io import record_from_dict

        for entry in self.manifest.get("inputs") or []:
            if isinstance(entry, dict) and entry.get("image_id") == image_id:
                return record_from_dict(entry)
        return None
