"""Training samples for the nuclei Mask R-CNN: annotated crops and simulated fields at one nucleus size.

Each source is a callable ``source(rng) -> (raw nuclear image, labels)``; a
:class:`TrainingStream` turns one into an endless stream of augmented, normalised tensors
with torchvision detection targets. Annotated crops and simulated fields are magnified so
their nuclei measure the size inference resamples fields to, times a random zoom.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from epikit.errors import DataError
from epikit.segmenters.maskrcnn_model import normalise_nuclear
from epikit.segmenters.scale import diameter_from_labels, resample

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


def vary_acquisition(raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Imitate other microscopes on a raw nuclear image: uneven illumination, dim 8-bit exposures.

    With probability 0.3 the field is lit by a smooth tilted/vignetted profile plus an offset;
    with probability 0.3 it is rescaled to a dim exposure (peak 4-60 grey levels) with shot
    noise and integer quantisation - the texture that over-splits dim nuclei.
    """
    image = raw.astype(np.float32)
    low, high = np.percentile(image, (1.0, 99.8))
    span = max(float(high - low), 1e-6)
    if rng.random() < 0.3:
        yy, xx = np.mgrid[-1 : 1 : image.shape[0] * 1j, -1 : 1 : image.shape[1] * 1j]
        tilt = 1.0 + rng.uniform(-0.5, 0.5) * yy + rng.uniform(-0.5, 0.5) * xx
        vignette = 1.0 - rng.uniform(0.0, 0.4) * (yy**2 + xx**2) / 2
        offset = rng.uniform(0.0, 0.6) * span * (1.0 + rng.uniform(-0.5, 0.5) * xx)
        image = (image - low) * np.clip(tilt * vignette, 0.2, None) + low + offset
    if rng.random() < 0.3:
        peak = float(np.exp(rng.uniform(np.log(4.0), np.log(60.0))))
        scaled = np.clip((image - low) / span, 0.0, None) * peak + rng.uniform(0.0, 3.0)
        image = np.floor(rng.poisson(scaled).astype(np.float32))
    return image.astype(np.float32)


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


def crop_at_scale(
    image: np.ndarray, labels: np.ndarray, factor: float, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``size`` x ``size`` window of ``image``/``labels`` magnified by ``factor``.

    The window is cut first and resampled after (cheap for large images). Fields smaller
    than the window are padded with their background level and no labels.
    """
    window = max(1, math.ceil(size / factor))
    pad_y, pad_x = max(0, window - image.shape[0]), max(0, window - image.shape[1])
    if pad_y or pad_x:
        background = float(np.percentile(image, 1.0))
        image = np.pad(image, ((0, pad_y), (0, pad_x)), constant_values=background)
        labels = np.pad(labels, ((0, pad_y), (0, pad_x)))
    y = int(rng.integers(image.shape[0] - window + 1))
    x = int(rng.integers(image.shape[1] - window + 1))
    image, labels = image[y : y + window, x : x + window], labels[y : y + window, x : x + window]
    return resample(image, (size, size)), resample(labels, (size, size), labels=True)


def _zoom(rng: np.random.Generator, zoom: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(*np.log(zoom))))


class SimulatedFields:
    """Fresh simulated fields with diverse settings (nuclear channel), brought to ``diameter``.

    A fraction ``empty`` of the fields has no nuclei (background, illumination and noise
    only), so the model learns that a nucleus-free field - stretched to full contrast by the
    per-image normalisation - holds nothing. With ``diameter`` each field is magnified so its
    nuclei measure ``diameter`` pixels (times a random ``zoom``), as inference does.
    """

    def __init__(
        self, size: int, empty: float = 0.05, diameter: float | None = None, zoom: tuple[float, float] = (0.7, 1.4)
    ) -> None:
        self.size, self.empty, self.diameter, self.zoom = size, empty, diameter, zoom
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
        image, labels = field.image[0].astype(np.float32), field.labels
        measured = diameter_from_labels(labels)
        if self.diameter is None or measured is None:
            return image, labels
        return crop_at_scale(image, labels, self.diameter / measured * _zoom(rng, self.zoom), self.size, rng)


class AnnotatedCrops:
    """Random crops of annotated images, each magnified so its nuclei measure ``diameter`` px.

    Every image's typical diameter is the median over its labelled nuclei; a random ``zoom``
    (log-uniform) spreads sizes around ``diameter`` so an imperfect size estimate at inference
    is tolerated. Without ``diameter`` the crops keep the images' own scale (times ``zoom``).
    """

    def __init__(
        self, images: list[Any], size: int, diameter: float | None = None, zoom: tuple[float, float] = (0.7, 1.4)
    ) -> None:
        if not images:
            raise DataError("no annotated images to train on")
        self.images, self.size, self.diameter, self.zoom = images, size, diameter, zoom
        self.factors = [
            1.0 if diameter is None or measured is None else diameter / measured
            for measured in (diameter_from_labels(sample.labels) for sample in images)
        ]
        target = f"nuclei brought to {diameter:g} px" if diameter else "native scale"
        self.description = f"{len(images)} annotated images, random {size}px crops, {target}, zoom {zoom[0]}-{zoom[1]}"

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One crop's raw nuclear channel and labels."""
        index = int(rng.integers(len(self.images)))
        sample = self.images[index]
        factor = self.factors[index] * _zoom(rng, self.zoom)
        return crop_at_scale(sample.image.astype(np.float32), sample.labels, factor, self.size, rng)


class MixedSource:
    """Draws each sample from one of several sources with the given probabilities."""

    def __init__(self, sources: list[tuple[Any, float]]) -> None:
        self.sources = [source for source, weight in sources if weight > 0]
        weights = np.array([weight for _, weight in sources if weight > 0], dtype=float)
        self.weights = weights / weights.sum()
        self.description = " + ".join(
            f"{weight:.0%} {source.description}" for source, weight in zip(self.sources, self.weights)
        )

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One sample from a randomly chosen source."""
        return self.sources[int(rng.choice(len(self.sources), p=self.weights))](rng)


class TrainingStream(IterableDataset):
    """An endless stream of augmented (image tensor (1, S, S), target dict) samples."""

    def __init__(
        self, source: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]], seed: int, start: int = 0
    ) -> None:
        super().__init__()
        self.source, self.seed, self.start = source, seed, start

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0, self.start])
        while True:
            raw, labels = self.source(rng)
            image, labels = augment(normalise_nuclear(vary_acquisition(raw, rng)), labels, rng)
            yield torch.from_numpy(image)[None], targets_from_labels(labels)
