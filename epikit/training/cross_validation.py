"""Cross-validation: one network per fold, split without leaking fields, out-of-fold scores.

:func:`cross_validate` assigns folds (:mod:`epikit.splits`), trains each fold with
:func:`epikit.training.fit.train_classifier` (resuming from a :class:`~epikit.training.fold_store.FoldStore`
when given one) and scores the out-of-fold predictions (:mod:`epikit.classification_metrics`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epikit.classification_metrics import classification_scores, fold_spread, image_level_scores
from epikit.device import available_memory
from epikit.errors import DataError
from epikit.splits import assign_folds, confounded_columns, validation_split
from epikit.training.crop_source import CropSource, TensorCrops
from epikit.training.fit import TrainedModel, predict_proba, train_classifier
from epikit.training.fold_store import FoldStore
from epikit.options import TrainingOptions

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

log = logging.getLogger(__name__)

CELL_SPLIT_WARNING = (
    "split='cell' puts cells of one field in both train and test: the classifier can "
    "recognise fields instead of conditions, so accuracy can be overestimated; use "
    "split='group' for an honest estimate"
)


@dataclass
class CrossValidation:
    """Out-of-fold results for every cell, per-fold models and the summary metrics.

    ``fold[i]`` is the fold in which cell ``i`` was a test cell (-1: never tested, e.g.
    the training part of a hold-out); ``proba`` is NaN for such cells.
    """

    classes: list[str]
    fold: np.ndarray
    split: np.ndarray
    proba: np.ndarray
    models: dict[int, TrainedModel]
    metrics: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _check_inputs(crops: Any, labels: np.ndarray, groups: np.ndarray, classes: Sequence[str]) -> None:
    if len(labels) == 0:
        raise DataError("the dataset has no cells: nothing to train on (did segmentation find nuclei?)")
    if len(crops) != len(labels) or len(groups) != len(labels):
        raise DataError(
            f"crops ({len(crops)}), labels ({len(labels)}) and groups ({len(groups)}) differ in length"
        )
    if getattr(crops, "ndim", 0) != 4 or crops.shape[-1] != crops.shape[-2]:
        raise DataError(f"crops must be shaped (N, C, S, S), got {tuple(crops.shape)}")
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(f"labels must index the {len(classes)} classes {list(classes)}")


def cross_validate(
    crops: np.ndarray | torch.Tensor | CropSource,
    labels: np.ndarray,
    groups: np.ndarray,
    classes: Sequence[str],
    classifier: str = "resnet10",
    params: dict[str, Any] | None = None,
    *,
    split: str = "group",
    folds: int = 5,
    options: TrainingOptions | None = None,
    image_ids: np.ndarray | None = None,
    table: pd.DataFrame | None = None,
    device: torch.device | str | None = None,
    description: str = "",
    resume_dir: str | Path | None = None,
) -> CrossValidation:
    """Train ``classifier`` once per fold and score its out-of-fold predictions.

    ``crops`` (N, C, S, S) float (an array, or a :class:`~epikit.training.crop_source.CropSource`
    such as ``crops.zarr`` read pool by pool), ``labels`` (N,) ints indexing ``classes``, ``groups`` (N,)
    the unit no split may cut (field / well / replicate). ``image_ids`` enables image-level
    votes (defaults to ``groups``); ``table`` (cells with batch columns such as ``plate``)
    enables the confound check. ``resume_dir``: each finished fold is saved there and reused
    by a later call with the same data and settings (see :class:`FoldStore`), so an
    interrupted cross-validation restarts at its first unfinished fold. Raises
    :class:`DataError` for data that cannot support the split (one class, too few groups
    per class for ``folds``, no cells).
    """
    import torch

    from epikit.device import default_device
    from epikit.registry import get_classifier, rebuild_classifier

    options = options or TrainingOptions()
    params = dict(params or {})
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups)
    classes = [str(c) for c in classes]
    _check_inputs(crops, labels, groups, classes)
    image_ids = groups if image_ids is None else np.asarray(image_ids)
    device = torch.device(device) if device is not None else default_device()

    warnings: list[str] = []
    if split == "cell":
        log.warning(CELL_SPLIT_WARNING)
        warnings.append(CELL_SPLIT_WARNING)
    if table is not None:
        for message in confounded_columns(table):
            log.warning(message)
            warnings.append(message)
    fold, evaluated = assign_folds(labels, groups, classes, split, folds, options.seed)
    split_groups = np.arange(len(labels)) if split == "cell" else groups

    stored = isinstance(crops, CropSource)
    data = crops if stored else TensorCrops(_place(torch.as_tensor(np.ascontiguousarray(crops)), device))
    targets = torch.as_tensor(labels)
    n, in_channels, crop_size = len(labels), data.shape[1], data.shape[-1]
    store = None
    if resume_dir is not None:
        identity = crops.identity() if stored else crops
        store = FoldStore(
            Path(resume_dir), FoldStore.fingerprint(identity, labels, groups, classifier, params, split, folds, options),
            lambda: rebuild_classifier(classifier, in_channels, len(classes), crop_size, **params), device,
        )
    proba = np.full((n, len(classes)), np.nan)
    cell_split = np.full(n, "test" if split != "holdout" else "train", dtype=object)
    models: dict[int, TrainedModel] = {}
    fold_rows: list[dict[str, Any]] = []
    for k in evaluated:
        test = fold == k
        train = ~test
        train_positions = np.flatnonzero(train)
        held = validation_split(labels[train], split_groups[train], options.validation_fraction,
                                options.seed + k)
        validation = train_positions[held]
        fitting = train_positions[~held]
        if split == "holdout":
            cell_split[validation] = "validation"
        test_positions = np.flatnonzero(test)
        saved = store.load(k) if store is not None else None
        if saved is not None:
            trained, test_proba = saved
        else:
            torch.manual_seed(options.seed * 1009 + k)
            model = get_classifier(classifier, in_channels, len(classes), crop_size, **params)
            fold_options = dataclasses.replace(options, seed=options.seed * 1009 + k)
            label = f"{description + ' ' if description else ''}fold {k + 1}/{len(evaluated)}"
            trained = train_classifier(
                model, data, targets, torch.as_tensor(fitting), torch.as_tensor(validation),
                fold_options, device, description=label,
            )
            test_proba = predict_proba(trained.model, data, rows=test_positions, device=device,
                                       amp=options.amp).cpu().numpy()
            if store is not None:
                store.save(k, trained, test_proba)
        proba[test_positions] = test_proba
        cell_split[test_positions] = "test"
        scores = classification_scores(labels[test_positions], test_proba, classes)
        models[k] = trained
        fold_rows.append({
            "fold": k,
            "n_train": len(fitting),
            "n_validation": len(validation),
            "n_test": len(test_positions),
            "n_test_groups": len(np.unique(groups[test_positions])),
            "best_epoch": trained.best_epoch,
            "epochs_run": len(trained.history),
            "seconds": round(trained.seconds, 2),
            **{key: scores[key] for key in ("accuracy", "balanced_accuracy", "roc_auc", "f1")},
        })
        if len(validation) == 0 and options.validation_fraction > 0:
            note = f"fold {k}: too few groups for a validation split; trained all epochs, kept the last"
            log.warning(note)
            warnings.append(note)
    metrics = _summarise(labels, proba, fold, image_ids, classes, fold_rows, models)
    metrics.update(
        classifier=classifier, params=params, split=split, folds_requested=folds,
        n_cells=int(n), n_groups=len(np.unique(groups)), in_channels=int(in_channels),
        crop_size=int(crop_size), device=str(device), warnings=warnings,
        training=dataclasses.asdict(options),
    )
    return CrossValidation(classes, fold, cell_split.astype(str), proba, models, metrics, warnings)


def _place(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """All crops as one tensor, float32 where it fits (else float16, batches widened later).

    On CUDA the tensor moves to the GPU when it takes under a third of the free memory;
    otherwise it stays in pinned host memory and batches are copied over.
    """
    import torch

    wide = data.nelement() * 4 < available_memory() / 3 or data.dtype == torch.float32
    data = data.float() if wide else data.half()
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if data.element_size() * data.nelement() > free // 3:
            return data.pin_memory()
    return data.to(device)


def _summarise(
    labels: np.ndarray, proba: np.ndarray, fold: np.ndarray, image_ids: np.ndarray,
    classes: list[str], fold_rows: list[dict[str, Any]], models: dict[int, TrainedModel],
) -> dict[str, Any]:
    """Pooled out-of-fold scores, image-level votes, per-fold rows with mean and spread."""
    tested = fold >= 0
    scores = classification_scores(labels[tested], proba[tested], classes)
    mean, std = fold_spread(fold_rows, ("accuracy", "balanced_accuracy", "roc_auc", "f1"))
    seconds = sum(model.seconds for model in models.values())
    samples = sum(model.samples_seen for model in models.values())
    return {
        **scores,
        "classes": classes,
        "image_level": image_level_scores(labels[tested], proba[tested], image_ids[tested], classes),
        "folds": fold_rows,
        "mean": mean,
        "std": std,
        "seconds": round(seconds, 2),
        "training_cells_per_second": round(samples / seconds, 1) if seconds else None,
    }
