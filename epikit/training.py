"""Train and cross-validate classifiers on single-cell crops: one loop for every network.

Three layers, each usable on its own:

* :func:`train_classifier` fits one network on in-memory crops (train / validation indices):
  AdamW (or Adam), cross-entropy on logits with class-balanced weights (or sampling),
  flips / 90-degree rotations / intensity jitter applied to whole batches on the device,
  early stopping on the validation loss, mixed precision on CUDA, best-epoch weights kept.
* :func:`cross_validate` splits cells without leaking fields (:mod:`epikit.splits`), trains
  one network per fold and scores the out-of-fold predictions
  (:mod:`epikit.classification_metrics`).
* :func:`train_run` does this for a run folder: reads ``cells.parquet`` / ``crops.zarr``,
  trains each view, writes ``model/fold_<k>.pt`` (``model/<view>/`` for several views),
  ``model/training.json``, the prediction columns of ``cells.parquet`` and
  ``metrics.json["classification"]``. :func:`load_fold_models` reads the checkpoints back.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epikit.classification_metrics import (
    classification_scores,
    fold_spread,
    image_level_scores,
)
from epikit.errors import ConfigError, DataError, ModelError
from epikit.splits import (
    SPLITS,
    check_groups_per_class,
    confounded_columns,
    grouped_folds,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch
    from torch import nn

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "exponential")
RECIPES = ("default", "study")
BALANCING = ("weights", "sampling", "none")
ALL_CHANNELS = "all"
CELL_SPLIT_WARNING = (
    "split='cell' puts cells of one field in both train and test: the classifier can "
    "recognise fields instead of conditions, so accuracy can be overestimated; use "
    "split='group' for an honest estimate"
)
FOLD_STORE = Path(".epikit") / "train_folds"  # finished folds of an unfinished train_run
PREDICTION_COLUMNS = ("fold", "split", "prediction", "probability", "correct")


@dataclass(frozen=True)
class TrainingOptions:
    """How one network is trained (shared by every classifier).

    ``precise_bn``: before each validation, BatchNorm statistics are recomputed over the
    training crops (their running averages lag behind fast-changing weights on small data).
    Best epoch and early stopping: from epoch ``min_epochs`` on (default: half of ``epochs``;
    earlier epochs, still warming up, are not candidates), the epoch with the lowest
    validation loss is kept, and training ends once ``patience`` epochs in a row did not
    lower it.
    ``schedule="cosine"``: linear warm-up over ``warmup_epochs``, then cosine decay to 0 at
    ``epochs`` (per step); ``"exponential"``: ``lr * lr_decay**epoch`` (the study's 0.99).
    Defaults train the study's ``resnet10`` with 5-fold CV on ~200 crops of 64 px (the demo)
    in about 1.5 minutes on two CPU cores. The study's own recipe is :meth:`study`.
    """

    epochs: int = 16
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    lr_decay: float = 0.99
    patience: int = 5
    min_epochs: int | None = None
    validation_fraction: float = 0.15
    balance: str = "weights"
    augment: bool = True
    precise_bn: bool = True
    intensity_jitter: float = 0.1
    amp: bool = True
    seed: int = 0
    progress: bool = True

    @classmethod
    def study(cls, **changes: Any) -> TrainingOptions:
        """The published recipe: Adam, lr 1e-5 decaying 0.99 per epoch, 300 epochs, batch 128."""
        recipe = {"epochs": 300, "batch_size": 128, "lr": 1e-5, "optimizer": "adam",
                  "weight_decay": 0.0, "schedule": "exponential", "warmup_epochs": 0.0,
                  "lr_decay": 0.99, "patience": 300}
        return cls(**{**recipe, **changes})

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r} is not one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} is not one of: {', '.join(SCHEDULES)}")
        if self.balance not in BALANCING:
            raise ConfigError(f"balance={self.balance!r} is not one of: {', '.join(BALANCING)}")
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ConfigError(
                f"need epochs >= 1, batch_size >= 2 and lr > 0 "
                f"(got {self.epochs}, {self.batch_size}, {self.lr})"
            )
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], recipe: str = "default") -> TrainingOptions:
        """Options of ``recipe`` (``default`` or ``study``) changed by ``values``.

        Unknown keys raise :class:`ConfigError` listing the known ones.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if recipe not in RECIPES:
            raise ConfigError(f"recipe={recipe!r} is not one of: {', '.join(RECIPES)}")
        return cls.study(**values) if recipe == "study" else cls(**values)


@dataclass
class TrainedModel:
    """One trained network: weights of the best epoch and the per-epoch curves."""

    model: nn.Module
    best_epoch: int
    history: list[dict[str, float | None]]
    samples_seen: int
    seconds: float


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


# --------------------------------------------------------------------------- training


def augment_batch(x: torch.Tensor, generator: torch.Generator, jitter: float) -> torch.Tensor:
    """Random flip + 90-degree rotation (the 8 symmetries of a square) and per-channel gain.

    Applied to the whole batch at once on its device; ``jitter`` is the largest relative
    intensity change (0 disables it).
    """
    import torch

    n = x.shape[0]
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    turns = torch.randint(0, 4, (n,), generator=generator, device=x.device)
    rotated = x.clone()
    for k in (1, 2, 3):
        chosen = turns == k
        rotated[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    if jitter > 0:
        gain = 1 + jitter * (2 * torch.rand(n, x.shape[1], 1, 1, generator=generator,
                                            device=x.device) - 1)
        rotated = rotated * gain
    return rotated


def _autocast(device: torch.device, enabled: bool) -> Any:
    """Mixed precision (bfloat16, else float16) on CUDA; nothing elsewhere."""
    import torch

    if not (enabled and device.type == "cuda"):
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """cuDNN in deterministic mode while training on CUDA (CPU kernels already are)."""
    import torch

    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (K * n_k)`` (0 for a class absent from ``labels``)."""
    import torch

    counts = torch.bincount(labels, minlength=num_classes).float()
    present = int((counts > 0).sum())
    return torch.where(counts > 0, len(labels) / (present * counts.clamp_min(1)), 0.0)


def predict_proba(
    model: nn.Module, crops: torch.Tensor, batch_size: int = 256, device: torch.device | None = None
) -> torch.Tensor:
    """Class probabilities (N, K) float32 on ``device`` for ``crops`` (softmax of the logits)."""
    import torch

    device = device or next(model.parameters()).device
    model.eval()
    parts = []
    with torch.inference_mode(), _autocast(device, True):
        for start in range(0, len(crops), batch_size):
            batch = crops[start:start + batch_size].to(device, non_blocking=True).float()
            parts.append(torch.softmax(model(batch).float(), dim=1))
    if not parts:
        return torch.zeros(0, 0, device=device)
    return torch.cat(parts)


def learning_rate_schedule(
    optimizer: torch.optim.Optimizer, options: TrainingOptions, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up + cosine stepped per batch, or exponential decay stepped per epoch."""
    import torch

    if options.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=options.lr_decay)
    warmup = options.warmup_epochs * steps_per_epoch
    total = max(options.epochs * steps_per_epoch, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _epoch_order(
    train_labels: torch.Tensor, weights: torch.Tensor, options: TrainingOptions,
    generator: torch.Generator,
) -> torch.Tensor:
    """Positions into the training set for one epoch: a permutation, or class-balanced draws."""
    import torch

    n = len(train_labels)
    if options.balance == "sampling":
        return torch.multinomial(weights[train_labels], n, replacement=True, generator=generator)
    return torch.randperm(n, generator=generator, device=train_labels.device)


class _Fit:
    """The state of one training run: data on its device, optimiser, schedule, scaler."""

    def __init__(self, model: nn.Module, crops: torch.Tensor, labels: torch.Tensor,
                 train_index: torch.Tensor, options: TrainingOptions, device: torch.device):
        import torch
        from torch import nn

        self.model, self.crops, self.options, self.device = model, crops, options, device
        self.generator = torch.Generator(device=device).manual_seed(options.seed)
        self.train_index = train_index.to(crops.device)
        self.train_labels = labels[self.train_index].to(device)
        self.num_classes = _output_size(model)
        self.weights = class_weights(self.train_labels, self.num_classes).to(device)
        self.loss_weights = self.weights if options.balance == "weights" else None
        self.criterion = nn.CrossEntropyLoss(weight=self.loss_weights)
        optimizer_class = torch.optim.AdamW if options.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_class(model.parameters(), lr=options.lr,
                                         weight_decay=options.weight_decay)
        n = len(self.train_labels)
        steps_per_epoch = max(1, n // options.batch_size + (n % options.batch_size >= 2))
        self.scheduler = learning_rate_schedule(self.optimizer, options, steps_per_epoch)
        use_scaler = options.amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def epoch(self) -> tuple[float, float, int]:
        """One pass over the training cells: (mean loss, accuracy, cells seen)."""
        options, model = self.options, self.model
        model.train()
        order = _epoch_order(self.train_labels, self.weights, options, self.generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), options.batch_size):
            positions = order[start:start + options.batch_size]
            if len(positions) < 2:  # BatchNorm cannot train on one sample
                continue
            rows = self.train_index[positions.to(self.train_index.device)]
            x = self.crops[rows].to(self.device, non_blocking=True).float()
            y = self.train_labels[positions]
            if options.augment:
                x = augment_batch(x, self.generator, options.intensity_jitter)
            with _autocast(self.device, options.amp):
                logits = model(x)
                loss = self.criterion(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if options.schedule == "cosine":
                self.scheduler.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if options.schedule == "exponential":
            self.scheduler.step()
        return loss_sum / max(seen, 1), correct / max(seen, 1), seen

    def validate(self, crops: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
        """Loss (class-weighted like training), accuracy and balanced accuracy on ``crops``."""
        from torch import nn

        proba = predict_proba(self.model, crops, device=self.device)
        loss = nn.functional.nll_loss(proba.clamp_min(1e-7).log(), labels,
                                      weight=self.loss_weights)
        scores = classification_scores(labels.cpu().numpy(), proba.cpu().numpy(),
                                       [str(k) for k in range(self.num_classes)])
        return {"val_loss": float(loss), "val_accuracy": scores["accuracy"],
                "val_balanced_accuracy": scores["balanced_accuracy"]}


def train_classifier(
    model: nn.Module,
    crops: torch.Tensor,
    labels: torch.Tensor,
    train_index: torch.Tensor,
    validation_index: torch.Tensor | None = None,
    options: TrainingOptions | None = None,
    device: torch.device | None = None,
    description: str = "training",
) -> TrainedModel:
    """Train ``model`` on ``crops[train_index]``; keep the epoch of lowest validation loss.

    ``crops`` (N, C, S, S) float32 and ``labels`` (N,) long may live on the CPU or ``device``;
    batches are gathered by index (no per-item loader). Validation (and the BatchNorm refresh
    before it) runs from ``min_epochs`` on; without a validation set, training runs all
    epochs and keeps the last (see :class:`TrainingOptions`). Returns the model in eval mode.
    """
    import torch
    from tqdm.auto import tqdm

    from epikit.device import default_device

    options = options or TrainingOptions()
    device = torch.device(device) if device is not None else default_device()
    fit = _Fit(model.to(device), crops, labels, train_index, options, device)
    has_validation = validation_index is not None and len(validation_index) > 0
    if has_validation:
        val_crops = crops[validation_index.to(crops.device)]
        val_labels = labels[validation_index.to(labels.device)].to(device)
    min_epochs = options.epochs // 2 if options.min_epochs is None else options.min_epochs
    min_epochs = min(max(min_epochs, 1), options.epochs)

    history: list[dict[str, float | None]] = []
    best_loss, best_epoch, best_state, stale = math.inf, options.epochs, None, 0
    samples, started = 0, time.perf_counter()
    bar = tqdm(range(1, options.epochs + 1), desc=description, disable=not options.progress,
               leave=False, unit="epoch")
    with _deterministic(device):
        for epoch in bar:
            train_loss, train_accuracy, seen = fit.epoch()
            samples += seen
            record: dict[str, float | None] = {
                "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                "lr": fit.optimizer.param_groups[0]["lr"],
                "val_loss": None, "val_accuracy": None, "val_balanced_accuracy": None,
            }
            candidate = epoch >= min_epochs and (has_validation or epoch == options.epochs)
            if candidate and options.precise_bn:
                refresh_batch_norm(model, crops, fit.train_index, options.batch_size * 4, device)
            if candidate and has_validation:
                record.update(fit.validate(val_crops, val_labels))
                if record["val_loss"] < best_loss:
                    best_loss, best_epoch, stale = record["val_loss"], epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    stale += 1
            history.append(record)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items()
                             if k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
                             and v is not None})
            if stale >= options.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainedModel(model, best_epoch, history, samples, time.perf_counter() - started)


def refresh_batch_norm(
    model: nn.Module, crops: torch.Tensor, index: torch.Tensor, batch_size: int,
    device: torch.device,
) -> None:
    """Recompute every BatchNorm's running mean/variance as the average over ``crops[index]``."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad(), _autocast(device, True):
        for start in range(0, len(index), batch_size):
            batch = index[start:start + batch_size]
            if len(batch) > 1:
                model(crops[batch].to(device, non_blocking=True).float())
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _output_size(model: nn.Module) -> int:
    """Number of classes: the out_features of the model's last Linear layer."""
    from torch import nn

    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ModelError(f"{type(model).__name__} has no Linear output layer")
    return linear[-1].out_features


# ------------------------------------------------------------------- cross-validation


def validation_split(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of training cells held out for early stopping, whole groups at a time.

    About ``fraction`` of the groups, at least one per class; all False when ``fraction`` is
    0 or a class has fewer than three training groups (too few to spare one).
    """
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(len(labels), dtype=bool)
    fewest = min(len(np.unique(groups[labels == c])) for c in np.unique(labels))
    if fewest < 3:
        return np.zeros(len(labels), dtype=bool)
    parts = max(2, min(round(1 / fraction), fewest))
    return grouped_folds(labels, groups, parts, seed) == 0


def assign_folds(
    labels: np.ndarray, groups: np.ndarray, classes: Sequence[str], split: str, folds: int,
    seed: int,
) -> tuple[np.ndarray, list[int]]:
    """Test fold of every cell and the folds to evaluate, after checking the data allows them.

    ``group``: grouped K-fold; ``holdout``: one grouped fold of K (1/K of the groups) is the
    test set, the rest train (fold -1); ``cell``: stratified K-fold over cells (the study's).
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of: {', '.join(SPLITS)}")
    if folds < 2:
        raise ConfigError(f"folds must be >= 2 (got {folds}); --split holdout --folds 5 holds out 1/5")
    if split == "cell":
        cells = np.arange(len(labels))
        check_groups_per_class(labels, cells, classes, folds, what="cells")
        return grouped_folds(labels, cells, folds, seed), list(range(folds))
    check_groups_per_class(labels, groups, classes, folds, what="groups (images)")
    fold = grouped_folds(labels, groups, folds, seed)
    if split == "holdout":
        return np.where(fold == 0, 0, -1), [0]
    return fold, list(range(folds))


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


class FoldStore:
    """Finished folds of one cross-validation on disk, so an interrupted one resumes.

    Each fold is saved as ``fold_<k>.pt`` (weights, curves, out-of-fold probabilities; read
    back with ``weights_only=True``) together with a key: a hash of the crops, labels,
    groups, classifier, parameters, split and training options. A file whose key differs
    (other data or settings) is ignored and overwritten. Fold ``k`` is trained from its own
    seed, so a resumed cross-validation equals an uninterrupted one.
    """

    def __init__(self, directory: Path, key: str, build: Callable[[], nn.Module], device: torch.device) -> None:
        self.directory = directory
        self.key = key
        self.build = build
        self.device = device

    @staticmethod
    def fingerprint(crops: Any, labels: np.ndarray, groups: np.ndarray, classifier: str,
            params: dict[str, Any], split: str, folds: int, options: TrainingOptions) -> str:
        """Hash of everything a fold's result depends on."""
        digest = hashlib.sha256()
        array = np.ascontiguousarray(crops.cpu().numpy() if hasattr(crops, "cpu") else crops)
        for part in (array, labels, np.asarray(groups).astype(str)):
            digest.update(str(part.shape).encode())
            digest.update(part.tobytes())
        settings = {"classifier": classifier, "params": params, "split": split, "folds": folds,
                    "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "progress"}}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def path(self, fold: int) -> Path:
        """The file of fold ``fold``."""
        return self.directory / f"fold_{fold}.pt"

    def load(self, fold: int) -> tuple[TrainedModel, np.ndarray] | None:
        """The saved (model, out-of-fold probabilities) of ``fold``, or None if absent or stale."""
        import torch

        path = self.path(fold)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # a torn or foreign file: train the fold again
            log.warning("ignoring unreadable saved fold %s (%s)", path, error)
            return None
        if saved.get("key") != self.key:
            return None
        model = self.build()
        model.load_state_dict(saved["state_dict"])
        trained = TrainedModel(model.to(self.device).eval(), saved["best_epoch"], saved["history"],
                               saved["samples_seen"], saved["seconds"])
        log.info("fold %d: reusing the model saved in %s", fold, path)
        return trained, saved["test_proba"].numpy()

    def save(self, fold: int, trained: TrainedModel, test_proba: np.ndarray) -> None:
        """Write fold ``fold`` atomically."""
        import torch

        from epikit.io.store import atomic_path

        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(fold)) as temporary:
            torch.save({
                "key": self.key,
                "state_dict": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
                "best_epoch": int(trained.best_epoch),
                "history": [{k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}
                            for record in trained.history],
                "samples_seen": int(trained.samples_seen),
                "seconds": float(trained.seconds),
                "test_proba": torch.as_tensor(test_proba),
            }, temporary)


def cross_validate(
    crops: np.ndarray | torch.Tensor,
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

    ``crops`` (N, C, S, S) float, ``labels`` (N,) ints indexing ``classes``, ``groups`` (N,)
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
    from epikit.registry import get_classifier

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

    data = _place(torch.as_tensor(np.ascontiguousarray(crops)), device)
    targets = torch.as_tensor(labels).to(data.device)
    n, in_channels, crop_size = len(labels), data.shape[1], data.shape[-1]
    store = None
    if resume_dir is not None:
        weights_free = {k: v for k, v in params.items() if k != "pretrained"}  # the state dict has them
        store = FoldStore(
            Path(resume_dir), FoldStore.fingerprint(crops, labels, groups, classifier, params, split, folds, options),
            lambda: get_classifier(classifier, in_channels, len(classes), crop_size, **weights_free), device,
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
            test_proba = predict_proba(trained.model, data[torch.as_tensor(test_positions).to(data.device)],
                                       device=device).cpu().numpy()
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


def _available_memory() -> float:
    """Bytes of free RAM (Linux / macOS); infinity where the platform does not say."""
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return math.inf


def _place(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    """All crops as one tensor, float32 where it fits (else float16, batches widened later).

    On CUDA the tensor moves to the GPU when it takes under a third of the free memory;
    otherwise it stays in pinned host memory and batches are copied over.
    """
    import torch

    wide = data.nelement() * 4 < _available_memory() / 3 or data.dtype == torch.float32
    data = data.float() if wide else data.half()
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if data.element_size() * data.nelement() > free // 3:
            return data.pin_memory()
    return data.to(device)


def load_all_crops(dataset: Any, block: int = 4096) -> np.ndarray:
    """Every crop of a :class:`~epikit.dataset.CellDataset`: float32 if it fits in RAM, else float16."""
    n = len(dataset)
    shape = (n, len(dataset.channel_names), dataset.crop_size, dataset.crop_size)
    if 4 * math.prod(shape) < _available_memory() / 3:
        return dataset.load_crops(np.arange(n)).astype(np.float32, copy=False)
    crops = np.empty(shape, dtype=np.float16)
    for start in range(0, n, block):
        crops[start:start + block] = dataset.load_crops(np.arange(start, min(start + block, n)))
    return crops


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


# ------------------------------------------------------------------------ run folder


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

    path = run_dir / "cells.parquet"
    table = pd.read_parquet(path)
    old = [c for c in table.columns if c.split(":")[-1] in PREDICTION_COLUMNS
           or c.split(":")[-1].startswith("prob_")]
    table = table.drop(columns=old)
    position = pd.Series(np.arange(len(cell_ids)), index=pd.Index(cell_ids))
    rows = position.reindex(table["cell_id"]).to_numpy()
    if np.isnan(rows.astype(float)).any():
        raise DataError(f"{path} has cells the dataset does not: re-run extraction")
    rows = rows.astype(np.int64)
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
    classifier: str = "resnet10",
    params: dict[str, Any] | None = None,
    *,
    views: Sequence[str] | str | None = None,
    split: str = "group",
    folds: int = 5,
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
    Finished folds wait in ``.epikit/train_folds/`` until all are done, so an interrupted
    call, run again with the same settings, trains only the folds it had not finished.
    """
    import torch

    from epikit.dataset import CellDataset
    from epikit.io.store import atomic_path, update_metrics, write_json

    run_dir = Path(run_dir)
    options = TrainingOptions.from_mapping(training, recipe)
    dataset = CellDataset(run_dir)
    resolved = resolve_views(views, dataset.channel_names)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if len(labels) == 0:
        raise DataError(f"{run_dir / 'cells.parquet'} has no cells: nothing to train on")
    crops = load_all_crops(dataset)
    table = dataset.table
    image_ids = table["image_id"].to_numpy() if "image_id" in table else None
    results: dict[str, CrossValidation] = {}
    for view, channel_index in resolved.items():
        every = channel_index == list(range(crops.shape[1]))
        results[view] = cross_validate(
            crops if every else crops[:, channel_index], labels, np.asarray(dataset.groups),
            dataset.classes, classifier, params, split=split, folds=folds, options=options,
            image_ids=image_ids, table=table, device=device,
            description=view if len(resolved) > 1 else "",
            resume_dir=run_dir / FOLD_STORE / view,
        )

    several = len(resolved) > 1
    curves: dict[str, Any] = {}
    with atomic_path(run_dir / "model") as model_dir:
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
        write_json(model_dir / "training.json", {"primary_view": next(iter(results)),
                                                 "views": curves})
    _write_predictions(run_dir, table["cell_id"].to_numpy(), labels, results)
    summary = dict(next(iter(results.values())).metrics)
    if several:
        summary["views"] = {view: cv.metrics for view, cv in results.items()}
    update_metrics(run_dir, "classification", summary)
    shutil.rmtree(run_dir / FOLD_STORE, ignore_errors=True)
    return summary


# --------------------------------------------------------------------------- loading


def trained_views(run_dir: str | Path) -> dict[str, Any]:
    """``model/training.json``: per view its channels, classes, classifier, folds and curves."""
    from epikit.io.store import read_json

    info = read_json(Path(run_dir) / "model" / "training.json")
    if not info:
        raise ModelError(f"{Path(run_dir) / 'model'} has no trained model; run `epikit train` first")
    return info


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a checkpoint's network through the registry; return (model in eval mode, info).

    ``info`` is the checkpoint without its weights (classifier, params, channels, classes...).
    """
    import torch

    from epikit.device import default_device
    from epikit.registry import get_classifier

    device = torch.device(device) if device is not None else default_device()
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ModelError(f"cannot read checkpoint {path}: {error}") from error
    params = {k: v for k, v in checkpoint["params"].items() if k != "pretrained"}
    model = get_classifier(checkpoint["classifier"], checkpoint["in_channels"],
                           checkpoint["num_classes"], checkpoint["crop_size"], **params)
    model.load_state_dict(checkpoint["state_dict"])
    info = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    return model.to(device).eval(), info


def load_fold_models(
    run_dir: str | Path, view: str | None = None, device: torch.device | str | None = None
) -> dict[int, nn.Module]:
    """The trained fold models ``{fold: model}`` (eval mode) of ``view`` (default: the first).

    Checkpoints are read with ``weights_only=True`` and rebuilt from the registered
    classifier name and parameters stored in them.
    """
    return {fold: load_checkpoint(path, device)[0] for fold, path in checkpoint_paths(run_dir, view).items()}


def checkpoint_paths(run_dir: str | Path, view: str | None = None) -> dict[int, Path]:
    """``{fold: checkpoint path}`` of ``view`` (default: the first trained view)."""
    info = trained_views(run_dir)
    view = view or info["primary_view"]
    if view not in info["views"]:
        raise ModelError(
            f"no model trained for view {view!r} in {run_dir}; trained: {', '.join(info['views'])}"
        )
    directory = Path(run_dir) / "model" / info["views"][view]["directory"]
    return {entry["fold"]: directory / f"fold_{entry['fold']}.pt" for entry in info["views"][view]["folds"]}


def models_sha256(run_dir: str | Path, view: str | None = None) -> str:
    """One sha256 over the fold checkpoints of ``view``: identifies the models that made a result."""
    digest = hashlib.sha256()
    for fold, path in sorted(checkpoint_paths(run_dir, view).items()):
        digest.update(f"{fold}:".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
