"""Label-image operations shared by the segmenters: input plane, size filter, holes, relabel.

Every built-in (and any plugin that wants to) ends with :func:`finalize_labels`, which
gives the segmenter contract's output: an int32 ``(Y, X)`` array, 0 = background, nuclei
labelled 1..n without gaps. :func:`nuclear_plane` turns the ``(C, Y, X)`` input into the
2D plane to segment and rejects unusable input with a one-line :class:`InputError`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from epikit.errors import InputError


def nuclear_plane(image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
    """The ``nuclear_channel`` plane of a ``(C, Y, X)`` (or ``(Y, X)``) image as float32.

    Raises :class:`InputError` for a wrong shape, a channel index out of range, or
    NaN / infinite pixels (which no threshold or network can segment meaningfully).
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or min(array.shape[1:], default=0) < 1:
        raise InputError(f"segmenter input must be an image shaped (C, Y, X); got shape "
                         f"{tuple(np.shape(image))}")
    channels = array.shape[0]
    if not -channels <= int(nuclear_channel) < channels:
        raise InputError(f"nuclear channel {nuclear_channel} does not exist in an image with "
                         f"{channels} channel(s); pick 0..{channels - 1}")
    if array.dtype.kind not in "biuf":
        raise InputError(f"segmenter input must be numeric; got dtype {array.dtype}")
    plane = array[int(nuclear_channel)].astype(np.float32, copy=False)
    finite = np.isfinite(plane)
    if not finite.all():
        bad = int(plane.size - np.count_nonzero(finite))
        raise InputError(f"nuclear channel {nuclear_channel} holds {bad} NaN/infinite pixel(s); "
                         "replace them (e.g. with the background value) before segmenting")
    return plane


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the non-zero labels of ``labels`` to 1..n, keeping their order; int32 out."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    present = present[present != 0]
    if present.size == 0:
        return np.zeros(labels.shape, dtype=np.int32)
    if present[-1] == present.size and present[0] == 1:
        return labels.astype(np.int32, copy=False)
    lookup = np.zeros(int(present[-1]) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[labels]


def filter_by_area(labels: np.ndarray, min_area: int = 0, max_area: int | None = None) -> np.ndarray:
    """Set objects with fewer than ``min_area`` or more than ``max_area`` pixels to 0."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.max() <= 0:
        return labels
    areas = np.bincount(labels.ravel())
    drop = areas < min_area
    if max_area is not None:
        drop |= areas > max_area
    drop[0] = False
    if not drop.any():
        return labels
    return np.where(drop[labels], 0, labels)


def fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """Give each background region enclosed by nuclei to the nucleus it touches most.

    Holes are background components not connected to the image border; a hole shared by
    two touching nuclei goes to the one with the longer common boundary.
    """
    labels = np.asarray(labels)
    foreground = labels > 0
    holes = ndimage.binary_fill_holes(foreground) & ~foreground
    if not holes.any():
        return labels
    hole_ids, n_holes = ndimage.label(holes)
    # Pixels bordering a hole: pair (hole id, nucleus label) and count the pairs.
    ring = ndimage.grey_dilation(hole_ids, size=(3, 3)) * foreground
    touching = ring > 0
    stride = np.int64(labels.max()) + 1
    pairs, counts = np.unique(ring[touching].astype(np.int64) * stride + labels[touching],
                              return_counts=True)
    hole_of_pair, owner_of_pair = np.divmod(pairs, stride)
    # Sort by hole, then count: the last pair of each hole is its most-touching owner.
    order = np.lexsort((counts, hole_of_pair))
    hole_sorted, owner_sorted = hole_of_pair[order], owner_of_pair[order]
    last = np.append(hole_sorted[1:] != hole_sorted[:-1], True)
    owner_of_hole = np.zeros(n_holes + 1, dtype=labels.dtype)
    owner_of_hole[hole_sorted[last]] = owner_sorted[last]
    filled = labels.copy()
    filled[holes] = owner_of_hole[hole_ids[holes]]
    return filled


def finalize_labels(
    labels: np.ndarray,
    min_area: int = 0,
    max_area: int | None = None,
    fill_holes: bool = True,
) -> np.ndarray:
    """Fill holes, drop objects outside ``[min_area, max_area]`` and relabel 1..n (int32)."""
    labels = np.asarray(labels)
    if fill_holes:
        labels = fill_label_holes(labels)
    labels = filter_by_area(labels, min_area, max_area)
    return relabel_sequential(labels)
