"""The train stage: cross-validate a classifier on a run folder's cells, for each view.

:func:`run` is the stage (the pipeline and ``epikit train`` call it with
:class:`~epikit.options.TrainOptions`); :func:`train_run` reads ``cells.parquet`` / ``crops.zarr`` (:class:`~epikit.runfolder.cells.CellDataset`),
trains each view (:func:`~epikit.training.cross_validation.cross_validate`), and writes
``model/fold_<k>.pt`` (``model/<view>/`` for several views), ``model/training.json``, the
prediction columns of ``cells.parquet`` and ``metrics.json["classification"]``.
:mod:`epikit.runfolder.models` reads the checkpoints back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epikit.config import section_hash
from epikit.errors import ConfigError, DataError
from epikit.runfolder import layout
from epikit.runfolder.crop_sources import crop_source
from epikit.runfolder.rows import cell_rows
from epikit.runfolder.scratch import Scratch
from epikit.training.cross_validation import CrossValidation, cross_validate
from epikit.training.fit import TrainedModel
from epikit.training.fold_store import training_settings
from epikit.options import TrainingOptions, TrainOptions

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from epikit.distributed import Executor

#: Keys of ``TrainOptions.params`` that go to the training loop, not to the classifier.
LOOP_KEYS = frozenset(f.name for f in dataclasses.fields(TrainingOptions)) | {"recipe"}
ALL_CHANNELS = "all"
PREDICTION_COLUMNS = ("fold", "split", "prediction", "probability", "correct")


def _checkpoint(
    trained: TrainedModel, cv: CrossValidation, fold: int, view: str, channels: list[str],
    seed: int,
) -> dict[str, Any]:
    """The checkpoint dict (loadable with ``weights_only=True``) of one fold's model."""
    from epikit.plugins import epikit_version

    metrics = cv.metrics
    return {
        "classifier": metrics["classifier"],
        "params": metrics["params"],
        "in_channels": metrics["in_channels"],
        "num_classes": len(cv.classes),
        "crop_size": metrics["crop_size"],
        "channels": list(channels),
        "classes": list(cv.classes),
        "view": view,
        "fold": int(fold),
        "best_epoch": int(trained.best_epoch),
        "seed": int(seed),
        "epikit_version": epikit_version(),
        "state_dict": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
    }


def resolve_views(views: Sequence[str] | str | None, channel_names: Sequence[str]) -> dict[str, list[int]]:
    """Map each view name to channel indices: ``all``, a channel name, or names joined by ``+``.

    Unknown channel names raise :class:`ConfigError` listing the available ones.
    """
    if views is None or (isinstance(views, str) and not views.strip()):
        views = [ALL_CHANNELS]
    elif isinstance(views, str):
        views = [v for v in views.split(",")]
    names = list(channel_names)
    resolved: dict[str, list[int]] = {}
    for view in (v.strip() for v in views):
        if not view:
            continue
        if view.lower() == ALL_CHANNELS:
            resolved[ALL_CHANNELS] = list(range(len(names)))
            continue
        parts = [p.strip() for p in view.split("+")]
        missing = [p for p in parts if p not in names]
        if missing:
            raise ConfigError(
                f"view {view!r}: channel {missing[0]!r} is not in the dataset; available: "
                f"{', '.join(names)} (or 'all')"
            )
        resolved[view] = [names.index(p) for p in parts]
    if not resolved:
        raise ConfigError("no view given; use 'all' or channel names such as " + ", ".join(names))
    return resolved


def _prediction_frame(cv: CrossValidation, prefix: str = "") -> dict[str, Any]:
    """The cells.parquet columns of one view (``prefix`` distinguishes extra views)."""
    tested = cv.fold >= 0
    best = np.where(tested, np.nanargmax(np.nan_to_num(cv.proba, nan=-1.0), axis=1), -1)
    classes = np.asarray(cv.classes, dtype=object)
    columns: dict[str, Any] = {
        f"{prefix}prediction": np.where(tested, classes[np.maximum(best, 0)], None),
        f"{prefix}probability": np.where(tested, np.nanmax(np.nan_to_num(cv.proba, nan=-1), axis=1),
                                         np.nan),
    }
    for k, name in enumerate(cv.classes):
        columns[f"{prefix}prob_{name}"] = cv.proba[:, k]
    return columns


def _write_predictions(
    run_dir: Path, cell_ids: np.ndarray, labels: np.ndarray, results: dict[str, CrossValidation]
) -> None:
    """Add fold/split/prediction/probability/prob_<class>/correct to cells.parquet atomically.

    The first view's columns are unprefixed; other views get ``<view>:`` prefixes. Columns
    of an earlier training run are replaced.
    """
    import pandas as pd

    from epikit.io.store import write_parquet

    path = run_dir / layout.CELLS
    table = pd.read_parquet(path)
    old = [c for c in table.columns if c.split(":")[-1] in PREDICTION_COLUMNS
           or c.split(":")[-1].startswith("prob_")]
    table = table.drop(columns=old)
    rows = cell_rows(cell_ids, table["cell_id"], f"{path} has cells the dataset does not: re-run extraction")
    first = next(iter(results.values()))
    table["fold"] = first.fold[rows]
    table["split"] = first.split[rows]
    for number, (view, cv) in enumerate(results.items()):
        prefix = "" if number == 0 else f"{view}:"
        for name, values in _prediction_frame(cv, prefix).items():
            table[name] = np.asarray(values)[rows]
        predicted = table[f"{prefix}prediction"]
        truth = np.asarray(cv.classes, dtype=object)[labels[rows]]
        table[f"{prefix}correct"] = np.where(predicted.isna(), None, predicted == truth)
    write_parquet(table, path)


def train_run(
    run_dir: str | Path,
    classifier: str = TrainOptions.classifier,
    params: dict[str, Any] | None = None,
    *,
    views: Sequence[str] | str | None = TrainOptions.views,
    split: str = TrainOptions.split,
    folds: int = TrainOptions.folds,
    device: torch.device | str | None = None,
    recipe: str = "default",
    **training: Any,
) -> dict[str, Any]:
    """Cross-validate ``classifier`` on a run folder's cells, for each view; write the results.

    ``views``: ``None``/``"all"`` (every channel), a channel name, names joined by ``+``, or
    a list of such (``["all", "H3K27ac", "CTCF", "Hoechst"]``). ``training``: fields of
    :class:`TrainingOptions` (``epochs``, ``batch_size``, ``lr``, ``seed``, ``progress``...),
    applied over ``recipe`` (``"default"``, or ``"study"`` for :meth:`TrainingOptions.study`).
    Writes ``model/`` (one view: ``fold_<k>.pt``; several: ``<view>/fold_<k>.pt``, plus
    ``training.json``), the prediction columns of ``cells.parquet`` and
    ``metrics.json["classification"]``, which it returns. With several views the first
    view's metrics are also the top-level ones and every view's sit under ``views``.
    Finished folds wait in the train :class:`~epikit.runfolder.scratch.Scratch` until all are done, so an interrupted
    call, run again with the same settings, trains only the folds it had not finished.
    """
    import torch

    from epikit.runfolder.cells import CellDataset
    from epikit.io.store import atomic_path, write_json
    from epikit.runfolder.metrics import update_metrics

    run_dir = Path(run_dir)
    options = TrainingOptions.from_mapping(training, recipe)
    dataset = CellDataset(run_dir)
    resolved = resolve_views(views, dataset.channel_names)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if len(labels) == 0:
        raise DataError(f"{run_dir / layout.CELLS} has no cells: nothing to train on")
    table = dataset.table
    # Finished folds wait in the scratch of these settings (each fold file also keys its data).
    scratch = Scratch(run_dir, "train", section_hash(
        training_settings(classifier, params, split, folds, options), resolved))
    scratch.open()
    image_ids = table["image_id"].to_numpy() if "image_id" in table else None
    results: dict[str, CrossValidation] = {}
    for view, channel_index in resolved.items():
        results[view] = cross_validate(
            crop_source(CellDataset(run_dir, channels=[dataset.channel_names[i] for i in channel_index]),
                        options.crops_memory_mb), labels, np.asarray(dataset.groups),
            dataset.classes, classifier, params, split=split, folds=folds, options=options,
            image_ids=image_ids, table=table, device=device,
            description=view if len(resolved) > 1 else "",
            resume_dir=scratch.path / view,
        )

    several = len(resolved) > 1
    curves: dict[str, Any] = {}
    with atomic_path(run_dir / layout.MODEL) as model_dir:
        model_dir.mkdir(parents=True)
        for view, cv in results.items():
            channels = [dataset.channel_names[i] for i in resolved[view]]
            target = model_dir / view if several else model_dir
            target.mkdir(exist_ok=True)
            for k, trained in cv.models.items():
                torch.save(_checkpoint(trained, cv, k, view, channels, options.seed),
                           target / f"fold_{k}.pt")
            cv.metrics.update(view=view, channels=channels)
            curves[view] = {
                "channels": channels,
                "classes": cv.classes,
                "classifier": classifier,
                "directory": view if several else ".",
                "folds": [{"fold": k, "best_epoch": t.best_epoch, "history": t.history}
                          for k, t in cv.models.items()],
            }
        write_json(model_dir / layout.TRAINING_INFO, {"primary_view": next(iter(results)),
                                                 "views": curves})
    _write_predictions(run_dir, table["cell_id"].to_numpy(), labels, results)
    summary = dict(next(iter(results.values())).metrics)
    if several:
        summary["views"] = {view: cv.metrics for view, cv in results.items()}
    update_metrics(run_dir, "classification", summary)
    scratch.remove()
    return summary


def run(
    run_dir: str | Path,
    options: TrainOptions,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The train stage: :func:`train_run` with ``options``; training stays in this process.

    Keys of ``options.params`` naming a :data:`LOOP_KEYS` entry go to the training loop,
    the rest to the classifier. ``executor`` is accepted for the common stage shape.
    """
    loop = {key: value for key, value in options.params.items() if key in LOOP_KEYS}
    params = {key: value for key, value in options.params.items() if key not in LOOP_KEYS}
    return train_run(run_dir, options.classifier, params, views=options.views, split=options.split,
                     folds=options.folds, device=options.device,
                     **{"epochs": options.epochs, "batch_size": options.batch_size, "lr": options.lr,
                        "seed": options.seed, "progress": progress, **loop})
