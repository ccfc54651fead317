"""Aligned average maps: the study's Fig. 3 (mean attention per condition on a common nucleus).

Each nucleus is rotated so its moment ellipse's major axis is horizontal and scaled so its
longest side fills the output square, then maps (and image channels) are averaged inside the
nucleus. The geometry is the single-cell module's (:func:`epikit.nuclei.crops.find_nuclei` /
:func:`epikit.nuclei.crops.crop_nuclei`) applied to the crop itself: the crop's mask is the label
image, the maps and channels are the image. Crops extracted with ``align="major-axis"``
and ``scale="fit"`` are aligned already and are averaged as they are.

An average is ``sum(values * inside) / count(inside)`` per pixel, so pixels that few nuclei
cover are not darkened by the zero background; pixels no nucleus covers are NaN.
"""

from __future__ import annotations

import numpy as np

from epikit.nuclei.crops import CropSettings, crop_nuclei, find_nuclei
from epikit.errors import DataError

#: Zero border added around a crop so that a nucleus filling it is not "at the image border".
_PAD = 2


def align_crops(values: np.ndarray, masks: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rotate each nucleus to its major axis and scale it to fill ``size`` x ``size``.

    ``values`` (N, C, S, S) (maps and/or channels), ``masks`` (N, S, S) nonzero inside the
    nucleus. Returns aligned values (N, C, size, size) float32 (zero outside) and masks
    (N, size, size) bool. A crop with an empty mask gives zeros.
    """
    values = np.asarray(values, dtype=np.float32)
    masks = np.asarray(masks) > 0
    if values.ndim != 4 or masks.shape != (values.shape[0], *values.shape[2:]):
        raise DataError(f"align_crops needs values (N, C, S, S) and masks (N, S, S); got "
                        f"{values.shape} and {masks.shape}")
    size = size or values.shape[-1]
    settings = CropSettings(crop_size=size, scale="fit", align="major-axis", normalise="none", min_area=1)
    out = np.zeros((len(values), values.shape[1], size, size), dtype=np.float32)
    inside = np.zeros((len(values), size, size), dtype=bool)
    if not len(values):
        return out, inside
    # One mosaic of every crop (nucleus i labelled i + 1), cropped in one batched call.
    image, labels = _mosaic(values, masks)
    nuclei = find_nuclei(labels, settings).nuclei
    crops, crop_masks = crop_nuclei(image, labels, nuclei, settings)
    found = np.array([n.label - 1 for n in nuclei], dtype=np.int64)
    out[found], inside[found] = crops, crop_masks > 0
    return out, inside


def _mosaic(values: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crops side by side in one image (C, S + 2 pad, N (S + 2 pad)) and its label image (crop i: label i + 1)."""
    n, channels, height, width = values.shape
    tile = width + 2 * _PAD
    image = np.zeros((channels, height + 2 * _PAD, n * tile), dtype=np.float32)
    labels = np.zeros((height + 2 * _PAD, n * tile), dtype=np.int32)
    for i in range(n):
        where = (slice(_PAD, _PAD + height), slice(i * tile + _PAD, i * tile + _PAD + width))
        image[(slice(None), *where)] = values[i]
        labels[where] = np.where(masks[i], i + 1, 0)
    return image, labels


class AlignedAverage:
    """Running aligned average: :meth:`add` blocks of nuclei, then read :meth:`result`.

    Only per-pixel sums are kept, so any number of nuclei can be averaged a block at a time.
    """

    def __init__(self, already_aligned: bool = False, size: int | None = None) -> None:
        self.already_aligned = already_aligned
        self.size = size
        self.total: np.ndarray | None = None
        self.count: np.ndarray | None = None
        self.n = 0

    def add(self, values: np.ndarray, masks: np.ndarray) -> None:
        """Add ``values`` (N, C, S, S) of nuclei ``masks`` (N, S, S)."""
        if not self.already_aligned:
            values, masks = align_crops(values, masks, self.size)
        values = np.asarray(values, dtype=np.float64)
        masks = np.asarray(masks) > 0
        total, count = (values * masks[:, None]).sum(axis=0), masks.sum(axis=0)
        self.total = total if self.total is None else self.total + total
        self.count = count if self.count is None else self.count + count
        self.n += len(masks)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The average (C, H, W) (NaN where no nucleus covers a pixel) and the coverage (H, W):
        the fraction of nuclei covering each pixel."""
        if self.total is None or self.count is None or self.n == 0:
            raise DataError("no nuclei to average")
        with np.errstate(invalid="ignore", divide="ignore"):
            average = np.where(self.count > 0, self.total / self.count, np.nan)
        return average.astype(np.float32), (self.count / self.n).astype(np.float32)


def masked_average(values: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean of ``values`` (N, C, H, W) over the nuclei covering each pixel (see :class:`AlignedAverage`)."""
    accumulator = AlignedAverage(already_aligned=True)
    if len(values):
        accumulator.add(values, masks)
    return accumulator.result()


def aligned_average(
    values: np.ndarray, masks: np.ndarray, already_aligned: bool = False, size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned average (C, size, size) and coverage of ``values`` (N, C, S, S) inside ``masks``."""
    accumulator = AlignedAverage(already_aligned, size)
    if len(values):
        accumulator.add(values, masks)
    return accumulator.result()
