"""Concentric shell regions of a nucleus and per-shell means: the study's shell analysis.

The study divided each nucleus into 5 concentric regions by shrinking its mask towards its
centre to 4/5, 3/5, 2/5 and 1/5 of its size, and compared per-shell mean intensities (of the
image channels and of the explanation maps) between conditions. Shells are numbered from the
outside in: ``1`` is the rim, ``n_shells`` the centre (the study's ``part05`` ... ``part01``).

Two methods, both giving an exact partition of the nucleus (every nucleus pixel lies in
exactly one shell, every pixel outside the nucleus is ``0``):

``scaled`` (the study's)
    The mask scaled by ``s`` towards its centroid ``c`` contains pixel ``p`` iff
    ``c + (p - c) / s`` (rounded to the nearest pixel, ties up) lies inside the original mask. Shell
    ``k`` holds the nucleus pixels whose smallest containing scaled mask has
    ``s = (n + 1 - k) / n``, i.e. ``k`` is the largest shell index whose scaled mask contains
    the pixel. For star-shaped nuclei (the usual convex case) this is exactly "inside the
    ``(n+1-k)/n`` mask but not inside the ``(n-k)/n`` mask"; for non-convex nuclei, where the
    scaled masks are not nested, the definition still assigns every pixel once. On a disc
    the shells are rings of equal width (so of unequal area: 9:7:5:3:1 from rim to centre).

``distance`` (robust to non-convex nuclei)
    The Euclidean distance to the nucleus boundary, ``d - 1/2`` with ``d`` the distance
    transform (pixel centre to the nearest outside pixel centre), divided by its maximum in
    the nucleus gives ``r`` in ``(0, 1]``; shell ``k`` holds ``(k-1)/n < r <= k/n``. On a
    disc it equals ``scaled``; on a crescent or a kidney shape it follows the shape instead of
    rays from a centroid that may lie outside the nucleus.

Small nuclei can leave a shell empty (its mean is then NaN).

Fixed-width rings (:func:`ring_regions`, CellProfiler users' absolute mode)
    Rings of a fixed width ``w`` (pixels; ``extract.ring_width_um`` / pixel size) from the
    edge inwards, by the same boundary distance ``d - 1/2``: ring ``k < n`` holds
    ``(k-1) w <= d - 1/2 < k w``, ring ``n`` everything deeper (the core). Unlike the
    relative shells, a ring means the same micrometres in a small and a large nucleus.

Example (also on a batch of explanation maps ``(N, H, W)`` with their crop masks)::

    regions = shell_regions(mask, n_shells=5, method="scaled")   # int8 (H, W)
    means = shell_means(image, regions)                           # image (C, H, W) -> (C, 5)
    shares = shell_shares(means)                                  # each shell's share of the sum
"""

from __future__ import annotations

import numpy as np

from epikit.errors import ConfigError, InputError
from epikit.nuclei.profiles import outline_distance

SHELL_METHODS: tuple[str, ...] = ("scaled", "distance")


def _check_method(n_shells: int, method: str) -> None:
    if method not in SHELL_METHODS:
        raise ConfigError(f"unknown shell method {method!r}; use one of: {', '.join(SHELL_METHODS)}")
    if not isinstance(n_shells, (int, np.integer)) or not 1 <= n_shells <= 127:
        raise ConfigError(f"n_shells must be an integer from 1 to 127, got {n_shells!r}")


def _scaled_shells(rows: np.ndarray, cols: np.ndarray, inside: np.ndarray, n_shells: int) -> np.ndarray:
    """Shell index of each nucleus pixel by inverse-mapping it into the original mask."""
    height, width = inside.shape
    cy, cx = rows.mean(), cols.mean()
    scales = ((n_shells + 1 - np.arange(2, n_shells + 1)) / n_shells)[:, None]  # shells 2..n
    # Nearest pixel, ties rounded up (as scipy.ndimage's order-0 sampling).
    r = np.floor(cy + (rows - cy) / scales + 0.5).astype(np.intp)
    c = np.floor(cx + (cols - cx) / scales + 0.5).astype(np.intp)
    valid = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    contained = np.zeros(r.shape, dtype=bool)
    contained[valid] = inside[r[valid], c[valid]]
    # Shell = 1 + number of the rows (shells 2..n) up to the last one containing the pixel.
    last = np.where(contained.any(axis=0), n_shells - 1 - contained[::-1].argmax(axis=0), 0)
    return (last + 1).astype(np.int8)


def _distance_shells(rows: np.ndarray, cols: np.ndarray, inside: np.ndarray, n_shells: int) -> np.ndarray:
    """Shell index of each nucleus pixel from its normalised distance to the boundary."""
    distance = outline_distance(inside[None])[0][rows, cols]
    relative = distance / distance.max()
    shell = np.ceil(relative * n_shells - 1e-9)
    return np.clip(shell, 1, n_shells).astype(np.int8)


def shell_regions(mask: np.ndarray, n_shells: int = 5, method: str = "scaled") -> np.ndarray:
    """Label the shells of a nucleus: 0 outside, 1 = rim ... ``n_shells`` = centre.

    ``mask`` is a 2D boolean/0-1 array ``(H, W)`` holding one nucleus, or a stack
    ``(N, H, W)`` of such masks (e.g. the ``masks`` array of ``crops.zarr``), each handled on
    its own. Returns an ``int8`` array of the same shape. ``method`` is ``"scaled"`` (the
    study's shrunken masks) or ``"distance"`` (normalised distance to the boundary); see the
    module docstring for the exact definitions.
    """
    _check_method(n_shells, method)
    inside = np.asarray(mask).astype(bool, copy=False)
    if inside.ndim == 3:
        return np.stack([shell_regions(m, n_shells, method) for m in inside]) if len(inside) else \
            np.zeros(inside.shape, dtype=np.int8)
    if inside.ndim != 2:
        raise InputError(f"shell_regions needs a 2D mask (H, W) or a stack (N, H, W), got shape {inside.shape}")
    regions = np.zeros(inside.shape, dtype=np.int8)
    rows, cols = np.nonzero(inside)
    if rows.size == 0:
        return regions
    assign = _scaled_shells if method == "scaled" else _distance_shells
    regions[rows, cols] = assign(rows, cols, inside, n_shells)
    return regions


def ring_regions(mask: np.ndarray, n_rings: int, width: float) -> np.ndarray:
    """Label fixed-width rings of one nucleus ``(H, W)``: 0 outside, 1 = rim ... ``n_rings`` = core.

    ``width`` is the ring width in pixels (see the module docstring); int8 like
    :func:`shell_regions`, so :func:`shell_means` takes the result.
    """
    _check_method(n_rings, "distance")
    if not width > 0:
        raise ConfigError(f"ring width must be positive, got {width!r} pixels")
    inside = np.asarray(mask).astype(bool, copy=False)
    if inside.ndim != 2:
        raise InputError(f"ring_regions needs a 2D mask (H, W), got shape {inside.shape}")
    regions = np.zeros(inside.shape, dtype=np.int8)
    rows, cols = np.nonzero(inside)
    if rows.size:
        depth = outline_distance(inside[None])[0][rows, cols]
        regions[rows, cols] = np.clip(np.floor(depth / width + 1e-9) + 1, 1, n_rings).astype(np.int8)
    return regions


def shell_means(values: np.ndarray, regions: np.ndarray, n_shells: int = 5) -> np.ndarray:
    """Mean of ``values`` in each shell: ``(..., H, W)`` -> ``(..., n_shells)``.

    ``regions`` (from :func:`shell_regions`) broadcasts against ``values`` over the leading
    axes: one nucleus's regions ``(H, W)`` with its channels ``(C, H, W)``, or a batch of maps
    ``(N, H, W)`` with their own regions ``(N, H, W)``, or ``(N, C, H, W)`` values with
    ``(N, 1, H, W)`` regions. One vectorised ``bincount`` for the whole batch; an empty shell
    gives NaN. Accepts anything ``numpy.asarray`` takes (CPU tensors included).
    """
    values = np.asarray(values, dtype=np.float64)
    regions = np.asarray(regions)
    if values.ndim < 2 or regions.ndim < 2 or values.shape[-2:] != regions.shape[-2:]:
        raise InputError(f"shell_means: values {values.shape} and regions {regions.shape} "
                         "must end in the same (H, W)")
    if regions.size and (regions.min() < 0 or regions.max() > n_shells):
        raise InputError(f"shell_means: regions hold labels outside 0..{n_shells}; "
                         "pass the n_shells used by shell_regions")
    try:
        leading = np.broadcast_shapes(values.shape[:-2], regions.shape[:-2])
    except ValueError as error:
        raise InputError(f"shell_means: regions {regions.shape} do not broadcast against "
                         f"values {values.shape}") from error
    pixels = values.shape[-2] * values.shape[-1]
    flat_values = np.broadcast_to(values, leading + values.shape[-2:]).reshape(-1, pixels)
    flat_regions = np.broadcast_to(regions, leading + values.shape[-2:]).reshape(-1, pixels)
    batch = flat_values.shape[0]
    bins = n_shells + 1
    index = (np.arange(batch)[:, None] * bins + flat_regions).ravel()
    sums = np.bincount(index, weights=flat_values.ravel(), minlength=batch * bins).reshape(batch, bins)
    counts = np.bincount(index, minlength=batch * bins).reshape(batch, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums[:, 1:] / counts[:, 1:]
    return means.reshape(leading + (n_shells,))


def shell_shares(means: np.ndarray) -> np.ndarray:
    """Each shell's share of the summed shell means (the study's "distribution").

    ``means (..., n_shells)`` -> same shape, summing to 1 over the last axis. Empty (NaN)
    shells are left out of the sum and stay NaN; an all-zero profile gives NaN.
    """
    means = np.asarray(means, dtype=np.float64)
    total = np.nansum(means, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total != 0, means / total, np.nan)
