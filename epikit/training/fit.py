"""The fit loop shared by every classifier: :func:`train_classifier` on a crop source.

AdamW (or Adam), cross-entropy on logits with class-balanced weights (or sampling), flips /
90-degree rotations / intensity jitter applied to whole batches on the device, early stopping
on the validation loss, mixed precision on CUDA, best-epoch weights kept. Networks and
batches are laid out channels-last (NHWC) while training and predicting: the same arithmetic,
1.15-1.35x faster convolutions, pooling and BatchNorm on the CPU (bench/README.md, "Study
scale"), and the layout tensor cores want on a GPU. Crops come from a
:mod:`~epikit.training.crop_source`: a tensor, or ``crops.zarr`` read pool by pool.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from epikit.classification_metrics import classification_scores
from epikit.errors import ModelError
from epikit.options import TrainingOptions
from epikit.training.crop_source import CropSource, as_source

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn



@dataclass
class TrainedModel:
    """One trained network: weights of the best epoch and the per-epoch curves."""

    model: nn.Module
    best_epoch: int
    history: list[dict[str, float | None]]
    samples_seen: int
    seconds: float


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


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D batch in channels-last memory layout (other tensors unchanged)."""
    import torch

    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def predict_proba(
    model: nn.Module, crops: torch.Tensor | CropSource, batch_size: int = 256,
    device: torch.device | None = None, amp: bool = True, rows: Any = None,
) -> torch.Tensor:
    """Class probabilities (N, K) float32 on ``device`` for ``crops`` (softmax of the logits).

    ``crops``: a tensor or a :class:`~epikit.training.crop_source.CropSource`; ``rows``: which
    of its crops, in order (default: all). ``amp``: mixed precision on CUDA (as
    :class:`~epikit.options.TrainingOptions` ``amp``).
    """
    import torch

    device = device or next(model.parameters()).device
    source = as_source(crops)
    rows = torch.arange(len(source)) if rows is None else torch.as_tensor(rows)
    model.eval()
    parts = []
    with torch.inference_mode(), _autocast(device, amp):
        for block in source.blocks(rows, batch_size):
            batch = channels_last(block.to(device, non_blocking=True).float())
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
    """The state of one training run: crops, labels on the device, optimiser, schedule, scaler."""

    def __init__(self, model: nn.Module, crops: CropSource, labels: torch.Tensor,
                 train_index: torch.Tensor, options: TrainingOptions, device: torch.device):
        import torch
        from torch import nn

        self.model, self.crops, self.options, self.device = model, crops, options, device
        self.generator = torch.Generator(device=device).manual_seed(options.seed)
        self.train_index = train_index.to(device)
        self.labels = labels.to(device)
        self.train_labels = self.labels[self.train_index]
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
        for rows, x in self.crops.batches(self.train_index[order], options.batch_size, self.generator):
            if len(rows) < 2:  # BatchNorm cannot train on one sample
                continue
            x = x.to(self.device, non_blocking=True).float()
            y = self.labels[rows.to(self.device)]
            if options.augment:
                x = augment_batch(x, self.generator, options.intensity_jitter)
            x = channels_last(x)
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

    def validate(self, rows: torch.Tensor) -> dict[str, float | None]:
        """Loss (class-weighted like training), accuracy and balanced accuracy on crops ``rows``."""
        from torch import nn

        proba = predict_proba(self.model, self.crops, device=self.device, amp=self.options.amp, rows=rows)
        labels = self.labels[rows.to(self.device)]
        loss = nn.functional.nll_loss(proba.clamp_min(1e-7).log(), labels,
                                      weight=self.loss_weights)
        scores = classification_scores(labels.cpu().numpy(), proba.cpu().numpy(),
                                       [str(k) for k in range(self.num_classes)])
        return {"val_loss": float(loss), "val_accuracy": scores["accuracy"],
                "val_balanced_accuracy": scores["balanced_accuracy"]}


def train_classifier(
    model: nn.Module,
    crops: torch.Tensor | CropSource,
    labels: torch.Tensor,
    train_index: torch.Tensor,
    validation_index: torch.Tensor | None = None,
    options: TrainingOptions | None = None,
    device: torch.device | None = None,
    description: str = "training",
) -> TrainedModel:
    """Train ``model`` on ``crops[train_index]``; keep the epoch of lowest validation loss.

    ``crops``: (N, C, S, S) float tensor on the CPU or ``device``, or a
    :class:`~epikit.training.crop_source.CropSource`; ``labels`` (N,) long. Batches are
    gathered by index (no per-item loader). Validation (and the BatchNorm refresh
    before it) runs from ``min_epochs`` on; without a validation set, training runs all
    epochs and keeps the last (see :class:`TrainingOptions`). Returns the model in eval mode.
    """
    import torch
    from tqdm.auto import tqdm

    from epikit.device import default_device

    options = options or TrainingOptions()
    device = torch.device(device) if device is not None else default_device()
    source = as_source(crops)
    fit = _Fit(model.to(device, memory_format=torch.channels_last), source, labels, train_index, options, device)
    has_validation = validation_index is not None and len(validation_index) > 0
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
                refresh_batch_norm(model, source, fit.train_index, options.batch_size * 4, device, options.amp)
            if candidate and has_validation:
                record.update(fit.validate(validation_index))
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
    model: nn.Module, crops: torch.Tensor | CropSource, index: torch.Tensor, batch_size: int,
    device: torch.device, amp: bool = True,
) -> None:
    """Recompute every BatchNorm's running mean/variance as the average over the crops ``index``
    (``amp``: in mixed precision on CUDA)."""
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
    with torch.no_grad(), _autocast(device, amp):
        for batch in as_source(crops).blocks(index, batch_size):
            if len(batch) > 1:
                model(channels_last(batch.to(device, non_blocking=True).float()))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _output_size(model: nn.Module) -> int:
    """Number of classes: the out_features of the model's last Linear layer."""
    from torch import nn

    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ModelError(f"{type(model).__name__} has no Linear output layer")
    return linear[-1].out_features
