"""``maps.zarr``: explanation maps written once per explain run and read back as :class:`StoredMaps`.

Layout (written atomically)::

    maps.zarr/
      maps         (M, S, S) float16 in [0, 1], row i explains cell_ids[i]
      crop_index   (M,) int64   row of the cell in crops.zarr / cells.parquet crop_index
      fold         (M,) int64   the fold model that produced the map
      target       (M,) int64   explained class index (into attrs["classes"]); under the
                                contrast target policy a reference cell has one row per comparison
      average/<condition>/  map (S, S), channels (C, S, S), coverage (S, S): aligned means
      <view>/...   the same for every further trained view (several views only)

    attrs: view, views, explainer, layer, target (the policy, see epikit.analysis.targets),
           reference, classes, channel_names, params, cells, max_cells, seed, cell_ids (one
           per row), models_sha256, crops_fingerprint (of the cells and crops the maps were
           made from), info (explainer run details), provenance

The first (primary) view sits at the root so ``maps.zarr`` has the run-folder contract's
``maps`` array; further views are sub-groups named after the view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import ConfigError, DataError, InputError
from epikit.io.store import atomic_path
from epikit.runfolder.crops import crops_fingerprint
from epikit.runfolder.layout import MAPS
from epikit.runfolder.models import models_sha256

AVERAGE_GROUP = "average"


@dataclass
class ViewMaps:
    """Maps of one view, in memory, before they are written."""

    view: str
    maps: np.ndarray
    rows: np.ndarray
    crop_index: np.ndarray
    fold: np.ndarray
    target: np.ndarray
    attrs: dict[str, Any]


def _array(path: Path, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
    import zarr

    array = zarr.open_array(store=str(path), mode="w", shape=data.shape,
                            chunks=chunks or data.shape, dtype=data.dtype)
    array[...] = data


def _write_group(path: Path, result: ViewMaps, averages: dict[str, dict[str, Any]]) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="a")
    size = result.maps.shape[-1]
    _array(path / "maps", result.maps.astype(np.float16), (min(len(result.maps), 32), size, size))
    for name in ("crop_index", "fold", "target"):
        _array(path / name, np.asarray(getattr(result, name), dtype=np.int64))
    group.attrs.update(result.attrs)
    if averages:
        zarr.open_group(str(path / AVERAGE_GROUP), mode="a").attrs.update(
            {"description": "aligned mean per condition (major axis horizontal, nucleus fills the square)"})
    for condition, parts in averages.items():
        target = path / AVERAGE_GROUP / condition
        zarr.open_group(str(target), mode="a").attrs.update(
            {"n_cells": parts["n_cells"], "channel_names": result.attrs["channel_names"]})
        for name in ("map", "channels", "coverage"):
            _array(target / name, np.asarray(parts[name], dtype=np.float32))


def write_maps(path: Path, results: Sequence[ViewMaps], averages: dict[str, dict[str, dict[str, Any]]]) -> Path:
    """Write ``maps.zarr`` atomically: the first view at the root, further views as sub-groups."""
    import zarr

    with atomic_path(path) as tmp:
        zarr.open_group(str(tmp), mode="w")
        for number, result in enumerate(results):
            target = tmp if number == 0 else tmp / result.view
            _write_group(target, result, averages.get(result.view, {}))
    return path


@dataclass
class StoredMaps:
    """One view's maps read back from ``maps.zarr``."""

    view: str
    maps: np.ndarray
    cell_ids: list[str]
    crop_index: np.ndarray
    fold: np.ndarray
    target: np.ndarray
    attrs: dict[str, Any]


def _check_models(run_dir: Path, attrs: dict[str, Any], crops: str | None = None) -> None:
    """Refuse maps made by models that have since been retrained (their folds may differ now)
    or from cells and crops that have since been extracted again (``crops``: their fingerprint now)."""
    made_by = attrs.get("models_sha256")
    if made_by is not None and made_by != models_sha256(run_dir, attrs.get("view")):
        raise DataError(
            f"{run_dir / MAPS} was made by models that have since been retrained; "
            f"run `epikit explain {run_dir}` again"
        )
    made_from = attrs.get("crops_fingerprint")
    if made_from is None or made_from != (crops or crops_fingerprint(run_dir)):
        raise DataError(
            f"{run_dir / MAPS} was made from other cells or crops than crops.zarr holds now (extracted "
            f"again?); run `epikit train` and `epikit explain {run_dir}` again"
        )


def read_maps(run_dir: str | Path, view: str | None = None, crops: str | None = None) -> StoredMaps:
    """The maps of ``view`` (default: the root / primary view) from ``RUN/maps.zarr``.

    Raises :class:`DataError` when the maps are stale: made by other models, or from other
    cells or crops (``crops``: :func:`~epikit.runfolder.crops.crops_fingerprint` when known).
    """
    import zarr

    path = Path(run_dir) / MAPS
    if not path.is_dir():
        raise InputError(f"{path}: not found; run `epikit explain {run_dir}` first")
    root = zarr.open_group(str(path), mode="r")
    group = root
    if view is not None and view != root.attrs.get("view"):
        children = dict(root.groups())
        if view not in children:
            raise ConfigError(f"{path} has no maps for view {view!r}; views: {', '.join(root.attrs.get('views', []))}")
        group = children[view]
    attrs = dict(group.attrs)
    _check_models(Path(run_dir), attrs, crops)
    return StoredMaps(
        view=str(attrs.get("view")),
        maps=np.asarray(group["maps"][...], dtype=np.float32),
        cell_ids=[str(c) for c in attrs["cell_ids"]],
        crop_index=np.asarray(group["crop_index"][...]),
        fold=np.asarray(group["fold"][...]),
        target=np.asarray(group["target"][...]),
        attrs=attrs,
    )


def read_map_sets(run_dir: str | Path) -> list[StoredMaps]:
    """Every view's maps in ``maps.zarr``, the root (primary) view first."""
    import zarr

    crops = crops_fingerprint(run_dir) if (Path(run_dir) / MAPS).is_dir() else None
    root = read_maps(run_dir, crops=crops)
    views = [v for v in root.attrs.get("views", [root.view]) if v != root.view]
    children = dict(zarr.open_group(str(Path(run_dir) / MAPS), mode="r").groups())
    return [root] + [read_maps(run_dir, v, crops) for v in views if v in children]


def read_averages(run_dir: str | Path, view: str, conditions: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Stored aligned averages of a view: per condition ``map``, ``channels`` (or None), ``n_cells``."""
    import zarr

    root = zarr.open_group(str(Path(run_dir) / MAPS), mode="r")
    base = "" if root.attrs.get("view") == view else f"{view}/"
    averages = {}
    for condition in conditions:
        try:
            group = root[f"{base}{AVERAGE_GROUP}/{condition}"]
        except KeyError:
            continue
        arrays = dict(group.arrays())
        if "map" in arrays:
            averages[condition] = {
                "map": np.asarray(arrays["map"][...], dtype=np.float32),
                "channels": np.asarray(arrays["channels"][...], dtype=np.float32) if "channels" in arrays else None,
                "n_cells": int(group.attrs.get("n_cells", 0)),
            }
    return averages
