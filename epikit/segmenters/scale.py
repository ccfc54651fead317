"""Nucleus size of a field and resampling to the scale a segmenter works at.

Networks and filters are tuned for nuclei of one size. cellpose users pass ``diameter`` (or
let the tool estimate it) and the field is resampled so its nuclei have the size the model
was trained at; epikit's segmenters do the same with these functions:

    >>> import numpy as np
    >>> from epikit.segmenters.scale import estimate_diameter
    >>> yy, xx = np.mgrid[:256, :256]
    >>> field = ((yy - 128) ** 2 + (xx - 100) ** 2 < 30**2).astype(np.float32)
    >>> round(estimate_diameter(field))
    60

:func:`estimate_diameter` thresholds the nuclear stain (Otsu) on a coarse copy of the field
first - area averaging fills the texture and holes of large nuclei - and moves to finer copies
while the nuclei it sees are too small to measure there. Touching nuclei form clumps whose
area overstates the size; a clump is recognised by its area being large for its widest inner
circle (distance-transform maximum) and measured by that circle instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from epikit.errors import InputError

#: Long side of the coarsest copy of a field the size estimate starts from.
COARSE_SIDE = 256
#: Nuclei must span at least this many pixels in a copy for their size to be trusted there.
MIN_MEASURABLE = 12.0
#: Objects whose area exceeds this multiple of their inner circle's area count as clumps.
CLUMP_RATIO = 2.2


def diameter_from_labels(labels: np.ndarray) -> float | None:
    """Median equivalent diameter (pixels) of the objects of a label image; None if empty."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if areas.size == 0:
        return None
    return float(np.median(2.0 * np.sqrt(areas / math.pi)))


def resample(array: np.ndarray, shape: tuple[int, int], labels: bool = False) -> np.ndarray:
    """``array`` (Y, X) resampled to ``shape``: area-averaged down, bilinear up, or nearest for labels."""
    if tuple(array.shape) == tuple(shape):
        return np.array(array, copy=True)
    if labels:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.int32)).float()[None, None]
        out = F.interpolate(tensor, size=shape, mode="nearest-exact")
        return out[0, 0].round().numpy().astype(np.int32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrinking = shape[0] < array.shape[0] or shape[1] < array.shape[1]
    out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=shrinking)
    return out[0, 0].numpy()


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """``shape`` multiplied by ``factor``, rounded, at least 1 pixel per axis."""
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def _otsu(values: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(values))


def _diameter_at(channel: np.ndarray) -> float | None:
    """Typical object diameter (pixels of ``channel``) from an Otsu foreground, clumps measured inside."""
    smooth = ndimage.gaussian_filter(channel, 1.0)
    if float(smooth.max() - smooth.min()) <= 1e-6:
        return None
    foreground = ndimage.binary_fill_holes(smooth > _otsu(smooth))
    components, count = ndimage.label(foreground)
    if count == 0:
        return None
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(smooth), components, index)
    inner = ndimage.maximum(ndimage.distance_transform_edt(foreground), components, index)
    keep = areas >= 9  # specks of noise and hot pixels
    if not keep.any():
        return None
    areas, inner = areas[keep], np.maximum(inner[keep], 0.5)
    single = areas <= CLUMP_RATIO * math.pi * inner**2
    # A single nucleus is measured by its area, a clump by the inner circle of its members.
    diameters = np.where(single, 2.0 * np.sqrt(areas / math.pi), 2.0 * inner)
    # Weight by area so a field's many specks of debris do not outvote its nuclei.
    order = np.argsort(diameters)
    cumulative = np.cumsum(areas[order])
    return float(diameters[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def estimate_diameter(channel: np.ndarray) -> float | None:
    """Typical nucleus diameter in pixels of a nuclear-stain image (Y, X); None when nothing stands out.

    Starts on a copy whose long side is :data:`COARSE_SIDE` and halves the reduction while the
    nuclei measure under :data:`MIN_MEASURABLE` pixels there, so large textured nuclei are
    seen whole and small ones are still resolved.
    """
    data = np.asarray(channel, dtype=np.float32)
    if data.ndim != 2 or not np.isfinite(data).all():
        raise InputError(f"estimate_diameter needs a finite 2-D image, got shape {data.shape}; remove NaNs or pick one plane")
    reduction = 2 ** max(0, math.ceil(math.log2(max(data.shape) / COARSE_SIDE)))
    while True:
        copy = data if reduction == 1 else resample(data, scaled_shape(data.shape, 1.0 / reduction))
        found = _diameter_at(copy)
        if reduction == 1 or (found is not None and found >= MIN_MEASURABLE):
            return None if found is None else found * reduction
        reduction //= 2
