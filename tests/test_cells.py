"""Crop extraction: nucleus choice, masking, resizing, alignment, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import ellipse

from epikit.nuclei.crops import CropSettings, crop_nuclei, describe_nuclei, find_nuclei, intensity_range
from epikit.errors import ConfigError


def _field(shapes: list[tuple[float, float, float, float, float]], size: int = 160, seed: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Labels and a 2-channel image with nuclei ``(cy, cx, a, b, rotation)`` and a textured background."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    for label, (cy, cx, a, b, rotation) in enumerate(shapes, start=1):
        labels[ellipse(cy, cx, a, b, rotation=rotation, shape=labels.shape)] = label
    image = rng.uniform(5, 15, (2, size, size)).astype(np.float32)
    image[0][labels > 0] += 200 + rng.uniform(0, 50, (labels > 0).sum())
    image[1][labels > 0] += 100
    return image, labels


def _moments(mask: np.ndarray) -> tuple[float, float, float]:
    rows, cols = np.nonzero(mask)
    return rows.var(), cols.var(), np.cov(rows, cols)[0, 1]


def test_border_and_area_filters_are_counted() -> None:
    shapes = [(50, 50, 12, 8, 0.0), (3, 80, 10, 6, 0.0), (100, 100, 2, 2, 0.0), (120, 40, 30, 25, 0.0),
              (80, 150, 8, 20, 0.0)]
    _, labels = _field(shapes)
    selection = find_nuclei(labels, CropSettings(min_area=30, max_area=1500))
    assert [n.label for n in selection.nuclei] == [1]
    assert selection.skipped == {"border": 2, "small": 1, "large": 1}
    areas = np.bincount(labels.ravel())
    assert selection.nuclei[0].area == areas[1]
    assert areas[3] < 30 and areas[4] > 1500
    # Without an upper limit (0) the big nucleus is kept.
    unlimited = find_nuclei(labels, CropSettings(min_area=30, max_area=0))
    assert [n.label for n in unlimited.nuclei] == [1, 4]
    assert unlimited.skipped == {"border": 2, "small": 1, "large": 0}


def test_native_crops_are_exact_copies_of_the_nucleus() -> None:
    image, labels = _field([(60, 70, 14, 9, 0.4), (110, 50, 10, 10, 0.0)])
    settings = CropSettings(crop_size=48, scale="native", normalise="none")
    nuclei = find_nuclei(labels, settings).nuclei
    crops, masks = crop_nuclei(image, labels, nuclei, settings)
    assert crops.shape == (2, 2, 48, 48) and masks.shape == (2, 48, 48) and masks.dtype == np.uint8
    for crop, mask, nucleus in zip(crops, masks, nuclei):
        inside = labels == nucleus.label
        assert mask.sum() == inside.sum()
        np.testing.assert_array_equal(np.sort(crop[0][mask.astype(bool)]), np.sort(image[0][inside]))
        assert not crop[:, mask == 0].any()  # zero outside the nucleus
        assert not nucleus.clipped


def test_fit_crops_fill_the_square_keeping_the_aspect_ratio() -> None:
    image, labels = _field([(80, 80, 30, 12, 0.0)])  # tall nucleus: 61 x 25 px
    settings = CropSettings(crop_size=32)
    (nucleus,) = find_nuclei(labels, settings).nuclei
    crops, masks = crop_nuclei(image, labels, [nucleus], settings)
    rows = np.flatnonzero(masks[0].any(axis=1))
    cols = np.flatnonzero(masks[0].any(axis=0))
    assert rows[0] == 0 and rows[-1] == 31  # the long side spans the crop
    y0, x0, y1, x1 = nucleus.bbox
    assert (cols[-1] - cols[0] + 1) / 32 == pytest.approx((x1 - x0) / (y1 - y0), abs=0.08)
    assert abs((cols[0] + cols[-1]) / 2 - 15.5) <= 1  # centred


def test_uniform_nucleus_keeps_its_value_up_to_the_rim_when_resized() -> None:
    labels = np.zeros((100, 100), np.int32)
    labels[ellipse(50, 50, 14, 9, rotation=0.3)] = 1
    image = np.where(labels > 0, 100.0, 0.0).astype(np.float32)[None]
    for size in (64, 16):  # upscaled and downscaled (anti-aliased)
        settings = CropSettings(crop_size=size, normalise="none")
        crops, masks = crop_nuclei(image, labels, find_nuclei(labels, settings).nuclei, settings)
        inside = masks[0].astype(bool)
        np.testing.assert_allclose(crops[0, 0][inside], 100.0, rtol=1e-3)
        assert not crops[0, 0][~inside].any()


@pytest.mark.parametrize("rotation", [0.0, 0.5, 1.1, -0.8])
def test_major_axis_alignment_makes_the_long_axis_horizontal(rotation: float) -> None:
    image, labels = _field([(80, 80, 28, 11, rotation)])
    settings = CropSettings(crop_size=48, align="major-axis")
    (nucleus,) = find_nuclei(labels, settings).nuclei
    _, masks = crop_nuclei(image, labels, [nucleus], settings)
    var_rows, var_cols, covariance = _moments(masks[0])
    assert var_cols > 3 * var_rows
    assert abs(covariance) < 0.1 * var_cols
    cols = np.flatnonzero(masks[0].any(axis=0))
    assert cols[0] <= 1 and cols[-1] >= 46  # fit: the major axis spans the crop


def test_keep_context_and_normalisation_modes() -> None:
    image, labels = _field([(80, 80, 15, 10, 0.2)])
    base = CropSettings(crop_size=40, scale="native", normalise="none")
    nuclei = find_nuclei(labels, base).nuclei
    masked, masks = crop_nuclei(image, labels, nuclei, base)
    context, context_masks = crop_nuclei(image, labels, nuclei, CropSettings(
        crop_size=40, scale="native", normalise="none", keep_context=True))
    np.testing.assert_array_equal(masks, context_masks)
    outside = masks[0] == 0
    assert not masked[0][:, outside].any()
    assert (context[0][:, outside] >= 5).all()  # the background is kept
    np.testing.assert_allclose(context[0][:, ~outside], masked[0][:, ~outside])

    low, high = intensity_range(image, (1.0, 99.8))
    per_image, _ = crop_nuclei(image, labels, nuclei, CropSettings(crop_size=40, scale="native"))
    expected = (masked[0] - low[:, None, None]) / (high - low)[:, None, None]
    np.testing.assert_allclose(per_image[0][:, ~outside], expected[:, ~outside], rtol=1e-5, atol=1e-5)

    per_cell, _ = crop_nuclei(image, labels, nuclei, CropSettings(crop_size=40, scale="native",
                                                                  normalise="cell"))
    values = per_cell[0][:, ~outside]
    np.testing.assert_allclose(np.percentile(values, [1, 99.8], axis=1), [[0, 0], [1, 1]], atol=1e-4)


def test_native_scale_clips_nuclei_larger_than_the_crop() -> None:
    image, labels = _field([(80, 80, 30, 12, 0.0), (40, 40, 8, 8, 0.0)])
    settings = CropSettings(crop_size=32, scale="native")
    selection = find_nuclei(labels, settings)
    assert selection.clipped == 1
    assert [n.clipped for n in selection.nuclei] == [True, False]
    crops, masks = crop_nuclei(image, labels, selection.nuclei, settings)
    assert masks[0].sum() < selection.nuclei[0].area  # only the centre part fits
    assert not find_nuclei(labels, CropSettings(crop_size=32)).clipped  # fit never clips


def test_study_sized_crops_and_rows() -> None:
    image, labels = _field([(80, 80, 20, 14, 0.7)])
    settings = CropSettings(crop_size=600, align="major-axis")
    nuclei = find_nuclei(labels, settings).nuclei
    crops, masks = crop_nuclei(image, labels, nuclei, settings)
    assert crops.shape == (1, 2, 600, 600) and masks[0].any(axis=0).sum() >= 598
    rows = describe_nuclei(image, labels, nuclei, ["DNA", "H3K27ac"])
    assert rows[0]["label"] == 1 and rows[0]["area"] == (labels == 1).sum()
    assert rows[0]["crop_scale"] == pytest.approx(600 / nuclei[0].length)
    assert "H3K27ac_shell_1_share" in rows[0] and "perimeter" in rows[0]
    assert "perimeter" not in describe_nuclei(image, labels, nuclei, ["DNA", "H3K27ac"], features=False)[0]


def test_invalid_settings_raise_config_errors() -> None:
    for bad in ({"crop_size": 4}, {"scale": "zoom"}, {"align": "minor"}, {"normalise": "zscore"},
                {"percentiles": (50, 10)}, {"min_area": 100, "max_area": 50}):
        with pytest.raises(ConfigError):
            CropSettings(**bad)
