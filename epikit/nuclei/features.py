"""Per-cell features: morphology, intensity, texture and the study's shell profile.

Features are measured on the original (not normalised) image at native resolution, on the
nucleus's bounding-box patch and mask. :func:`cell_features` returns one dict per nucleus;
:func:`feature_names` lists the columns in order. In ``cells.parquet`` they follow the
metadata columns (``cell_id`` ... ``crop_index``), and ``crops.zarr`` records their names in
its ``feature_columns`` attribute.

Column names (``<ch>`` is a channel name such as ``H3K27ac``; ``k`` = 1 (rim) ... 5 (centre)):

=============================  ==============================================================
column                         meaning
=============================  ==============================================================
``area``                       nucleus area in pixels
``perimeter``                  boundary length in pixels (scikit-image ``perimeter``)
``solidity``                   area / convex area (pixels with centre in the hull of the pixel centres)
``eccentricity``               eccentricity of the fitted ellipse (0 = circle)
``form_factor``                4 pi area / perimeter^2 (1 = disc)
``<ch>_mean``                  mean intensity in the nucleus
``<ch>_integrated``            summed intensity in the nucleus
``<ch>_std``                   standard deviation of intensity in the nucleus
``<ch>_glcm_contrast``         GLCM contrast  (sum p_ij (i-j)^2)
``<ch>_glcm_homogeneity``      GLCM homogeneity (sum p_ij / (1 + (i-j)^2))
``<ch>_glcm_correlation``      GLCM correlation (1 for a constant nucleus)
``<ch>_glcm_entropy``          GLCM entropy in bits (-sum p_ij log2 p_ij)
``<ch>_shell_<k>_mean``        mean intensity in shell k, study's ``scaled`` method
``<ch>_shell_<k>_share``       shell k's share of the summed shell means (``scaled``)
``<ch>_dshell_<k>_mean``       mean intensity in shell k, ``distance`` method
``<ch>_dshell_<k>_share``      shell k's share of the summed shell means (``distance``)
``area_um2``                   area in µm² (only when the pixel size is known)
``perimeter_um``               perimeter in µm (only when the pixel size is known)
``diameter_um``                equivalent diameter 2 sqrt(area / pi) in µm (likewise)
``<ch>_ring_<k>_mean``         mean intensity in the fixed-width ring k (1 = rim, only with a ring width)
``<ch>_ring_<k>_share``        ring k's share of the summed ring means
=============================  ==============================================================

Texture: the nucleus's intensities are quantised into ``glcm_levels`` (default 32) grey levels
between their own minimum and maximum, so texture does not depend on brightness; pixel pairs
at distance 1 in the four directions 0, 45, 90, 135 degrees, both inside the nucleus, are
pooled into one symmetric, normalised co-occurrence matrix. Shells: see
:mod:`epikit.nuclei.shells` (an empty shell of a tiny nucleus gives NaN).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import perimeter

from epikit.nuclei.shells import ring_regions, shell_means, shell_regions, shell_shares

MORPHOLOGY_FEATURES: tuple[str, ...] = ("area", "perimeter", "solidity", "eccentricity", "form_factor")
INTENSITY_FEATURES: tuple[str, ...] = ("mean", "integrated", "std")
TEXTURE_FEATURES: tuple[str, ...] = ("glcm_contrast", "glcm_homogeneity", "glcm_correlation", "glcm_entropy")
#: Column prefix of each shell method.
SHELL_PREFIXES: dict[str, str] = {"scaled": "shell", "distance": "dshell"}
#: Morphology in micrometres, measured when the pixel size is known.
UNIT_FEATURES: tuple[str, ...] = ("area_um2", "perimeter_um", "diameter_um")
#: Column prefix of the fixed-width rings (:func:`epikit.nuclei.shells.ring_regions`).
RING_PREFIX = "ring"
GLCM_OFFSETS: tuple[tuple[int, int], ...] = ((0, 1), (1, 1), (1, 0), (1, -1))


def feature_names(channel_names: Sequence[str], n_shells: int = 5, *, physical: bool = False,
                  rings: bool = False) -> list[str]:
    """The feature columns, in the order :func:`cell_features` returns them.

    ``physical``: with the micrometre columns (a pixel size is known); ``rings``: with the
    fixed-width ring columns (a ring width is given).
    """
    names = list(MORPHOLOGY_FEATURES) + (list(UNIT_FEATURES) if physical else [])
    prefixes = list(SHELL_PREFIXES.values()) + ([RING_PREFIX] if rings else [])
    for channel in channel_names:
        names += [f"{channel}_{f}" for f in INTENSITY_FEATURES + TEXTURE_FEATURES]
        for prefix in prefixes:
            names += [f"{channel}_{prefix}_{k}_{stat}" for k in range(1, n_shells + 1)
                      for stat in ("mean", "share")]
    return names


def _convex_area(mask: np.ndarray) -> float:
    """Number of pixels whose centre lies in the convex hull of the mask's pixel centres.

    Equals scikit-image's ``area_convex`` idea (pixels of the convex hull image) but needs only
    the leftmost and rightmost pixel of each row and one half-plane test per row.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    first = mask[rows].argmax(axis=1)
    last = mask.shape[1] - 1 - mask[rows, ::-1].argmax(axis=1)
    points = np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)])
    try:
        hull = ConvexHull(points.astype(np.float64))
    except QhullError:  # a line or a point: its hull holds exactly its pixels
        return float(mask.sum())
    y = np.arange(rows[0], rows[-1] + 1, dtype=np.float64)[:, None]
    normal_y, normal_x, offset = hull.equations.T  # inside: normal . (y, x) + offset <= 0
    bound = -(offset + normal_y * y)  # normal_x * x <= bound, per row and facet
    tol = 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        upper = np.where(normal_x > tol, bound / normal_x, np.inf).min(axis=1)
        lower = np.where(normal_x < -tol, bound / normal_x, -np.inf).max(axis=1)
    counts = np.floor(upper + 1e-6) - np.ceil(lower - 1e-6) + 1
    return float(np.clip(counts, 0, None).sum())


@dataclass(frozen=True)
class Ellipse:
    """The ellipse with the same second moments as a nucleus (as scikit-image's regionprops).

    ``orientation``: radians from the row axis to the major axis, in [-pi/2, pi/2]
    (scikit-image's convention); ``major_axis``: that direction as a unit vector (row, col)
    with a non-negative row component.
    """

    orientation: float
    eccentricity: float
    major_axis: tuple[float, float]


def fitted_ellipse(rows: np.ndarray, cols: np.ndarray) -> Ellipse:
    """Fit the moment ellipse to the pixel coordinates of one nucleus."""
    if rows.size < 2:
        return Ellipse(0.0, 0.0, (1.0, 0.0))
    covariance = np.cov(np.stack([rows, cols]).astype(np.float64), bias=True)
    (small, large), vectors = np.linalg.eigh(covariance)
    major = vectors[:, 1] if vectors[0, 1] >= 0 else -vectors[:, 1]
    if large <= 0:
        return Ellipse(0.0, 0.0, (1.0, 0.0))
    return Ellipse(float(math.atan2(major[1], major[0])), math.sqrt(max(0.0, 1.0 - small / large)),
                   (float(major[0]), float(major[1])))


def morphology_features(mask: np.ndarray) -> dict[str, float]:
    """Area, perimeter, solidity, eccentricity and form factor of one nucleus mask (H, W)."""
    inside = mask.astype(bool)
    rows, cols = np.nonzero(inside)
    area = float(rows.size)
    perim = float(perimeter(np.pad(inside, 1)))
    return {
        "area": area,
        "perimeter": perim,
        "solidity": area / max(_convex_area(inside), area),
        "eccentricity": fitted_ellipse(rows, cols).eccentricity,
        "form_factor": 4 * math.pi * area / perim**2 if perim > 0 else float("nan"),
    }


@functools.lru_cache(maxsize=8)
def _glcm_weights(levels: int) -> dict[str, np.ndarray]:
    i, j = np.meshgrid(np.arange(levels, dtype=np.float64), np.arange(levels, dtype=np.float64),
                       indexing="ij")
    return {"contrast": ((i - j) ** 2).ravel(), "homogeneity": (1.0 / (1.0 + (i - j) ** 2)).ravel(),
            "i": i.ravel(), "i2": (i**2).ravel(), "ij": (i * j).ravel()}


def glcm_features(pixels: np.ndarray, mask: np.ndarray, levels: int = 32) -> np.ndarray:
    """GLCM contrast, homogeneity, correlation, entropy per channel: (C, H, W) -> (C, 4).

    See the module docstring for the quantisation and the pooled directions.
    """
    channels = pixels.shape[0]
    inside = mask.astype(bool)
    values = pixels[:, inside]
    low, high = values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True)
    span = np.where(high > low, high - low, 1.0)
    levels_of = np.clip(((values - low) / span * levels).astype(np.intp), 0, levels - 1)  # (C, n inside)
    base = (np.arange(channels) * levels * levels)[:, None]  # one bincount for all channels

    # Each inside pixel's position among the inside pixels (-1 outside), on a one-pixel frame
    # so that every neighbour offset stays in bounds.
    framed = np.pad(inside, 1)
    width = framed.shape[1]
    where = np.flatnonzero(framed)
    position = np.full(framed.size, -1, dtype=np.intp)
    position[where] = np.arange(where.size)
    codes = []
    for dy, dx in GLCM_OFFSETS:
        # Pixel a at (y, x), its neighbour b at (y + dy, x + dx), both inside the nucleus.
        neighbour = position[where + dy * width + dx]
        has = neighbour >= 0
        codes.append((base + levels_of[:, has] * levels + levels_of[:, neighbour[has]]).ravel())
    size = channels * levels * levels
    one_way = np.bincount(np.concatenate(codes), minlength=size).reshape(channels, levels, levels)
    # Both orders of every pair (the symmetric matrix): the counts plus their transpose.
    counts = (one_way + one_way.transpose(0, 2, 1)).reshape(channels, -1)
    total = counts.sum(axis=1, keepdims=True)
    p = counts / np.where(total > 0, total, 1)

    w = _glcm_weights(levels)
    contrast, homogeneity = p @ w["contrast"], p @ w["homogeneity"]
    mean = p @ w["i"]  # the matrix is symmetric: both marginals share mean and variance
    variance = p @ w["i2"] - mean**2
    flat = variance < 1e-12
    correlation = np.where(flat, 1.0, (p @ w["ij"] - mean**2) / np.where(flat, 1.0, variance))
    entropy = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1)
    texture = np.stack([contrast, homogeneity, correlation, entropy], axis=1)
    texture[total[:, 0] == 0] = np.nan  # a nucleus without any neighbouring pixel pair
    return texture


def cell_features(
    pixels: np.ndarray,
    mask: np.ndarray,
    channel_names: Sequence[str],
    *,
    n_shells: int = 5,
    glcm_levels: int = 32,
    pixel_size_um: float | None = None,
    ring_width_px: float = 0.0,
) -> dict[str, float]:
    """All features of one nucleus, keyed by the names of :func:`feature_names`.

    ``pixels`` is the raw image patch ``(C, H, W)`` around the nucleus (its bounding box) and
    ``mask`` the nucleus's boolean mask ``(H, W)`` on that patch. ``pixel_size_um`` adds the
    micrometre columns; ``ring_width_px`` > 0 adds ``n_shells`` fixed-width rings.
    """
    inside = mask.astype(bool)
    pixels = np.asarray(pixels, dtype=np.float64)
    values = pixels[:, inside]
    texture = glcm_features(pixels, inside, glcm_levels)
    profiles = {}
    for method, prefix in SHELL_PREFIXES.items():
        means = shell_means(pixels, shell_regions(inside, n_shells, method), n_shells)
        profiles[prefix] = (means, shell_shares(means))
    if ring_width_px > 0:
        means = shell_means(pixels, ring_regions(inside, n_shells, ring_width_px), n_shells)
        profiles[RING_PREFIX] = (means, shell_shares(means))

    features = morphology_features(inside)
    if pixel_size_um:
        features.update({"area_um2": features["area"] * pixel_size_um**2,
                         "perimeter_um": features["perimeter"] * pixel_size_um,
                         "diameter_um": 2 * math.sqrt(features["area"] / math.pi) * pixel_size_um})
    for c, channel in enumerate(channel_names):
        features[f"{channel}_mean"] = float(values[c].mean())
        features[f"{channel}_integrated"] = float(values[c].sum())
        features[f"{channel}_std"] = float(values[c].std())
        for name, value in zip(TEXTURE_FEATURES, texture[c]):
            features[f"{channel}_{name}"] = float(value)
        for prefix, (means, shares) in profiles.items():
            for k in range(n_shells):
                features[f"{channel}_{prefix}_{k + 1}_mean"] = float(means[c, k])
                features[f"{channel}_{prefix}_{k + 1}_share"] = float(shares[c, k])
    return features
