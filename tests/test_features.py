"""Per-cell features: morphology, intensity, texture and shell profile."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import ellipse
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops

from epikit.nuclei.features import (
    cell_features,
    feature_names,
    fitted_ellipse,
    glcm_features,
    morphology_features,
)


def _ellipse_mask(a: float, b: float, rotation: float, size: int = 90) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[ellipse(size // 2, size // 2, a, b, rotation=rotation)] = True
    return mask


def _crescent() -> np.ndarray:
    yy, xx = np.mgrid[:81, :81]
    return ((yy - 40) ** 2 + (xx - 40) ** 2 <= 36**2) & ~((yy - 40) ** 2 + (xx - 58) ** 2 <= 32**2)


def test_feature_names_match_the_returned_columns() -> None:
    mask = _ellipse_mask(20, 12, 0.3, 50)
    pixels = np.random.default_rng(0).random((2, 50, 50))
    features = cell_features(pixels, mask, ["DNA", "H3K27ac"])
    assert list(features) == feature_names(["DNA", "H3K27ac"])
    assert {"area", "perimeter", "solidity", "eccentricity", "form_factor", "H3K27ac_mean",
            "H3K27ac_integrated", "H3K27ac_std", "H3K27ac_glcm_contrast", "H3K27ac_glcm_homogeneity",
            "H3K27ac_glcm_correlation", "H3K27ac_glcm_entropy", "H3K27ac_shell_1_mean",
            "H3K27ac_shell_1_share", "H3K27ac_shell_5_share", "H3K27ac_dshell_1_share"} <= set(features)
    assert len(feature_names(["a"], n_shells=3)) == 5 + 7 + 2 * 3 * 2


@pytest.mark.parametrize("rotation", [0.0, 0.6, -1.2])
def test_morphology_matches_scikit_image_and_geometry(rotation: float) -> None:
    mask = _ellipse_mask(30, 12, rotation)
    region = regionprops(mask.astype(np.uint8))[0]
    features = morphology_features(mask)
    assert features["area"] == mask.sum()
    assert features["perimeter"] == pytest.approx(region.perimeter)
    assert features["eccentricity"] == pytest.approx(region.eccentricity)
    assert features["eccentricity"] == pytest.approx(math.sqrt(1 - (12 / 30) ** 2), abs=0.02)
    assert features["solidity"] > 0.99  # convex
    ellipse_fit = fitted_ellipse(*np.nonzero(mask))
    assert ellipse_fit.orientation == pytest.approx(region.orientation)
    assert features["form_factor"] == pytest.approx(4 * math.pi * mask.sum() / region.perimeter**2)


def test_disc_and_crescent_morphology() -> None:
    yy, xx = np.mgrid[:61, :61]
    disc = (yy - 30) ** 2 + (xx - 30) ** 2 <= 25**2
    features = morphology_features(disc)
    assert features["eccentricity"] < 0.05
    assert features["form_factor"] > 0.85
    assert features["solidity"] == pytest.approx(1.0)
    crescent = morphology_features(_crescent())
    reference = regionprops(_crescent().astype(np.uint8))[0]
    assert crescent["solidity"] < 0.7
    assert crescent["solidity"] == pytest.approx(reference.solidity, rel=0.03)
    assert crescent["form_factor"] < features["form_factor"]


def test_intensity_features_are_measured_inside_the_nucleus() -> None:
    rng = np.random.default_rng(1)
    mask = _ellipse_mask(15, 10, 0.2, 40)
    pixels = rng.random((1, 40, 40)) * 100
    pixels[:, ~mask] = 1e6  # must not leak into any feature
    features = cell_features(pixels, mask, ["c"])
    inside = pixels[0][mask]
    assert features["c_mean"] == pytest.approx(inside.mean())
    assert features["c_integrated"] == pytest.approx(inside.sum())
    assert features["c_std"] == pytest.approx(inside.std())
    assert max(features[f"c_shell_{k}_mean"] for k in range(1, 6)) < 100
    assert max(features[f"c_dshell_{k}_mean"] for k in range(1, 6)) < 100


def test_glcm_agrees_with_scikit_image_on_a_full_patch() -> None:
    rng = np.random.default_rng(2)
    pixels = rng.random((1, 30, 40)) * 50
    levels = 16
    texture = glcm_features(pixels, np.ones((30, 40), bool), levels)[0]
    q = np.clip(((pixels[0] - pixels.min()) / np.ptp(pixels) * levels).astype(int), 0, levels - 1)
    counts = graycomatrix(q.astype(np.uint8), [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                          levels=levels, symmetric=True).sum(axis=3, keepdims=True).astype(float)
    p = counts / counts.sum()
    expected = [graycoprops(counts, name)[0, 0] for name in ("contrast", "homogeneity", "correlation")]
    np.testing.assert_allclose(texture[:3], expected, rtol=1e-9)
    assert texture[3] == pytest.approx(-(p[p > 0] * np.log2(p[p > 0])).sum())


def test_glcm_tells_rough_from_smooth_and_handles_a_flat_nucleus() -> None:
    mask = _ellipse_mask(18, 14, 0.0, 40)
    yy, xx = np.mgrid[:40, :40]
    smooth = (yy + xx)[None].astype(float)
    rough = ((yy + xx) % 2)[None].astype(float) * 10
    flat = np.full((1, 40, 40), 7.0)
    t_smooth, t_rough, t_flat = (glcm_features(p, mask)[0] for p in (smooth, rough, flat))
    assert t_rough[0] > 10 * t_smooth[0]  # contrast
    assert t_smooth[1] > t_rough[1]  # homogeneity
    assert t_smooth[2] > 0.9  # neighbours correlate along a gradient
    np.testing.assert_allclose(t_flat, [0.0, 1.0, 1.0, 0.0])


def test_shell_profile_sees_a_bright_rim_with_both_methods() -> None:
    mask = _ellipse_mask(25, 18, 0.4, 60)
    distance = ndi.distance_transform_edt(mask)
    rim = np.where(distance < 5, 3.0, 1.0)[None]
    features = cell_features(rim, mask, ["H3K27ac"])
    for prefix in ("shell", "dshell"):
        shares = [features[f"H3K27ac_{prefix}_{k}_share"] for k in range(1, 6)]
        assert sum(shares) == pytest.approx(1.0)
        assert shares[0] > 0.3 > shares[4]
    flat = cell_features(np.ones((1, 60, 60)), mask, ["x"])
    assert all(flat[f"x_shell_{k}_share"] == pytest.approx(0.2) for k in range(1, 6))
