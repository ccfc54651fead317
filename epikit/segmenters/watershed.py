"""The ``watershed`` segmenter: classical nucleus segmentation with no weights.

Steps on the nuclear channel: an estimate of the nucleus diameter (unless given), Gaussian
smoothing that follows it, a global threshold (Li's by default),
hole filling, a distance transform whose maxima (spaced by the expected nucleus size) seed
a marker-controlled watershed that splits touching nuclei, then a size filter and
relabelling to 1..n. A field whose "foreground" is not clearly brighter than its
background (pure noise, a blank or constant image) yields zero nuclei.

Defaults were chosen on simulated fields (``epikit.simulate``): the default study-like
fields and fields drawn by ``sample_diverse_field_params`` (nucleus radius 6-40 px, sparse
to crowded, uneven illumination, low to high SNR), comparing on a held-out seed. Li's
threshold beat Otsu's there (Otsu cuts dim, textured nuclei into fragments), and a marker
spacing of 0.15 x the area-weighted typical diameter beat wider spacings; see
``bench/README.md`` for the numbers.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from epikit.errors import ConfigError
from epikit.segmenters.labels import filter_by_area, finalize_labels, nuclear_plane
from epikit.segmenters.scale import estimate_diameter

THRESHOLD_METHODS = ("li", "otsu", "triangle", "yen", "mean")
MARKER_SPACING = 0.15  # default min_distance as a fraction of the nucleus diameter
MIN_AREA_FRACTION = 0.1  # default min_area as a fraction of the typical nucleus area
SIGMA_FRACTION = 1 / 40  # default smoothing as a fraction of the diameter (at least 1 px)


def _auto_threshold(values: np.ndarray, method: str) -> float:
    from skimage import filters

    function = getattr(filters, f"threshold_{method}")
    return float(function(values))


class WatershedSegmenter:
    """Threshold + distance-transform watershed on the nuclear channel.

    Parameters
    ----------
    sigma:
        Gaussian smoothing (pixels) before thresholding; 0 turns it off. Default:
        ``max(1, diameter / 40)``, so the texture of large nuclei is smoothed away.
    threshold:
        ``"li"``, ``"otsu"``, ``"triangle"``, ``"yen"``, ``"mean"`` (scikit-image's
        automatic thresholds), or a number in the nuclear channel's intensity units.
    diameter:
        Expected nucleus diameter in pixels; ``None`` estimates it per image
        (:func:`epikit.segmenters.scale.estimate_diameter`). It sets the default smoothing,
        the marker spacing and the default minimum area.
    min_distance:
        Smallest distance (pixels) between two distance-transform maxima that seed
        separate nuclei; default ``0.15 * diameter``.
    min_area, max_area:
        Objects outside this area range (pixels) are dropped; ``min_area`` defaults to a
        tenth of the expected nucleus area.
    min_contrast:
        The foreground must exceed the background by this many background noise standard
        deviations, else the field is treated as empty.
    fill_holes:
        Fill background holes enclosed by a nucleus.
    """

    def __init__(
        self,
        sigma: float | None = None,
        threshold: str | float = "li",
        diameter: float | None = None,
        min_distance: float | None = None,
        min_area: int | None = None,
        max_area: int | None = None,
        min_contrast: float = 3.0,
        fill_holes: bool = True,
    ) -> None:
        if isinstance(threshold, str) and threshold not in THRESHOLD_METHODS:
            raise ConfigError(f"watershed threshold {threshold!r} is not a number or one of "
                              f"{', '.join(THRESHOLD_METHODS)}")
        if not isinstance(threshold, (str, int, float)) or isinstance(threshold, bool):
            raise ConfigError(f"watershed threshold must be a method name or a number, "
                              f"got {threshold!r}")
        for name, value in (("sigma", sigma or 0.0), ("min_contrast", min_contrast)):
            if value < 0:
                raise ConfigError(f"watershed {name} must be >= 0, got {value}")
        for name, value in (("diameter", diameter), ("min_distance", min_distance)):
            if value is not None and value <= 0:
                raise ConfigError(f"watershed {name} must be > 0, got {value}")
        if min_area is not None and max_area is not None and max_area < min_area:
            raise ConfigError(f"watershed max_area ({max_area}) is below min_area ({min_area})")
        self.sigma = None if sigma is None else float(sigma)
        self.threshold = threshold
        self.diameter = diameter
        self.min_distance = min_distance
        self.min_area = min_area
        self.max_area = max_area
        self.min_contrast = float(min_contrast)
        self.fill_holes = bool(fill_holes)

    def foreground(self, plane: np.ndarray) -> np.ndarray:
        """Boolean nucleus mask of a smoothed plane (all False for an empty field)."""
        if not plane.size or float(plane.max()) - float(plane.min()) <= 1e-6 * max(1.0, abs(float(plane.max()))):
            return np.zeros(plane.shape, dtype=bool)
        if isinstance(self.threshold, str):
            level = _auto_threshold(plane, self.threshold)
        else:
            level = float(self.threshold)
        mask = plane > level
        if not mask.any() or mask.all():
            return np.zeros(plane.shape, dtype=bool)
        background = plane[~mask]
        median = float(np.median(background))
        noise = 1.4826 * float(np.median(np.abs(background - median)))
        contrast = float(np.median(plane[mask])) - median
        if contrast <= self.min_contrast * max(noise, 1e-12 * max(1.0, abs(median))):
            return np.zeros(plane.shape, dtype=bool)
        if self.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        return mask

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        """Label the nuclei of ``image[nuclear_channel]``: int32 (Y, X), 0 = background."""
        plane = nuclear_plane(image, nuclear_channel)
        diameter = self.diameter or estimate_diameter(plane) or 3.0
        sigma = self.sigma if self.sigma is not None else max(1.0, SIGMA_FRACTION * diameter)
        smooth = ndimage.gaussian_filter(plane, sigma) if sigma > 0 else plane
        mask = self.foreground(smooth)
        components, count = ndimage.label(mask)
        if count == 0:
            return np.zeros(plane.shape, dtype=np.int32)
        min_area = self.min_area
        if min_area is None:
            min_area = max(4, int(MIN_AREA_FRACTION * np.pi * (diameter / 2) ** 2))
        components = filter_by_area(components, min_area)
        labels = self._split(components > 0, diameter)
        return finalize_labels(labels, min_area, self.max_area, fill_holes=self.fill_holes)

    def _split(self, mask: np.ndarray, diameter: float) -> np.ndarray:
        """Watershed of the distance transform seeded at its well-separated maxima."""
        from skimage.feature import peak_local_max
        from skimage.segmentation import watershed

        components, count = ndimage.label(mask)
        if count == 0:
            return components
        distance = ndimage.distance_transform_edt(mask)
        distance = ndimage.gaussian_filter(distance, 1.0)
        min_distance = self.min_distance if self.min_distance is not None else MARKER_SPACING * diameter
        peaks = peak_local_max(distance, min_distance=max(1, int(round(min_distance))),
                               labels=components, exclude_border=False)
        markers = np.zeros(mask.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        labels = watershed(-distance, markers, mask=mask)
        # A component without a maximum (e.g. a thin sliver) keeps its own label.
        orphans, n_orphans = ndimage.label(mask & (labels == 0))
        if n_orphans:
            labels = np.where(orphans > 0, orphans + labels.max(), labels)
        return labels
