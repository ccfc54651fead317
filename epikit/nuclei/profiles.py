"""Radial profiles of a nucleus: mean intensity (or attention) by distance from the outline.

For every pixel of a nucleus the Euclidean distance to the outline is ``d - 1/2``, with ``d``
the distance transform (pixel centre to the nearest outside pixel centre), as in the
``distance`` shells of :mod:`epikit.nuclei.shells`; it follows the shape, so it stays
meaningful for crescent or kidney-shaped nuclei whose centroid lies outside them. Two binnings:

``relative`` (always)
    The distance divided by its maximum in the nucleus, ``r`` in ``[0, 1]`` (0 = outline,
    1 = the innermost point), in ``n_bins`` equal bins ``[k/n, (k+1)/n)`` (the last one
    closed).
``um`` (when the pixel size is known)
    The distance in micrometres, in ``n_bins`` bins of ``bin_um`` from the outline; pixels
    deeper than ``n_bins * bin_um`` fall in no bin, and bins deeper than a nucleus reaches are
    empty (NaN).

A profile value is the bin's mean divided by the whole nucleus's mean: ``1`` is the nucleus's
average, ``1.2`` twenty percent above it. Unlike a share of the summed bin means it does not
depend on which bins a small nucleus leaves empty, and it is the same quantity in both
binnings. A nucleus whose mean is 0 gives NaN.

Everything is batched: one distance transform for a whole stack of crops (each ringed by
blank pixels, so no nucleus sees another and a nucleus clipped by its crop ends at the crop's
border on every side) and one ``bincount`` per batch::

    distance = outline_distance(masks)                          # (N, S, S), NaN outside
    profiles = radial_profiles(crops, masks, n_bins=20)         # crops (N, C, S, S) -> (N, C, 20)
    um = radial_profiles(crops, masks, 20, scale="um", pixel_um=pixel_um, bin_um=0.25)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from epikit.errors import ConfigError, InputError

SCALES: tuple[str, ...] = ("relative", "um")


def outline_distance(masks: np.ndarray) -> np.ndarray:
    """Distance of every nucleus pixel to its outline, in pixels: ``(N, S, S)`` masks -> float64, NaN outside.

    Pixels on the outline are 0.5 away from it (their centre to their outer edge). The crop's
    border is an outline too: a nucleus clipped by its crop ends there, on every side. The one
    definition of the boundary distance, shared by the radial profiles and the ``distance``
    shells and fixed-width rings of :mod:`epikit.nuclei.shells`.
    """
    inside = np.asarray(masks).astype(bool, copy=False)
    if inside.ndim != 3:
        raise InputError(f"outline_distance needs a stack of masks (N, H, W), got shape {inside.shape}")
    n, height, width = inside.shape
    if n == 0:
        return np.zeros(inside.shape, dtype=np.float64)
    # A blank column on both sides of every mask and a blank row between masks (and above the
    # first): every nucleus is ringed by outside pixels of its own, so none sees another.
    padded = np.zeros((n, height + 1, width + 2), dtype=bool)
    padded[:, :height, 1:-1] = inside
    tall = np.concatenate([np.zeros((1, width + 2), dtype=bool), padded.reshape(-1, width + 2)])
    distance = ndi.distance_transform_edt(tall)[1:].reshape(n, height + 1, width + 2)[:, :height, 1:-1]
    return np.where(inside, distance - 0.5, np.nan)


def bin_edges(n_bins: int, scale: str = "relative", bin_um: float = 0.25) -> np.ndarray:
    """The ``n_bins + 1`` bin edges: normalised distance (0 = outline, 1 = centre) or micrometres."""
    _check(n_bins, scale, bin_um)
    top = 1.0 if scale == "relative" else n_bins * bin_um
    return np.linspace(0.0, top, n_bins + 1)


def _check(n_bins: int, scale: str, bin_um: float) -> None:
    if scale not in SCALES:
        raise ConfigError(f"unknown profile scale {scale!r}; use one of: {', '.join(SCALES)}")
    if not isinstance(n_bins, (int, np.integer)) or not 2 <= n_bins <= 1000:
        raise ConfigError(f"profile bins must be an integer from 2 to 1000, got {n_bins!r}")
    if not bin_um > 0:
        raise ConfigError(f"profile bin width must be a positive number of micrometres, got {bin_um!r}")


def radial_bins(masks: np.ndarray, n_bins: int = 20, scale: str = "relative",
                pixel_um: np.ndarray | float | None = None, bin_um: float = 0.25,
                distance: np.ndarray | None = None) -> np.ndarray:
    """The radial bin of every pixel, ``(N, S, S)`` int64: ``0`` at the outline, ``-1`` in no bin.

    ``pixel_um`` (scale ``um`` only): micrometres per crop pixel, one number or one per nucleus.
    ``distance``: :func:`outline_distance` of ``masks`` when already computed (one distance
    transform then serves both scales).
    """
    _check(n_bins, scale, bin_um)
    distance = outline_distance(masks) if distance is None else distance
    inside = ~np.isnan(distance)
    if scale == "relative":
        deepest = np.max(np.where(inside, distance, 0.0), axis=(1, 2))
        position = distance / np.where(deepest > 0, deepest, 1.0)[:, None, None]
    else:
        if pixel_um is None:
            raise ConfigError("micrometre profiles need the pixel size (pixel_um)")
        size = np.broadcast_to(np.asarray(pixel_um, dtype=np.float64), (len(distance),))
        if not np.all(np.isfinite(size) & (size > 0)):
            raise InputError("micrometre profiles need a positive, finite pixel size for every nucleus")
        position = distance * (size / (n_bins * bin_um))[:, None, None]
    with np.errstate(invalid="ignore"):
        index = np.minimum(np.floor(position * n_bins), n_bins - 1)
        # Deeper than the last edge (micrometres only; the relative scale ends at 1 exactly): no bin.
        binned = inside if scale == "relative" else inside & (position < 1.0)
    return np.where(binned, index, -1).astype(np.int64)


def radial_profiles(values: np.ndarray, masks: np.ndarray, n_bins: int = 20, scale: str = "relative",
                    pixel_um: np.ndarray | float | None = None, bin_um: float = 0.25,
                    distance: np.ndarray | None = None) -> np.ndarray:
    """Per nucleus and channel the bin means over the nucleus mean: ``(N, [C,] S, S)`` -> ``(N, [C,] n_bins)``.

    ``values`` are crops ``(N, C, S, S)`` or maps ``(N, S, S)``; ``masks`` ``(N, S, S)`` mark
    each nucleus (``distance``: their :func:`outline_distance`, if computed already). Empty
    bins, and nuclei whose mean is 0, give NaN. One ``bincount`` for the whole batch.
    """
    values = np.asarray(values)
    single = values.ndim == 3
    if single:
        values = values[:, None]
    masks = np.asarray(masks).astype(bool, copy=False)
    if values.ndim != 4 or masks.shape != (values.shape[0], *values.shape[2:]):
        raise InputError(f"radial_profiles needs values (N, C, S, S) or (N, S, S) and masks (N, S, S); "
                         f"got {values.shape} and {masks.shape}")
    n, channels = values.shape[:2]
    bins = radial_bins(masks, n_bins, scale, pixel_um, bin_um, distance)
    # Slots per nucleus and channel: the bins, then "inside but in no bin", then "outside".
    slots = n_bins + 2
    slot = np.where(bins >= 0, bins, np.where(masks, n_bins, n_bins + 1)).reshape(n, 1, -1)
    index = (np.arange(n * channels).reshape(n, channels, 1) * slots + slot).ravel()
    sums = np.bincount(index, weights=values.reshape(-1), minlength=n * channels * slots).reshape(n, channels, slots)
    counts = np.bincount((np.arange(n)[:, None] * slots + slot[:, 0]).ravel(), minlength=n * slots).reshape(n, slots)
    area = counts[:, : n_bins + 1].sum(axis=1)
    nucleus_mean = sums[..., : n_bins + 1].sum(axis=2) / np.maximum(area, 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums[..., :n_bins] / counts[:, None, :n_bins]
        profile = np.where(((nucleus_mean != 0) & (area > 0)[:, None])[..., None],
                           means / nucleus_mean[..., None], np.nan)
    return profile[:, 0] if single else profile
