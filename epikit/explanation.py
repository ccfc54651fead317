"""The explain stage: explanation maps for the out-of-fold test cells of a run folder.

Every cell that was a test cell in cross-validation (``fold >= 0`` in ``cells.parquet``) is
explained by the fold model that did **not** train on it, so a map never shows what a model
memorised about its own training cells. By default every test cell is a candidate, chosen
without looking at whether the model got it right (``cells="correct"`` keeps the study's
selection of correctly classified cells, ``"misclassified"`` the others), and ``max_cells``
caps the number per condition (a seeded random, class-balanced subset). Which class each
map explains is the target policy of :mod:`epikit.analysis.targets` (default ``contrast``:
every compared cell for the non-reference condition).

:func:`run` is the stage (the pipeline and ``epikit explain`` call it with
:class:`~epikit.options.ExplainOptions`); :func:`explain_run` does the work.

Output: ``maps.zarr`` (format: :mod:`epikit.runfolder.maps`), one group per trained view.
Cells are explained in chunks per fold model (resumable, optionally on Dask workers), with a
progress bar.
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
from epikit.analysis.fold_maps import merge_info
from epikit.analysis.stats import choose_reference, condition_doses
from epikit.analysis.targets import check_target, plan_targets
from epikit.config import section_hash
from epikit.errors import ConfigError, DataError
from epikit.interfaces import optional_attribute
from epikit.options import ExplainOptions
from epikit.runfolder import layout
from epikit.runfolder.maps import ViewMaps, write_maps
from epikit.runfolder.scratch import Scratch

if TYPE_CHECKING:  # pragma: no cover
    from epikit.distributed import Executor

CELL_SELECTIONS: tuple[str, ...] = ("correct", "misclassified", "all")


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


def map_plan(table: pd.DataFrame, cells: np.ndarray, target: str, classes: Sequence[str], reference: str,
             prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Table rows and class indices of the maps to make for the selected ``cells`` (a row may repeat).

    See :func:`epikit.analysis.targets.plan_targets`.
    """
    predicted = table[f"{prefix}prediction"].to_numpy()[cells] if target == "predicted" else None
    positions, targets = plan_targets(table["condition"].astype(str).to_numpy()[cells], predicted, target,
                                      classes, reference)
    return cells[positions], targets


def _stamp(run_dir: Path) -> tuple[Any, ...]:
    """What identifies a run folder's models and crops: file names, sizes and times."""
    files = sorted((run_dir / layout.MODEL).rglob("*.pt")) + [run_dir / layout.CELLS, run_dir / layout.CROPS]
    return tuple((str(p.relative_to(run_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.exists())


@process_cache
def _worker_models(run_dir: Path, view: str, device: Any, stamp: tuple[Any, ...]) -> dict[int, Any]:
    """Fold models of a view, loaded once per worker process (``stamp`` renews them after retraining)."""
    from epikit.runfolder.models import load_fold_models

    return load_fold_models(run_dir, view=view, device=device)


@process_cache
def _worker_dataset(run_dir: Path, channels: tuple[str, ...], stamp: tuple[Any, ...]) -> Any:
    """A view's crop reader, opened once per worker process."""
    from epikit.runfolder.cells import CellDataset

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
        raise DataError(f"{run_dir / layout.MODEL} has no model for fold {task.fold} of view {task.view!r}, "
                        f"which {run_dir / layout.CELLS} names; re-run training")
    method = resolve_plugin(explainer)
    unique, inverse = np.unique(np.asarray(task.rows, dtype=np.int64), return_inverse=True)  # a cell may repeat
    crops = torch.as_tensor(np.asarray(_worker_dataset(run_dir, task.channels, stamp).load_crops(unique),
                                       dtype=np.float32)[inverse])
    result = method.explain(models[task.fold], crops, torch.as_tensor(task.targets, dtype=torch.long))
    with atomic_path(scratch / f"{task.name}.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, result.detach().cpu().numpy().astype(np.float32))
    return dict(optional_attribute(method, "explainer", "info", {}))


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


def explain_run(
    run_dir: str | Path,
    explainer: str = ExplainOptions.explainer,
    params: dict[str, Any] | None = None,
    *,
    cells: str = ExplainOptions.cells,
    max_cells: int | None = ExplainOptions.max_cells,
    target: str = ExplainOptions.target,
    reference: str = ExplainOptions.reference,
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
    ``max_cells``, ``seed``: which cells (see :func:`select_cells`). ``target``: the target
    policy (``contrast``, ``own``, ``predicted``) or a class name, and ``reference`` the
    reference condition of ``contrast`` (see :mod:`epikit.analysis.targets`; ``""``: the
    lowest dose's when the cells carry doses, else a control-like name, else the first). ``views``: trained views to explain (default all).
    ``average``: also store aligned average maps per condition. Returns (and writes to
    ``metrics.json["explanation"]``) a summary: cells per view and condition, seconds,
    explainer details.

    The cells are explained in chunks of up to ``chunk`` cells of one fold. A finished chunk
    is kept in the explain :class:`~epikit.runfolder.scratch.Scratch` until ``maps.zarr`` is written, so an interrupted
    run resumes with the chunks it had not finished. ``executor`` (see
    :func:`epikit.distributed.get_executor`; default: this process) runs the chunks in
    parallel, each worker loading the fold models and the explainer once; the maps are the same.
    """

    from epikit.distributed import InProcessExecutor
    from epikit.registry import get_entry, get_explainer
    from epikit.runfolder.cells import CellDataset
    from epikit.runfolder.crops import crops_fingerprint
    from epikit.runfolder.metrics import update_metrics
    from epikit.runfolder.models import models_sha256, trained_views

    run_dir = Path(run_dir).absolute()
    params = dict(params or {})
    method = get_explainer(explainer, **params)  # checks the name and parameters up front
    trained = trained_views(run_dir)
    primary = trained["primary_view"]
    wanted = _wanted_views(views, list(trained["views"]))
    dataset = CellDataset(run_dir)
    table = dataset.table
    reference = choose_reference(table["condition"].astype(str).unique(), reference or None, condition_doses(table))
    plans: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    tasks: list[ChunkTask] = []
    for view in wanted:
        prefix = column_prefix(view, primary)
        check_target(target, trained["views"][view]["classes"])
        rows, targets = map_plan(table, select_cells(table, cells, max_cells, seed, prefix), target,
                                 trained["views"][view]["classes"], reference, prefix)
        folds = table["fold"].to_numpy(np.int64)[rows]
        plans[view] = (rows, folds, targets)
        tasks += _chunk_tasks(view, rows, folds, targets, trained["views"][view]["channels"], chunk)
    stamp = _stamp(run_dir)
    # Finished chunks wait in the scratch of these settings (others' chunks are removed).
    work = Scratch(run_dir, "explain", section_hash([explainer, params, stamp,
                                                     [(t.name, t.rows, t.targets) for t in tasks]]))
    work.open()
    scratch = work.path
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
            merge_info(infos[task.view], info)
            if bar is not None:
                bar.update(len(task.rows))
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    fingerprint = crops_fingerprint(run_dir)
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
            "layer": run_info.get("layer") or optional_attribute(method, "explainer", "layer"),
            "target": target,
            "reference": reference,
            "classes": list(info["classes"]),
            "channel_names": list(info["channels"]),
            "params": optional_attribute(method, "explainer", "params", params),
            "cells": cells,
            "max_cells": max_cells,
            "seed": seed,
            "cell_ids": table["cell_id"].astype(str).to_numpy()[rows].tolist(),
            "models_sha256": models_sha256(run_dir, view),
            "crops_fingerprint": fingerprint,
            "info": run_info,
            "provenance": get_entry("explainer", explainer).provenance(),
        }
        results.append(ViewMaps(view, maps, rows, table["crop_index"].to_numpy(np.int64)[rows],
                                folds, targets, attrs))
    averages = {r.view: _averages(CellDataset(run_dir, channels=r.attrs["channel_names"]), r)
                for r in results} if average else {}
    write_maps(run_dir / layout.MAPS, results, averages)
    work.remove()
    explained = sum(len(t.rows) for t in todo)
    summary = {
        "explainer": explainer,
        "params": results[0].attrs["params"],
        "layer": results[0].attrs["layer"],
        "target": target,
        "reference": reference,
        "cells": cells,
        "max_cells": max_cells,
        "views": {
            r.view: {
                "n_cells": int(len(r.rows)),
                "per_condition": {str(k): int(v) for k, v in
                                  table["condition"].iloc[r.rows].value_counts().sort_index().items()},
                "per_target": {str(r.attrs["classes"][k]): int(v) for k, v in
                               zip(*np.unique(r.target, return_counts=True))},
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


def run(
    run_dir: str | Path,
    options: ExplainOptions,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The explain stage: :func:`explain_run` with ``options`` (``max_cells`` 0: every cell)."""
    return explain_run(run_dir, options.explainer, options.params, cells=options.cells,
                       max_cells=options.max_cells or None, target=options.target,
                       reference=options.reference, views=options.views,
                       seed=options.seed, progress=progress, device=options.device, executor=executor)


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
    """Aligned average map and channels per condition for one view's maps (``dataset``: that view's channels).

    Each cell counts once (a reference cell explained for several comparisons: its first map).
    """
    from epikit.nuclei.averaging import AlignedAverage
    from epikit.runfolder.crops import read_masks

    aligned = dataset.attrs.get("align") == "major-axis" and dataset.attrs.get("scale_mode") == "fit"
    conditions = dataset.table["condition"].astype(str).to_numpy()[result.rows]
    first = np.zeros(len(result.rows), dtype=bool)
    first[np.unique(result.rows, return_index=True)[1]] = True
    out = {}
    for condition in sorted(set(conditions)):
        members = np.flatnonzero((conditions == condition) & first)
        average = AlignedAverage(already_aligned=aligned)
        for block in np.array_split(members, -(-len(members) // block_size)):  # bounded memory
            crops = dataset.load_crops(result.rows[block])
            stacked = np.concatenate([result.maps[block][:, None], crops], axis=1)
            average.add(stacked, read_masks(dataset.store_path, result.crop_index[block]))
        mean, coverage = average.result()
        out[condition] = {"map": mean[0], "channels": mean[1:], "coverage": coverage,
                          "n_cells": len(members)}
    return out
