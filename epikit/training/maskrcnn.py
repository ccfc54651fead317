"""Training the nuclei Mask R-CNN: on annotated images (DSB2018 or label pairs) and the simulator.

    >>> from epikit.training.maskrcnn import train_maskrcnn
    >>> train_maskrcnn("nuclei.pt", data="stage1_train", steps=6500)      # doctest: +SKIP

Every step draws ``batch`` samples: random crops of the annotated images, each magnified so
its nuclei measure the config's ``nucleus_diameter`` (times a random zoom) as inference
resamples fields, mixed with fresh simulated fields brought to the same size. Samples are
varied as other microscopes would (uneven light, dim 8-bit exposures), normalised, augmented
(flips, rot90, contrast, gamma, noise) and built in a background worker process. The
optimiser is AdamW with warm-up and cosine decay. A fixed share of the annotated images,
chosen by a hash of their id, is held out. Checkpoints (fp16), their metadata sidecar and
the full resumable state are written atomically every ``checkpoint_every`` steps; the final
sidecar adds the scores on the held-out images and on simulated fields.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from epikit.errors import ConfigError, DataError
from epikit.io.store import atomic_path, sha256_file, write_json
from epikit.segmenters.maskrcnn_model import (
    ModelConfig,
    build_model,
    checkpoint_dict,
    count_parameters,
    load_model,
    sidecar_path,
)
from epikit.training.maskrcnn_samples import AnnotatedCrops, MixedSource, SimulatedFields, TrainingStream

VALIDATION_SEED = 900_001
#: Multiples of the trained nucleus size tried as the inference size on the held-out images.
INFERENCE_ZOOMS = (1.0, 1.15, 1.3, 1.45)


def _collate(samples: list[Any]) -> list[Any]:
    return samples


def learning_rate(progress: float, step: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 2% of ``base`` at progress 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def validation_names(names: list[str], fraction: float, salt: str = "epikit-validation") -> list[str]:
    """The fixed held-out subset of ``names``: those whose salted sha256 falls below ``fraction``.

    Each name's membership depends on the name alone, so adding or removing other images
    never moves an image between training and validation.
    """
    def position(name: str) -> float:
        return int(hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()[:12], 16) / 16**12

    return sorted(name for name in names if position(name) < fraction)


def _average_scores(segmenter: Any, pairs: Iterator[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Per-image DSB scores of ``segmenter`` averaged over images (the DSB2018 convention)."""
    from epikit.analysis.segmentation_metrics import evaluate_segmentation

    scores = [evaluate_segmentation(segmenter.segment(image[None]), labels) for image, labels in pairs]
    keys = ("ap_50", "mean_ap", "f1")
    return {"images": len(scores), **{key: float(np.mean([s[key] for s in scores])) for key in keys}}


def validate(model: torch.nn.Module, fields: int, size: int, seed: int = VALIDATION_SEED) -> dict[str, Any]:
    """AP of ``model`` on ``fields`` simulated ``size`` x ``size`` fields (default settings)."""
    from epikit.segmenters.maskrcnn import MaskRCNNSegmenter
    from epikit.simulate import simulate_field

    rng = np.random.default_rng(seed)
    simulated = (simulate_field(rng, size=(size, size), channels=("Hoechst",)) for _ in range(fields))
    scores = _average_scores(
        MaskRCNNSegmenter(model=model), ((f.image[0].astype(np.float32), f.labels) for f in simulated)
    )
    return {"size": size, "seed": seed, "simulator": "epikit.simulate.simulate_field defaults", **scores}


def validate_annotated(model: torch.nn.Module, images: list[Any]) -> dict[str, Any]:
    """AP of ``model`` (default inference: estimated diameter) on held-out annotated images."""
    from epikit.segmenters.maskrcnn import MaskRCNNSegmenter

    scores = _average_scores(MaskRCNNSegmenter(model=model), ((i.image, i.labels) for i in images))
    return {"ids": [image.name for image in images], **scores}


def select_inference_diameter(
    model: torch.nn.Module, config: ModelConfig, held_out: list[Any], zooms: tuple[float, ...] = INFERENCE_ZOOMS
) -> tuple[ModelConfig, dict[str, Any]]:
    """``config`` with the inference size at which ``model`` scores best on ``held_out``.

    Fields are resampled so nuclei measure ``nucleus_diameter x zoom`` for each zoom; the zoom
    with the highest mean AP (DSB2018 metric, averaged over images) wins. Returns the new
    config and the record for the sidecar (every zoom's scores, the ids, the choice).
    """
    grid = []
    for zoom in zooms:
        model.nucleus_diameter = config.nucleus_diameter * zoom
        grid.append({"zoom": zoom, **validate_annotated(model, held_out)})
    best = max(grid, key=lambda row: row["mean_ap"])
    chosen = replace(config, inference_diameter=round(config.nucleus_diameter * best["zoom"], 3))
    record = {"ids": best["ids"], "inference_diameter": chosen.inference_diameter,
              "zooms": [{k: v for k, v in row.items() if k != "ids"} for row in grid],
              **{k: best[k] for k in ("images", "ap_50", "mean_ap", "f1")}}
    return chosen, record


def finish_training(
    out: Path, held_out: list[Any], val_fields: int, val_size: int, device: Any, log: Callable[[str], None]
) -> dict[str, Any]:
    """Choose the inference size on the held-out images, rewrite ``out``, then validate on the simulator.

    Reads the checkpoint and sidecar written at the end of training (so what is validated is
    the fp16 file users get) and writes both again. Returns the final sidecar.
    """
    metadata = json.loads(sidecar_path(out).read_text())
    model, config, _ = load_model(out, device=device)
    if held_out:
        config, metadata["validation"] = select_inference_diameter(model, config, held_out)
        metadata["architecture"]["config"] = config.to_dict()
        log(f"held-out AP@0.5 {metadata['validation']['ap_50']:.3f} mean AP {metadata['validation']['mean_ap']:.3f} "
            f"(inference nucleus size {config.inference_diameter:g} px)")
        metadata = _save(out, model, config, metadata)
    if val_fields > 0:
        trained, _, _ = load_model(out, device=device)
        metadata["validation_simulated"] = validate(trained, val_fields, val_size)
        log(f"simulated AP@0.5 {metadata['validation_simulated']['ap_50']:.3f}")
        write_json(sidecar_path(out), metadata)
    return metadata


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
    val_fraction: float
    simulated_fraction: float
    init: str | None


def _save(out: Path, model: torch.nn.Module, config: ModelConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    """Write checkpoint then sidecar (each atomically); return the sidecar content."""
    with atomic_path(out) as tmp:
        torch.save(checkpoint_dict(model, config), tmp)
    metadata = {**metadata, "sha256": sha256_file(out), "size_bytes": out.stat().st_size}
    write_json(sidecar_path(out), metadata)
    return metadata


def resume_path(out: Path) -> Path:
    """Where an unfinished run keeps its full training state (``<out stem>.resume.pt``)."""
    return Path(out).with_suffix(".resume.pt")


def _load_resume(out: Path, settings: TrainingSettings) -> dict[str, Any] | None:
    """The saved state of an interrupted run with the same settings, else None."""
    path = resume_path(out)
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("settings") != vars(settings):
        raise ConfigError(
            f"{path} holds an interrupted run with other settings ({state.get('settings')}); "
            "rerun that command to finish it, or delete the file to start afresh"
        )
    return state


def _make_sources(
    data: str | Path, size: int, nuclear_channel: int, config: ModelConfig, val_fraction: float, simulated: float
) -> tuple[Any, list[Any]]:
    """The training sample source and the held-out annotated images."""
    diameter = config.nucleus_diameter
    if str(data) == "simulate":
        return SimulatedFields(size, diameter=diameter), []
    from epikit.io.annotated import load_training_images

    images = load_training_images(Path(data), nuclear_channel=nuclear_channel, fluorescence_only=True)
    held_out = set(validation_names([image.name for image in images], val_fraction))
    training = [image for image in images if image.name not in held_out]
    crops = AnnotatedCrops(training, size, diameter=diameter)
    crops.description = f"{data}: {crops.description} ({len(held_out)} more held out for validation)"
    source = MixedSource([(crops, 1.0 - simulated), (SimulatedFields(size, diameter=diameter), simulated)])
    return source, [image for image in images if image.name in held_out]


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
    val_fraction: float = 0.1,
    simulated_fraction: float = 0.15,
    init: str | Path | None = None,
    data_source: str | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train a nuclei Mask R-CNN and write ``out`` (fp16 checkpoint) + ``out`` sidecar JSON.

    ``data`` is ``"simulate"`` or a folder of annotated images (see :mod:`epikit.io.annotated`;
    of a DSB2018 folder only the fluorescence images are used). A fixed ``val_fraction`` of
    the annotated images (:func:`validation_names`) is held out; ``simulated_fraction`` of the
    samples are simulated fields. Every sample is brought to the config's ``nucleus_diameter``.
    ``init`` starts from the weights of an existing checkpoint (same architecture);
    ``data_source`` (where the data came from and its licence) is recorded in the sidecar.
    Runs on epikit's default device. ``val_fields`` simulated fields of ``val_size`` pixels
    (a seed never used in training) give the simulator's validation AP; 0 skips it.
    ``max_minutes`` bounds the training time on shared machines: the learning-rate schedule
    follows whichever of steps or time is further along and training stops when time is up
    (the sidecar records the steps actually taken). Every ``checkpoint_every`` steps the
    full state goes to :func:`resume_path`; the same call after an interruption continues
    from there (its data stream is reseeded at the resumed step). Returns the sidecar metadata.
    """
    from epikit.device import default_device
    from epikit.plugins import epikit_version

    if steps < 1 or batch < 1 or size < 64 or size % 32:
        raise ConfigError(f"need steps >= 1, batch >= 1 and size a multiple of 32 >= 64 (got {steps}, {batch}, {size})")
    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= simulated_fraction <= 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1) and simulated_fraction in [0, 1], got {val_fraction}, {simulated_fraction}")
    out = Path(out)
    config = config or ModelConfig()
    settings = TrainingSettings(
        str(data), steps, batch, size, lr, seed, workers, checkpoint_every, max_minutes, val_fields, val_size,
        val_fraction, simulated_fraction, None if init is None else str(init),
    )
    source, held_out = _make_sources(data, size, nuclear_channel, config, val_fraction, simulated_fraction)
    torch.manual_seed(seed)
    device = default_device()
    model = build_model(config).to(device).train()
    init_record = None
    if init is not None:
        initial, _, init_path = load_model(init, device=device)
        model.load_state_dict(initial.state_dict())
        init_record = {"path": str(init), "sha256": sha256_file(init_path)}
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    state = _load_resume(out, settings)
    first, curve, recent, elapsed = 0, [], [], 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        first, curve, recent, elapsed = state["step"], state["curve"], state["recent"], state["elapsed"]
        log(f"resuming {resume_path(out)} at step {first}")
    loader = DataLoader(
        TrainingStream(source, seed, start=first),
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
        "data_source": data_source,
        "init": init_record,
        "settings": vars(settings),
        "command": command or " ".join(sys.argv),
        "epikit_version": epikit_version(),
        "torch_version": torch.__version__,
        "device": str(device),
        "platform": platform.platform(),
    }
    started = time.monotonic() - elapsed
    stream = iter(loader)
    budget = max_minutes * 60 if max_minutes else math.inf
    done = first
    for step in range(first, steps):
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
            with atomic_path(resume_path(out)) as tmp:
                torch.save({"settings": vars(settings), "step": done, "model": model.state_dict(),
                            "optimiser": optimiser.state_dict(), "curve": curve, "recent": recent,
                            "elapsed": time.monotonic() - started}, tmp)
    metadata.update(
        steps=done,
        complete=True,
        resumed_at=first or None,
        final_loss=float(np.mean(recent)),
        train_seconds=round(time.monotonic() - started, 1),
        loss_curve=curve,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    _save(out, model, config, metadata)
    resume_path(out).unlink(missing_ok=True)
    return finish_training(out, held_out, val_fields, val_size, device, log)
