"""Nucleus size estimation and resampling: fields of known nucleus size, 10 to 400 px across."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from epikit.errors import InputError
from epikit.segmenters.scale import diameter_from_labels, estimate_diameter, resample, scaled_shape


def textured_field(diameter: float, side: int, count: int, seed: int = 0, touching: bool = False):
    """Disks of ``diameter`` with chromatin-like texture, dim uneven background and noise."""
    rng = np.random.default_rng(seed)
    radius = diameter / 2
    yy, xx = np.mgrid[:side, :side]
    labels = np.zeros((side, side), dtype=np.int32)
    centres: list[tuple[float, float]] = []
    for _ in range(5000):
        if len(centres) == count:
            break
        cy, cx = rng.uniform(radius, side - radius, size=2)
        spacing = 1.6 * radius if touching else 2.3 * radius
        if all(math.hypot(cy - y, cx - x) > spacing for y, x in centres):
            centres.append((cy, cx))
    for index, (cy, cx) in enumerate(centres, start=1):
        r = radius * rng.uniform(0.9, 1.1)
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 < r**2) & (labels == 0)] = index
    # Texture at a tenth of the nucleus size: bright foci and dark holes inside each nucleus.
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (side, side)), max(1.0, diameter / 20))
    texture /= texture.std()
    signal = (labels > 0) * (1.0 + 0.4 * texture) * 150.0
    background = 20.0 + 15.0 * xx / side
    image = rng.poisson(np.clip(ndimage.gaussian_filter(signal, 1.0) + background, 0, None)).astype(np.float32)
    return image, labels


@pytest.mark.parametrize(
    "diameter,side,count",
    [(10, 256, 60), (20, 384, 40), (50, 512, 12), (120, 1024, 12), (250, 1536, 9), (400, 2048, 8)],
)
def test_estimate_diameter_on_fields_of_known_nucleus_size(diameter, side, count):
    image, labels = textured_field(diameter, side, count, seed=diameter)
    truth = diameter_from_labels(labels)
    estimate = estimate_diameter(image)
    assert estimate == pytest.approx(truth, rel=0.2), (truth, estimate)


def test_touching_nuclei_are_measured_one_by_one():
    image, labels = textured_field(30, 384, 60, seed=3, touching=True)
    merged = ndimage.label(labels > 0)[1]
    assert merged < 0.8 * labels.max()  # the foreground really holds clumps
    assert estimate_diameter(image) == pytest.approx(diameter_from_labels(labels), rel=0.25)


def test_estimate_diameter_on_empty_and_bad_fields():
    assert estimate_diameter(np.zeros((64, 64), dtype=np.float32)) is None
    with pytest.raises(InputError, match="finite 2-D"):
        estimate_diameter(np.full((8, 8), np.nan, dtype=np.float32))


def test_resample_keeps_labels_integer_and_shapes_exact():
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[5:15, 5:20], labels[18:28, 22:38] = 3, 7
    up = resample(labels, scaled_shape(labels.shape, 2.5), labels=True)
    assert up.shape == (75, 100) and up.dtype == np.int32
    assert set(np.unique(up)) == {0, 3, 7}
    image = np.random.default_rng(0).random((101, 67)).astype(np.float32)
    down = resample(image, (20, 13))
    assert down.shape == (20, 13) and abs(down.mean() - image.mean()) < 0.02
    assert diameter_from_labels(np.zeros((4, 4), dtype=np.int32)) is None
