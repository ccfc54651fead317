"""Shell regions partition nuclei exactly (both methods, convex and non-convex) and shell means."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import ellipse, polygon

from epikit.nuclei.shells import SHELL_METHODS, shell_means, shell_regions, shell_shares
from epikit.errors import ConfigError, InputError


def _disc(size: int = 101, radius: float = 45) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return (yy - c) ** 2 + (xx - c) ** 2 <= radius**2


def _ellipse(rotation: float) -> np.ndarray:
    mask = np.zeros((90, 90), bool)
    mask[ellipse(45, 45, 38, 16, rotation=rotation)] = True
    return mask


def _crescent() -> np.ndarray:
    yy, xx = np.mgrid[:101, :101]
    return _disc() & ~((yy - 50) ** 2 + (xx - 72) ** 2 <= 40**2)  # centroid outside the mask


def _l_shape() -> np.ndarray:
    mask = np.zeros((80, 80), bool)
    mask[5:75, 5:25] = True
    mask[55:75, 5:75] = True
    return mask


def _star() -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radii = np.where(np.arange(16) % 2 == 0, 35, 14)
    mask = np.zeros((80, 80), bool)
    mask[polygon(40 + radii * np.sin(angles), 40 + radii * np.cos(angles), mask.shape)] = True
    return mask


def _blob(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.normal(size=(70, 70)), 6)
    labels, _ = ndi.label(noise > 0.02)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


SHAPES = {
    "disc": _disc(),
    "ellipse": _ellipse(0.7),
    "crescent": _crescent(),
    "l_shape": _l_shape(),
    "star": _star(),
    "touching_edge": np.ones((12, 20), bool),
    "tiny": np.pad(np.ones((2, 3), bool), 2),
    **{f"blob_{seed}": _blob(seed) for seed in range(3)},
}


@pytest.mark.parametrize("method", SHELL_METHODS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shells_partition_the_nucleus_exactly(shape: str, method: str) -> None:
    mask = SHAPES[shape]
    regions = shell_regions(mask, n_shells=5, method=method)
    assert regions.dtype == np.int8 and regions.shape == mask.shape
    # Every nucleus pixel in exactly one shell 1..5, every other pixel 0.
    assert np.array_equal(regions > 0, mask)
    assert regions.min() >= 0 and regions.max() <= 5
    star_shaped = shape in {"disc", "ellipse", "star"}  # about the centroid
    if mask.sum() > 200 and (star_shaped or method == "distance"):
        assert set(np.unique(regions[mask])) == {1, 2, 3, 4, 5}


def test_disc_shells_are_rings_of_equal_width_for_both_methods() -> None:
    mask = _disc()
    expected = np.array([9, 7, 5, 3, 1]) / 25  # area of rings of equal width, rim to centre
    scaled, distance = (shell_regions(mask, 5, m) for m in SHELL_METHODS)
    for regions in (scaled, distance):
        fractions = np.bincount(regions[mask], minlength=6)[1:] / mask.sum()
        np.testing.assert_allclose(fractions, expected, atol=0.01)
    assert (scaled[mask] == distance[mask]).mean() > 0.9
    # Rim shell really is at the rim: its pixels are farther from the centre than the centre shell's.
    yy, xx = np.nonzero(mask)
    radius = np.hypot(yy - 50, xx - 50)
    assert radius[scaled[mask] == 1].min() > radius[scaled[mask] == 5].max()


@pytest.mark.parametrize("shape", ["disc", "ellipse", "star", "blob_0"])
def test_scaled_shells_match_the_nested_shrunken_masks(shape: str) -> None:
    """Independent reference: shrink the mask with ndimage.affine_transform, take differences."""
    mask = np.pad(SHAPES[shape], 3)  # ndimage treats samples within half a pixel outside as outside
    cy, cx = np.argwhere(mask).mean(axis=0)
    shrunk = {}
    for s in (1.0, 0.8, 0.6, 0.4, 0.2):
        # Output pixel o is inside the mask shrunk by s iff c + (o - c) / s is inside the mask.
        shrunk[s] = ndi.affine_transform(mask.astype(np.uint8), np.eye(2) / s,
                                         offset=(cy - cy / s, cx - cx / s), order=0).astype(bool)
    reference = np.zeros(mask.shape, np.int8)
    for k, (outer, inner) in enumerate([(1.0, 0.8), (0.8, 0.6), (0.6, 0.4), (0.4, 0.2), (0.2, 0.0)], 1):
        inside_inner = shrunk[inner] if inner else np.zeros_like(mask)
        reference[mask & shrunk[outer] & ~inside_inner] = k
    regions = shell_regions(mask, 5, "scaled")
    assert np.array_equal(regions, reference)


def test_distance_shells_follow_the_distance_to_the_boundary_on_a_crescent() -> None:
    mask = _crescent()
    regions = shell_regions(mask, 5, "distance")
    distance = ndi.distance_transform_edt(mask)
    for k in range(1, 5):
        assert distance[regions == k].max() < distance[regions == k + 1].min()
    # The study's scaled shells need the centroid inside; on this crescent the distance method
    # still puts the centre shell in the thickest part while scaled leaves shells empty.
    assert set(np.unique(regions[mask])) == {1, 2, 3, 4, 5}


def test_stack_of_masks_and_other_shell_counts() -> None:
    stack = np.stack([_disc(80, 30), _disc(80, 20), np.zeros((80, 80), bool)])
    regions = shell_regions(stack, n_shells=3, method="distance")
    assert regions.shape == stack.shape
    for mask, region in zip(stack, regions):
        assert np.array_equal(region, shell_regions(mask, 3, "distance"))
    assert not regions[2].any()


def test_shell_means_and_shares_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    masks = np.stack([_disc(40, 15), _disc(40, 18), _disc(40, 9)])
    regions = shell_regions(masks)
    values = rng.random((3, 2, 40, 40))
    means = shell_means(values, regions[:, None])  # (N, C, H, W) with (N, 1, H, W)
    assert means.shape == (3, 2, 5)
    for n in range(3):
        for c in range(2):
            for k in range(1, 6):
                assert means[n, c, k - 1] == pytest.approx(values[n, c][regions[n] == k].mean())
    # One nucleus, several channels: regions (H, W) broadcast over (C, H, W).
    np.testing.assert_allclose(shell_means(values[0], regions[0]), means[0])
    shares = shell_shares(means)
    np.testing.assert_allclose(shares.sum(axis=-1), 1.0)
    np.testing.assert_allclose(shares, means / means.sum(axis=-1, keepdims=True))


def test_rim_enriched_signal_has_a_larger_rim_share() -> None:
    mask = _disc(61, 28)
    regions = shell_regions(mask)
    distance = ndi.distance_transform_edt(mask)
    rim_signal = np.where(mask, 1.0 + 2.0 * (distance < 6), 0.0)
    flat_signal = mask.astype(float)
    rim_shares = shell_shares(shell_means(rim_signal, regions))
    flat_shares = shell_shares(shell_means(flat_signal, regions))
    np.testing.assert_allclose(flat_shares, 0.2)
    assert rim_shares[0] > 0.3 and rim_shares[-1] < 0.2


def test_empty_shell_gives_nan_and_bad_arguments_raise() -> None:
    regions = np.zeros((5, 5), np.int8)
    regions[2, 2] = 5
    means = shell_means(np.ones((5, 5)), regions)
    assert np.isnan(means[:4]).all() and means[4] == 1.0
    assert shell_shares(means)[4] == 1.0
    with pytest.raises(ConfigError, match="shell method"):
        shell_regions(_disc(), method="radial")
    with pytest.raises(ConfigError, match="n_shells"):
        shell_regions(_disc(), n_shells=0)
    with pytest.raises(InputError, match="2D mask"):
        shell_regions(np.ones(5, bool))
    with pytest.raises(InputError, match="same"):
        shell_means(np.ones((4, 4)), np.zeros((5, 5), np.int8))
    with pytest.raises(InputError, match="outside"):
        shell_means(np.ones((4, 4)), np.full((4, 4), 7, np.int8))
