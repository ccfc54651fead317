"""Crop-space maps back on the image: each nucleus's explanation map placed over its pixels.

Crops are affine views of the image (:mod:`epikit.nuclei.crops`): output pixel ``(i, j)``
samples image point ``centre + axes @ ((i, j) - (S - 1) / 2) / scale``. The axes are
orthonormal, so every image pixel ``p`` of a nucleus maps back to crop coordinates
``axes.T @ (p - centre) * scale + (S - 1) / 2``, where its map is sampled bilinearly. The
geometry is recomputed from the label image with the crop settings ``crops.zarr`` records,
so the map lands exactly where the crop came from (resized, rotated or not)::

    image_map = place_maps(labels, {7: map_of_nucleus_7}, CropSettings(crop_size=64))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from epikit.nuclei.crops import CropSettings, find_nuclei


def place_maps(labels: np.ndarray, maps: Mapping[int, np.ndarray], settings: CropSettings) -> np.ndarray:
    """float32 ``(Y, X)``: each ``maps[label] (S, S)`` over the pixels of nucleus ``label``, NaN elsewhere."""
    selection = find_nuclei(np.asarray(labels), replace(settings, min_area=0, max_area=0))
    placed = np.full(np.shape(labels), np.nan, dtype=np.float32)
    half = (settings.crop_size - 1) / 2
    for nucleus in selection.nuclei:
        if nucleus.label not in maps:
            continue
        y0, x0, _, _ = nucleus.bbox
        rows, cols = np.nonzero(labels[nucleus.slices] == nucleus.label)
        rows, cols = rows + y0, cols + x0
        offsets = np.stack([rows - nucleus.centre[0], cols - nucleus.centre[1]], axis=1)
        crop = offsets @ np.asarray(nucleus.axes) * nucleus.scale + half
        values = ndi.map_coordinates(np.asarray(maps[nucleus.label], dtype=np.float32), crop.T,
                                     order=1, mode="nearest")
        placed[rows, cols] = values
    return placed
