"""Training the nuclei Mask R-CNN: on the simulator or on annotated images.

    >>> from epikit.segmenters.maskrcnn_train import train_maskrcnn
    >>> train_maskrcnn("nuclei.pt", data="simulate", steps=3000)      # doctest: +SKIP

Every step draws ``batch`` fresh training fields: from the simulator, a new field with
diverse settings (:func:`epikit.simulate.sample_diverse_field_params`) each time; from user
data, a random ``size`` x ``size`` crop at a random zoom. Fields are augmented (flips,
rot90, contrast, gamma, noise) and built in a background worker process. The optimiser is
AdamW with warm-up and cosine decay. Checkpoints (fp16) and their metadata sidecar are
written atomically every ``checkpoint_every`` steps, so an interrupted run is usable; the
final sidecar adds the average precision on held-out simulated fields.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from epikit.errors import ConfigError, DataError
from epikit.io.store import atomic_path, sha256_file, write_json
from epikit.segmenters.maskrcnn_model import (
    ModelConfig,
    build_model,
    checkpoint_dict,
    count_parameters,
    load_model,
    normalise_nuclear,
    sidecar_path,
)

VALIDATION_SEED = 900_001
MIN_OBJECT_AREA = 4


def targets_from_labels(labels: np.ndarray) -> dict[str, torch.Tensor]:
    """torchvision detection targets (boxes x0,y0,x1,y1 exclusive, labels, uint8 masks)."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    masks = [labels == i for i in ids]
    masks = [m for m in masks if m.sum() >= MIN_OBJECT_AREA]
    height, width = labels.shape
    if not masks:
        return {
            "boxes": torch.zeros((0, 4), dtype=torch.float32),
            "labels": torch.zeros((0,), dtype=torch.int64),
            "masks": torch.zeros((0, height, width), dtype=torch.uint8),
        }
    stack = torch.from_numpy(np.stack(masks).astype(np.uint8))
    rows, cols = stack.any(dim=2), stack.any(dim=1)
    y0 = rows.float().argmax(dim=1)
    y1 = height - rows.flip(1).float().argmax(dim=1)
    x0 = cols.float().argmax(dim=1)
    x1 = width - cols.flip(1).float().argmax(dim=1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return {"boxes": boxes, "labels": torch.ones(len(masks), dtype=torch.int64), "masks": stack}


def augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random rot90/flips (same for labels) and contrast/gamma/noise on a normalised image."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    image = image * rng.uniform(0.75, 1.3) + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.5:
        gamma = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        image = np.sign(image) * np.abs(image) ** gamma
    if rng.random() < 0.3:
        image = image + rng.normal(0.0, rng.uniform(0.005, 0.06), image.shape)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(labels)


class SimulatedFields:
    """Fresh ``size`` x ``size`` simulated fields with diverse settings (nuclear channel).

    A fraction ``empty`` of the fields has no nuclei (background, illumination and noise
    only), so the model learns that a nucleus-free field - stretched to full contrast by the
    per-image normalisation - holds nothing.
    """

    def __init__(self, size: int, empty: float = 0.05) -> None:
        self.size, self.empty = size, empty
        self.description = (
            "epikit.simulate fields, settings from sample_diverse_field_params, fresh each step, "
            f"{empty:.0%} without nuclei"
        )

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One field's raw nuclear channel and labels."""
        from epikit.simulate import sample_diverse_field_params, simulate_field

        params = sample_diverse_field_params(rng, size=(self.size, self.size))
        if rng.random() < self.empty:
            params["n_nuclei"] = 0
        field = simulate_field(rng, **params)
        return field.image[0].astype(np.float32), field.labels


class AnnotatedCrops:
    """Random crops of annotated images at a random zoom (``zoom`` range, log-uniform)."""

    def __init__(self, images: list[Any], size: int, zoom: tuple[float, float] = (0.7, 1.4)) -> None:
        if not images:
            raise DataError("no annotated images to train on")
        self.images, self.size, self.zoom = images, size, zoom
        self.description = f"{len(images)} annotated images, random {size}px crops, zoom {zoom[0]}-{zoom[1]}"

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One crop's raw nuclear channel and labels."""
        from skimage.transform import rescale

        sample = self.images[int(rng.integers(len(self.images)))]
        zoom = float(np.exp(rng.uniform(*np.log(self.zoom))))
        image = rescale(sample.image, zoom, order=1, preserve_range=True, anti_aliasing=zoom < 1).astype(np.float32)
        labels = rescale(sample.labels, zoom, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        pad_y, pad_x = max(0, self.size - image.shape[0]), max(0, self.size - image.shape[1])
        if pad_y or pad_x:
            image = np.pad(image, ((0, pad_y), (0, pad_x)), mode="reflect" if min(image.shape) > 1 else "edge")
            labels = np.pad(labels, ((0, pad_y), (0, pad_x)))
        y = int(rng.integers(image.shape[0] - self.size + 1))
        x = int(rng.integers(image.shape[1] - self.size + 1))
        return image[y : y + self.size, x : x + self.size], labels[y : y + self.size, x : x + self.size]


class TrainingStream(IterableDataset):
    """An endless stream of augmented (image tensor (1, S, S), target dict) samples."""

    def __init__(self, source: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]], seed: int) -> None:
        super().__init__()
        self.source, self.seed = source, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            raw, labels = self.source(rng)
            image, labels = augment(normalise_nuclear(raw), labels, rng)
            yield torch.from_numpy(image)[None], targets_from_labels(labels)


def _collate(samples: list[Any]) -> list[Any]:
    return samples


def learning_rate(progress: float, step: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 2% of ``base`` at progress 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def validate(model: torch.nn.Module, fields: int, size: int, seed: int = VALIDATION_SEED) -> dict[str, Any]:
    """AP of ``model`` on ``fields`` simulated ``size`` x ``size`` fields (default settings)."""
    from epikit.analysis.segmentation_metrics import evaluate_segmentation
    from epikit.segmenters.maskrcnn import MaskRCNNSegmenter
    from epikit.simulate import simulate_field

    was_training = model.training
    segmenter = MaskRCNNSegmenter(model=model)
    rng = np.random.default_rng(seed)
    ap50, mean_ap = [], []
    for _ in range(fields):
        field = simulate_field(rng, size=(size, size), channels=("Hoechst",))
        scores = evaluate_segmentation(segmenter.segment(field.image.astype(np.float32)), field.labels)
        ap50.append(scores["ap_50"])
        mean_ap.append(scores["mean_ap"])
    model.train(was_training)
    return {
        "fields": fields,
        "size": size,
        "seed": seed,
        "simulator": "epikit.simulate.simulate_field defaults",
        "ap50": float(np.mean(ap50)),
        "mean_ap": float(np.mean(mean_ap)),
    }


@dataclass
class TrainingSettings:
    """What a training run was asked to do (recorded in the sidecar)."""

    data: str
    steps: int
    batch: int
    size: int
    lr: float
    seed: int
    workers: int
    checkpoint_every: int
    max_minutes: float | None
    val_fields: int
    val_size: int


def _save(out: Path, model: torch.nn.Module, config: ModelConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write checkpoint then sidecar (each atomically); return the sidecar content."""
    with atomic_path(out) as tmp:
        torch.save(checkpoint_dict(model, config), tmp)
    metadata = {**metadata, "sha256": sha256_file(out), "size_bytes": out.stat().st_size}
    write_json(sidecar_path(out), metadata)
    return metadata


def _make_source(data: str | Path, size: int, nuclear_channel: int) -> Any:
    if str(data) == "simulate":
        return SimulatedFields(size)
    from epikit.segmenters.dsb import load_training_images

    images = load_training_images(Path(data), nuclear_channel=nuclear_channel)
    source = AnnotatedCrops(images, size)
    source.description = f"{data}: " + source.description
    return source


def train_maskrcnn(
    out: str | Path,
    data: str | Path = "simulate",
    steps: int = 3000,
    batch: int = 2,
    size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    config: ModelConfig | None = None,
    nuclear_channel: int = 0,
    workers: int = 1,
    checkpoint_every: int = 250,
    max_minutes: float | None = None,
    val_fields: int = 10,
    val_size: int = 512,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a nuclei Mask R-CNN and write ``out`` (fp16 checkpoint) + ``out`` sidecar JSON.

    ``data`` is ``"simulate"`` or a folder of annotated images (see :mod:`epikit.segmenters.dsb`).
    Runs on epikit's default device. ``val_fields`` simulated fields of ``val_size`` pixels
    (a seed never used in training) give the validation AP; 0 skips validation.
    ``max_minutes`` bounds the training time on shared machines: the learning-rate schedule
    follows whichever of steps or time is further along and training stops when time is up
    (the sidecar records the steps actually taken).
    Returns the sidecar metadata.
    """
    from epikit.device import default_device
    from epikit.plugins import epikit_version

    if steps < 1 or batch < 1 or size < 64 or size % 32:
        raise ConfigError(f"need steps >= 1, batch >= 1 and size a multiple of 32 >= 64 (got {steps}, {batch}, {size})")
    out = Path(out)
    config = config or ModelConfig()
    settings = TrainingSettings(
        str(data), steps, batch, size, lr, seed, workers, checkpoint_every, max_minutes, val_fields, val_size
    )
    source = _make_source(data, size, nuclear_channel)
    torch.manual_seed(seed)
    device = default_device()
    model = build_model(config).to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loader = DataLoader(
        TrainingStream(source, seed),
        batch_size=batch,
        collate_fn=_collate,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    metadata: dict[str, Any] = {
        "format": "epikit-maskrcnn",
        "architecture": {
            "description": "torchvision MaskRCNN, 4-stage GroupNorm CNN + FPN P2-P6, 1-channel percentile-normalised input",
            "config": config.to_dict(),
            "parameters": count_parameters(model),
            "normalisation": "per-image percentiles (1, 99.8) of the nuclear channel -> 0, 1",
        },
        "training_data": source.description,
        "settings": vars(settings),
        "command": command or " ".join(sys.argv),
        "epikit_version": epikit_version(),
        "torch_version": torch.__version__,
        "device": str(device),
        "platform": platform.platform(),
    }
    curve: list[dict[str, float]] = []
    recent: list[float] = []
    started = time.monotonic()
    stream = iter(loader)
    budget = max_minutes * 60 if max_minutes else math.inf
    done = 0
    for step in range(steps):
        progress = max(step / steps, (time.monotonic() - started) / budget)
        if progress >= 1.0:
            log(f"time budget of {max_minutes} min reached after {step} steps")
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(progress, step, lr)
        samples = next(stream)
        images = [image.to(device) for image, _ in samples]
        targets = [{k: v.to(device) for k, v in target.items()} for _, target in samples]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise DataError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        recent = (recent + [loss.item()])[-50:]
        done = step + 1
        if done % 25 == 0 or done == steps or time.monotonic() - started >= budget:
            entry = {"step": done, "loss": float(np.mean(recent)), "seconds": round(time.monotonic() - started, 1)}
            entry.update({k: round(v.item(), 4) for k, v in losses.items()})
            curve.append(entry)
            log(f"step {done}/{steps} loss {entry['loss']:.4f} ({entry['seconds']:.0f} s)")
        if done % checkpoint_every == 0 and done < steps:
            _save(out, model, config, {**metadata, "steps": done, "complete": False,
                                       "final_loss": float(np.mean(recent)), "loss_curve": curve})
    metadata.update(
        steps=done,
        complete=True,
        final_loss=float(np.mean(recent)),
        train_seconds=round(time.monotonic() - started, 1),
        loss_curve=curve,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    metadata = _save(out, model, config, metadata)
    if val_fields > 0:
        # Validate what was written (fp16 weights), not the fp32 model in memory.
        trained, _, _ = load_model(out, device=device)
        metadata["validation"] = validate(trained, val_fields, val_size)
        write_json(sidecar_path(out), metadata)
        log(f"validation AP@0.5 {metadata['validation']['ap50']:.3f} mean AP {metadata['validation']['mean_ap']:.3f}")
    return metadata
