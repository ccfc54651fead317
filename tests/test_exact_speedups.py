"""The study-scale speed-ups compute exactly what the plain definitions compute."""

from __future__ import annotations

import numpy as np
import pytest

from epikit.nuclei.crops import intensity_range
from epikit.nuclei.features import GLCM_OFFSETS, glcm_features


def glcm_by_pairs(pixels: np.ndarray, mask: np.ndarray, levels: int) -> np.ndarray:
    """Symmetric co-occurrence counts (C, L, L) by walking every pixel pair of the mask."""
    inside = pixels[:, mask]
    low, high = inside.min(axis=1), inside.max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    counts = np.zeros((pixels.shape[0], levels, levels), dtype=np.int64)
    for c in range(pixels.shape[0]):
        q = np.clip(((pixels[c] - low[c]) / span[c] * levels).astype(int), 0, levels - 1)
        for y, x in zip(*np.nonzero(mask)):
            for dy, dx in GLCM_OFFSETS:
                ny, nx = y + dy, x + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx]:
                    counts[c, q[y, x], q[ny, nx]] += 1
                    counts[c, q[ny, nx], q[y, x]] += 1
    return counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_glcm_features_equal_the_pairwise_definition_on_irregular_masks(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((13, 17)) < 0.6
    mask[0, 0] = mask[-1, -1] = True  # pairs reaching the patch edges
    pixels = rng.normal(100, 20, (2, 13, 17))
    levels = 8
    p = glcm_by_pairs(pixels, mask, levels).reshape(2, -1).astype(float)
    p /= p.sum(axis=1, keepdims=True)
    i, j = (a.ravel() for a in np.meshgrid(np.arange(levels), np.arange(levels), indexing="ij"))
    mean = p @ i
    expected = np.stack([p @ (i - j) ** 2, p @ (1 / (1 + (i - j) ** 2)),
                         (p @ (i * j) - mean**2) / (p @ i**2 - mean**2),
                         -(p * np.log2(np.where(p > 0, p, 1))).sum(axis=1)], axis=1)
    assert np.allclose(glcm_features(pixels, mask, levels), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["uint16", "uint8", "fractional", "negative", "above_uint16", "one_pixel"])
def test_intensity_range_equals_numpy_percentile_bit_for_bit(kind):
    rng = np.random.default_rng(len(kind))
    values = rng.integers(0, 65536 if kind != "uint8" else 256, (3, 40, 37)).astype(np.float32)
    if kind == "fractional":
        values += 0.25
    elif kind == "negative":
        values[1, 0, 0] = -3
    elif kind == "above_uint16":
        values[2, 5, 5] = 70000
    elif kind == "one_pixel":
        values = values[:, :1, :1]
    for percentiles in ((1.0, 99.8), (0.0, 100.0), (2.5, 97.3)):
        expected = np.percentile(values.reshape(3, -1), percentiles, axis=1).astype(np.float32)
        low, high = intensity_range(values, percentiles)
        assert np.array_equal(low, expected[0]) and np.array_equal(high, expected[1])
