"""The explain stage: explanation maps for the out-of-fold test cells of a run folder.

Every cell that was a test cell in cross-validation (``fold >= 0`` in ``cells.parquet``) is
explained by the fold model that did **not** train on it, so a map never shows what a model
memorised about its own training cells. By default only correctly classified cells are
explained (as in the study); ``cells="misclassified"`` or ``"all"`` change that, and
``max_cells`` caps the number per condition (a seeded random subset).

Output ``maps.zarr`` (written atomically)::

    maps.zarr/
      maps         (M, S, S) float16 in [0, 1], row i explains cell_ids[i]
      crop_index   (M,) int64   row of the cell in crops.zarr / cells.parquet crop_index
      fold         (M,) int64   the fold model that produced the map
      target       (M,) int64   explained class index (into attrs["classes"])
      average/<condition>/  map (S, S), channels (C, S, S), coverage (S, S): aligned means
      <view>/...   the same for every further trained view (several views only)

    attrs: view, views, explainer, layer, target (mode), classes, channel_names, params,
           cells, max_cells, seed, cell_ids, info (explainer run details), provenance

The first (primary) view sits at the root so ``maps.zarr`` has the run-folder contract's
``maps`` array; further views are sub-groups named after the view. Cells are explained in
chunks per fold model (resumable, optionally on Dask workers), with a progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from epikit.distributed import PluginSpec, process_cache, resolve_plugin
from epikit.errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from epikit.distributed import Executor

CELL_SELECTIONS: tuple[str, ...] = ("correct", "misclassified", "all")
MAPS_NAME = "maps.zarr"
#: Finished chunks of an unfinished explain run, relative to the run folder.
SCRATCH = Path(".epikit") / "explain"
AVERAGE_GROUP = "average"


def column_prefix(view: str, primary_view: str) -> str:
    """Prefix of a view's prediction columns in cells.parquet (``""`` for the primary view)."""
    return "" if view == primary_view else f"{view}:"


def select_cells(
    table: pd.DataFrame,
    cells: str = "correct",
    max_cells: int | None = None,
    seed: int = 0,
    prefix: str = "",
) -> np.ndarray:
    """Row positions of the out-of-fold test cells to explain, in table order.

    ``cells``: ``correct`` / ``misclassified`` / ``all`` test cells; ``max_cells``: at most
    this many per condition (seeded random choice). Raises :class:`DataError` when the table
    has no cross-validation columns or the selection is empty.
    """
    if cells not in CELL_SELECTIONS:
        raise ConfigError(f"cells={cells!r} is not one of: {', '.join(CELL_SELECTIONS)}")
    if max_cells is not None and (not isinstance(max_cells, (int, np.integer)) or max_cells < 1):
        raise ConfigError(f"max_cells must be a positive integer or None, got {max_cells!r}")
    correct_column = f"{prefix}correct"
    missing = [c for c in ("fold", correct_column, "condition") if c not in table.columns]
    if missing:
        raise DataError(
            f"cells.parquet lacks {', '.join(missing)}: train a classifier first (`epikit run` "
            "or the train stage) so every cell has an out-of-fold prediction"
        )
    keep = table["fold"].to_numpy() >= 0
    correct = table[correct_column].to_numpy()
    if cells == "correct":
        keep &= correct == True  # noqa: E712 - object column with None for untested cells
    elif cells == "misclassified":
        keep &= correct == False  # noqa: E712
    rows = np.flatnonzero(keep)
    if max_cells is not None:
        rng = np.random.default_rng(seed)
        conditions = table["condition"].to_numpy()[rows]
        chosen = []
        for condition in sorted(set(conditions)):
            members = rows[conditions == condition]
            if len(members) > max_cells:
                members = rng.choice(members, size=max_cells, replace=False)
            chosen.append(members)
        rows = np.sort(np.concatenate(chosen)) if chosen else rows
    if rows.size == 0:
        raise DataError(
            f"no cells to explain: no out-of-fold test cell is {cells!r}"
            + (" (try --cells all)" if cells != "all" else " (was the classifier trained?)")
        )
    return rows


def target_indices(table: pd.DataFrame, rows: np.ndarray, target: str, classes: Sequence[str],
                   prefix: str = "") -> np.ndarray:
    """Class index to explain per selected row: the predicted class, or one named class."""
    classes = list(classes)
    if target == "predicted":
        predicted = table[f"{prefix}prediction"].to_numpy()[rows]
        unknown = sorted({str(p) for p in predicted if p not in classes})
        if unknown:
            raise DataError(f"cells.parquet predicts class(es) {', '.join(unknown)} the model does "
                            f"not have ({', '.join(classes)}); re-run training")
        return np.array([classes.index(p) for p in predicted], dtype=np.int64)
    if target not in classes:
        raise ConfigError(f"target {target!r} is neither 'predicted' nor a class; classes: {', '.join(classes)}")
    return np.full(len(rows), classes.index(target), dtype=np.int64)


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


def explain_cells(
    models: dict[int, Any],
    crops: Any,
    folds: np.ndarray,
    targets: np.ndarray,
    explainer: Any,
    chunk: int = 64,
    progress: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Maps (N, S, S) float32 for ``crops`` (N, C, S, S), each by its fold's model.

    ``models`` maps fold -> model; ``crops`` is an array or a callable ``crops(positions)``
    returning those crops (so large selections are read a chunk at a time). Returns the maps
    and the explainer's ``info``: ``*_maps`` counts summed over chunks, other entries kept.
    """
    import torch

    n = len(folds)
    read = crops if callable(crops) else (lambda positions: np.asarray(crops)[positions])
    maps: np.ndarray | None = None
    info: dict[str, Any] = {}
    for fold in sorted(set(int(f) for f in folds)):
        if fold not in models:
            raise DataError(f"no model for fold {fold}: model/ and cells.parquet disagree; re-run training")
        positions = np.flatnonzero(folds == fold)
        for start in range(0, len(positions), chunk):
            part = positions[start : start + chunk]
            batch = torch.as_tensor(np.asarray(read(part), dtype=np.float32))
            result = explainer.explain(models[fold], batch, torch.as_tensor(targets[part]))
            if maps is None:
                maps = np.empty((n, *result.shape[1:]), dtype=np.float32)
            maps[part] = result.detach().cpu().numpy()
            _merge_info(info, getattr(explainer, "info", None) or {})
            if progress is not None:
                progress.update(len(part))
    assert maps is not None
    return maps, info


def _merge_info(info: dict[str, Any], chunk_info: dict[str, Any]) -> None:
    """Fold one chunk's explainer ``info`` into ``info``: ``*_maps`` counts add up, the rest is kept."""
    for key, value in chunk_info.items():
        if key.endswith("_maps"):
            info[key] = info.get(key, 0) + int(value)
        else:
            info[key] = value


def _stamp(run_dir: Path) -> tuple[Any, ...]:
    """What identifies a run folder's models and crops: file names, sizes and times."""
    files = sorted((run_dir / "model").rglob("*.pt")) + [run_dir / "cells.parquet", run_dir / "crops.zarr"]
    return tuple((str(p.relative_to(run_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists())


@process_cache
def _worker_models(run_dir: Path, view: str, device: Any, stamp: tuple[Any, ...]) -> dict[int, Any]:
    """Fold models of a view, loaded once per worker process (``stamp`` renews them after retraining)."""
    from epikit.training import load_fold_models

    return load_fold_models(run_dir, view=view, device=device)


@process_cache
def _worker_dataset(run_dir: Path, channels: tuple[str, ...], stamp: tuple[Any, ...]) -> Any:
    """A view's crop reader, opened once per worker process."""
    from epikit.dataset import CellDataset

    return CellDataset(run_dir, channels=list(channels))


@dataclass(frozen=True)
class ChunkTask:
    """One unit of explanation work: cells of one view explained by one fold model.

    ``positions`` index the view's selection, ``rows`` are the matching dataset rows.
    """

    view: str
    fold: int
    number: int
    positions: tuple[int, ...]
    rows: tuple[int, ...]
    targets: tuple[int, ...]
    channels: tuple[str, ...]

    @property
    def name(self) -> str:
        """File stem of the chunk's maps in the scratch folder."""
        return f"{self.view}__fold{self.fold}__{self.number:05d}"


def explain_chunk(task: ChunkTask, run_dir: Path, explainer: Any, device: Any, stamp: tuple[Any, ...],
                  scratch: Path) -> dict[str, Any]:
    """Explain one :class:`ChunkTask` (here or on a worker) and save ``scratch/<task.name>.npy``.

    ``explainer`` is an explainer or a :class:`~epikit.distributed.PluginSpec`; the fold
    models, the crop reader and a spec's explainer are built once per process. The file is
    written atomically, so a chunk on disk is a finished chunk. Returns the explainer's ``info``.
    """
    import torch

    from epikit.io.store import atomic_path

    models = _worker_models(run_dir, task.view, device, stamp)
    if task.fold not in models:
        raise DataError(f"{run_dir / 'model'} has no model for fold {task.fold} of view {task.view!r}, "
                        f"which {run_dir / 'cells.parquet'} names; re-run training")
    method = resolve_plugin(explainer)
    crops = torch.as_tensor(np.asarray(_worker_dataset(run_dir, task.channels, stamp).load_crops(
        np.asarray(task.rows, dtype=np.int64)), dtype=np.float32))
    result = method.explain(models[task.fold], crops, torch.as_tensor(task.targets, dtype=torch.long))
    with atomic_path(scratch / f"{task.name}.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, result.detach().cpu().numpy().astype(np.float32))
    return dict(getattr(method, "info", None) or {})


def _chunk_tasks(view: str, rows: np.ndarray, folds: np.ndarray, targets: np.ndarray,
                 channels: Sequence[str], chunk: int) -> list[ChunkTask]:
    """The chunks of one view: up to ``chunk`` cells of one fold each."""
    tasks = []
    for fold in sorted(set(int(f) for f in folds)):
        positions = np.flatnonzero(folds == fold)
        for number, start in enumerate(range(0, len(positions), chunk)):
            part = positions[start : start + chunk]
            tasks.append(ChunkTask(view, fold, number, tuple(int(p) for p in part),
                                   tuple(int(r) for r in rows[part]), tuple(int(t) for t in targets[part]),
                                   tuple(channels)))
    return tasks


def _scratch_dir(run_dir: Path, fingerprint: Any) -> Path:
    """``RUN/.epikit/explain/<hash of the settings>``: finished chunks of an unfinished run.

    Folders of other settings are removed: their maps can never be reused.
    """
    import hashlib
    import json
    import shutil

    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]
    base = (run_dir / SCRATCH).absolute()
    if base.is_dir():
        for old in base.iterdir():
            if old.name != key:
                shutil.rmtree(old, ignore_errors=True)
    (base / key).mkdir(parents=True, exist_ok=True)
    return base / key


def explain_run(
    run_dir: str | Path,
    explainer: str = "scorecam",
    params: dict[str, Any] | None = None,
    *,
    cells: str = "correct",
    max_cells: int | None = None,
    target: str = "predicted",
    views: Sequence[str] | str | None = None,
    seed: int = 0,
    chunk: int = 64,
    average: bool = True,
    progress: bool = True,
    device: Any = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Explain a run folder's out-of-fold test cells and write ``maps.zarr``.

    ``explainer``/``params``: a registered explainer and its parameters. ``cells``,
    ``max_cells``, ``seed``: which cells (see :func:`select_cells`). ``target``:
    ``"predicted"`` or a class name. ``views``: trained views to explain (default all).
    ``average``: also store aligned average maps per condition. Returns (and writes to
    ``metrics.json["explanation"]``) a summary: cells per view and condition, seconds,
    explainer details.

    The cells are explained in chunks of up to ``chunk`` cells of one fold. A finished chunk
    is kept under ``RUN/.epikit/explain/`` until ``maps.zarr`` is written, so an interrupted
    run resumes with the chunks it had not finished. ``executor`` (see
    :func:`epikit.distributed.get_executor`; default: this process) runs the chunks in
    parallel, each worker loading the fold models and the explainer once; the maps are the same.
    """
    import shutil

    from epikit.dataset import CellDataset
    from epikit.distributed import InProcessExecutor
    from epikit.io.store import update_metrics
    from epikit.registry import get_entry, get_explainer
    from epikit.training import models_sha256, trained_views

    run_dir = Path(run_dir).absolute()
    params = dict(params or {})
    method = get_explainer(explainer, **params)  # checks the name and parameters up front
    trained = trained_views(run_dir)
    primary = trained["primary_view"]
    wanted = _wanted_views(views, list(trained["views"]))
    dataset = CellDataset(run_dir)
    table = dataset.table
    plans: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    tasks: list[ChunkTask] = []
    for view in wanted:
        prefix = column_prefix(view, primary)
        rows = select_cells(table, cells, max_cells, seed, prefix)
        targets = target_indices(table, rows, target, trained["views"][view]["classes"], prefix)
        folds = table["fold"].to_numpy(np.int64)[rows]
        plans[view] = (rows, folds, targets)
        tasks += _chunk_tasks(view, rows, folds, targets, trained["views"][view]["channels"], chunk)
    stamp = _stamp(run_dir)
    scratch = _scratch_dir(run_dir, [explainer, params, stamp, [(t.name, t.rows, t.targets) for t in tasks]])
    finished = {t.name for t in tasks if (scratch / f"{t.name}.npy").is_file()}
    todo = [t for t in tasks if t.name not in finished]
    executor = executor or InProcessExecutor()
    spec = method if executor.in_process else PluginSpec("explainer", explainer, params)
    infos: dict[str, dict[str, Any]] = {view: {} for view in wanted}
    started = time.perf_counter()
    bar = _progress(sum(len(t.rows) for t in tasks), f"explain ({explainer})", progress)
    try:
        if bar is not None:
            bar.update(sum(len(t.rows) for t in tasks if t.name in finished))
        for task, info in executor.map_unordered(
            explain_chunk, todo, shared=(run_dir, spec, device, stamp, scratch),
            label=lambda t: f"{run_dir} view {t.view} fold {t.fold} chunk {t.number}",
        ):
            _merge_info(infos[task.view], info)
            if bar is not None:
                bar.update(len(task.rows))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    results: list[ViewMaps] = []
    for view in wanted:
        rows, folds, targets = plans[view]
        maps = np.empty((len(rows), dataset.crop_size, dataset.crop_size), dtype=np.float32)
        for task in (t for t in tasks if t.view == view):
            maps[list(task.positions)] = np.load(scratch / f"{task.name}.npy")
        info = trained["views"][view]
        run_info = infos[view]
        attrs = {
            "view": view,
            "views": list(wanted),
            "explainer": explainer,
            "layer": run_info.get("layer") or getattr(method, "layer", None),
            "target": target,
            "classes": list(info["classes"]),
            "channel_names": list(info["channels"]),
            "params": getattr(method, "params", params),
            "cells": cells,
            "max_cells": max_cells,
            "seed": seed,
            "cell_ids": table["cell_id"].astype(str).to_numpy()[rows].tolist(),
            "models_sha256": models_sha256(run_dir, view),
            "info": run_info,
            "provenance": get_entry("explainer", explainer).provenance(),
        }
        results.append(ViewMaps(view, maps, rows, table["crop_index"].to_numpy(np.int64)[rows],
                                folds, targets, attrs))
    averages = {r.view: _averages(CellDataset(run_dir, channels=r.attrs["channel_names"]), r)
                for r in results} if average else {}
    write_maps(run_dir / MAPS_NAME, results, averages)
    shutil.rmtree(scratch, ignore_errors=True)
    explained = sum(len(t.rows) for t in todo)
    summary = {
        "explainer": explainer,
        "params": results[0].attrs["params"],
        "layer": results[0].attrs["layer"],
        "target": target,
        "cells": cells,
        "max_cells": max_cells,
        "views": {
            r.view: {
                "n_cells": int(len(r.rows)),
                "per_condition": {str(k): int(v) for k, v in
                                  table["condition"].iloc[r.rows].value_counts().sort_index().items()},
                "info": r.attrs["info"],
            }
            for r in results
        },
        "n_cells": int(sum(len(r.rows) for r in results)),
        "n_cells_resumed": int(sum(len(t.rows) for t in tasks if t.name in finished)),
        "seconds": round(seconds, 2),
        "seconds_per_cell": round(seconds / max(explained, 1), 4),
        "approximate": bool(results[0].attrs["info"].get("approximate", False)),
    }
    update_metrics(run_dir, "explanation", summary)
    return summary


def _wanted_views(views: Sequence[str] | str | None, trained: list[str]) -> list[str]:
    if views is None:
        return trained
    if isinstance(views, str):
        views = [v.strip() for v in views.split(",") if v.strip()]
    unknown = [v for v in views if v not in trained]
    if unknown or not views:
        raise ConfigError(f"view(s) {', '.join(unknown) or '(none)'} not trained; trained views: {', '.join(trained)}")
    return list(views)


def _progress(total: int, description: str, enabled: bool) -> Any:
    if not enabled:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="cell", file=sys.stderr)


def _averages(dataset: Any, result: ViewMaps, block_size: int = 512) -> dict[str, dict[str, Any]]:
    """Aligned average map and channels per condition for one view's maps (``dataset``: that view's channels)."""
    from epikit.analysis.averaging import AlignedAverage

    aligned = dataset.attrs.get("align") == "major-axis" and dataset.attrs.get("scale_mode") == "fit"
    conditions = dataset.table["condition"].astype(str).to_numpy()[result.rows]
    out = {}
    for condition in sorted(set(conditions)):
        members = np.flatnonzero(conditions == condition)
        average = AlignedAverage(already_aligned=aligned)
        for block in np.array_split(members, -(-len(members) // block_size)):  # bounded memory
            crops = dataset.load_crops(result.rows[block])
            stacked = np.concatenate([result.maps[block][:, None], crops], axis=1)
            average.add(stacked, read_masks(dataset.store_path, result.crop_index[block]))
        mean, coverage = average.result()
        out[condition] = {"map": mean[0], "channels": mean[1:], "coverage": coverage,
                          "n_cells": len(members)}
    return out


def read_masks(crops_path: Path, crop_index: np.ndarray) -> np.ndarray:
    """Nucleus masks (N, S, S) bool of crops.zarr rows ``crop_index`` (in that order)."""
    import zarr

    group = zarr.open_group(str(crops_path), mode="r")
    if "masks" not in dict(group.arrays()):
        raise DataError(f"{crops_path} has no 'masks' array; re-run extraction")
    masks = group["masks"]
    index = np.asarray(crop_index, dtype=np.int64)
    if index.size == 0:
        return np.zeros((0, *masks.shape[1:]), dtype=bool)
    order = np.argsort(index)
    data = np.asarray(masks.get_orthogonal_selection((index[order],)))
    out = np.empty_like(data)
    out[order] = data
    return out > 0


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

    from epikit.io.store import atomic_path

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


def _check_models(run_dir: Path, attrs: dict[str, Any]) -> None:
    """Refuse maps made by models that have since been retrained (their folds may differ now)."""
    from epikit.training import models_sha256

    made_by = attrs.get("models_sha256")
    if made_by is not None and made_by != models_sha256(run_dir, attrs.get("view")):
        raise DataError(
            f"{run_dir / MAPS_NAME} was made by models that have since been retrained; "
            f"run `epikit explain {run_dir}` again"
        )


def read_maps(run_dir: str | Path, view: str | None = None) -> StoredMaps:
    """The maps of ``view`` (default: the root / primary view) from ``RUN/maps.zarr``."""
    import zarr

    from epikit.errors import InputError

    path = Path(run_dir) / MAPS_NAME
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
    _check_models(Path(run_dir), attrs)
    return StoredMaps(
        view=str(attrs.get("view")),
        maps=np.asarray(group["maps"][...], dtype=np.float32),
        cell_ids=[str(c) for c in attrs["cell_ids"]],
        crop_index=np.asarray(group["crop_index"][...]),
        fold=np.asarray(group["fold"][...]),
        target=np.asarray(group["target"][...]),
        attrs=attrs,
    )
