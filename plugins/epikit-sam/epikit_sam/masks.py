"""Turning SAM's overlapping mask proposals into one nucleus label image.

SAM's automatic generator proposes many masks per image: whole nuclei, parts of nuclei,
clumps of touching nuclei and stretches of background. :func:`proposals_to_labels` keeps
the nucleus-like ones and resolves their overlaps, in four steps:

1. **Shape up**: holes inside each mask are filled (nucleoli are part of the nucleus).
2. **Filter**: a mask is kept when its area lies in ``[min_area, max_area]`` and at least
   ``min_foreground_fraction`` of its pixels are brighter than the image's foreground
   (Otsu) threshold; masks that cover background fail this test.
3. **Nesting**: a mask that contains two or more kept masks that do not overlap each other
   is a clump of nuclei and gives way to them; a mask that contains just one (a nucleus
   and a part of it, or one nucleus at two scales) keeps only the better ranked of the two.
4. **Paint**: masks claim pixels in order of quality (predicted IoU x stability score;
   ties go to the smaller mask). A mask keeps only its unclaimed pixels, and only their
   largest connected piece; it is dropped when that piece is smaller than ``min_area`` or
   than ``min_kept_fraction`` of the mask. Labels are numbered 1..n in painting order.

Everything here is plain NumPy/SciPy on boolean masks, so it is tested directly with
hand-made masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


@dataclass(frozen=True)
class MaskProposal:
    """One mask proposed by SAM: a boolean ``(Y, X)`` image and SAM's confidence in it."""

    mask: np.ndarray
    predicted_iou: float
    stability_score: float

    @property
    def score(self) -> float:
        """The quality used to rank overlapping masks (predicted IoU x stability score)."""
        return float(self.predicted_iou) * float(self.stability_score)


@dataclass(frozen=True)
class _Region:
    """A proposal cut to its bounding box, with its holes filled."""

    order: int
    score: float
    y0: int
    x0: int
    crop: np.ndarray
    area: int

    @property
    def y1(self) -> int:
        return self.y0 + self.crop.shape[0]

    @property
    def x1(self) -> int:
        return self.x0 + self.crop.shape[1]

    def window(self, image: np.ndarray) -> np.ndarray:
        """The part of a full-size ``image`` under this region's bounding box (a view)."""
        return image[self.y0 : self.y1, self.x0 : self.x1]


def _region(order: int, proposal: MaskProposal, shape: tuple[int, int]) -> _Region | None:
    mask = np.asarray(proposal.mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask proposal {order} has shape {mask.shape}, expected {shape}")
    box = ndimage.find_objects(mask.astype(np.uint8))
    if not box or box[0] is None:
        return None
    rows, cols = box[0]
    crop = ndimage.binary_fill_holes(mask[rows, cols])
    return _Region(order, proposal.score, rows.start, cols.start, crop, int(np.count_nonzero(crop)))


def _overlap(a: _Region, b: _Region) -> int:
    """Number of pixels two regions share."""
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    if y0 >= y1 or x0 >= x1:
        return 0
    part_a = a.crop[y0 - a.y0 : y1 - a.y0, x0 - a.x0 : x1 - a.x0]
    part_b = b.crop[y0 - b.y0 : y1 - b.y0, x0 - b.x0 : x1 - b.x0]
    return int(np.count_nonzero(part_a & part_b))


def foreground_threshold(intensity: np.ndarray) -> float:
    """Otsu threshold of the (normalised) nuclear channel, separating nuclei from background."""
    values = np.asarray(intensity, dtype=np.float32)
    if float(values.max()) <= float(values.min()):
        return float(values.max())
    return float(threshold_otsu(values))


def _filter(
    regions: list[_Region],
    foreground: np.ndarray,
    min_area: int,
    max_area: int,
    min_foreground_fraction: float,
) -> list[_Region]:
    kept = []
    for region in regions:
        if not min_area <= region.area <= max_area:
            continue
        bright = np.count_nonzero(region.window(foreground) & region.crop)
        if bright >= min_foreground_fraction * region.area:
            kept.append(region)
    return kept


def _ranked(regions: list[_Region]) -> list[_Region]:
    """Best first: higher score, then smaller area, then proposal order."""
    return sorted(regions, key=lambda r: (-r.score, r.area, r.order))


def _resolve_nesting(regions: list[_Region], contained: float = 0.9, disjoint: float = 0.2) -> list[_Region]:
    """Decide between masks that lie inside one another.

    A mask is *inside* a larger one when at least ``contained`` of its pixels lie in it; two
    masks are *separate* when they share at most ``disjoint`` of the smaller one. A mask
    holding two or more separate masks is a clump of nuclei and gives way to them.
    Otherwise a mask and a mask inside it show one nucleus at two scales (or a nucleus and
    a part of it): of each such pair only the better ranked is kept.
    """
    rank = {region.order: position for position, region in enumerate(_ranked(regions))}
    dropped: set[int] = set()
    for parent in regions:
        inside = [
            child for child in regions
            if child is not parent and child.area < parent.area
            and _overlap(child, parent) >= contained * child.area
        ]
        separate: list[_Region] = []
        for child in _ranked(inside):
            if all(_overlap(child, other) <= disjoint * min(child.area, other.area) for other in separate):
                separate.append(child)
        if len(separate) >= 2:
            dropped.add(parent.order)
            continue
        for child in inside:
            worse = parent if rank[child.order] < rank[parent.order] else child
            dropped.add(worse.order)
    return [region for region in regions if region.order not in dropped]


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    pieces, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    return pieces == int(np.argmax(sizes))


def _paint(
    regions: list[_Region], shape: tuple[int, int], min_area: int, min_kept_fraction: float
) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    next_label = 1
    for region in _ranked(regions):
        window = region.window(labels)
        free = _largest_piece(region.crop & (window == 0))
        kept = int(np.count_nonzero(free))
        if kept == 0 or kept < min_area or kept < min_kept_fraction * region.area:
            continue
        window[free] = next_label
        next_label += 1
    return labels


def proposals_to_labels(
    proposals: list[MaskProposal],
    intensity: np.ndarray,
    *,
    min_area: int = 30,
    max_area: int = 20_000,
    min_foreground_fraction: float = 0.5,
    min_kept_fraction: float = 0.5,
) -> np.ndarray:
    """Filter ``proposals`` to nuclei and resolve their overlaps into an int32 label image.

    ``intensity`` is the nuclear channel (any scale) the proposals were made on, shaped
    like the masks. Returns ``(Y, X)`` int32 labels, 0 = background, nuclei 1..n without
    gaps; no accepted mask gives all zeros. See the module docstring for the rules.
    """
    intensity = np.asarray(intensity)
    shape = intensity.shape
    if intensity.ndim != 2:
        raise ValueError(f"intensity must be a 2-D image, got shape {shape}")
    regions = [r for i, p in enumerate(proposals) if (r := _region(i, p, shape)) is not None]
    if not regions:
        return np.zeros(shape, dtype=np.int32)
    foreground = intensity > foreground_threshold(intensity)
    regions = _filter(regions, foreground, min_area, max_area, min_foreground_fraction)
    regions = _resolve_nesting(regions)
    return _paint(regions, shape, min_area, min_kept_fraction)
