"""Readers for multi-channel microscopy images: TIFF / OME-TIFF and PNG.

Every reader returns channel-first ``float32`` arrays ``(C, Y, X)``. Channel order is the
file's; channel names come from OME metadata when present. Anything that is not a single
2D plane per channel (a Z-stack, a time series) is rejected with the file named.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epikit.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
IMAGE_SUFFIXES = TIFF_SUFFIXES + PNG_SUFFIXES
# tifffile axis letters that may hold channels; anything else that is not Y/X must be length 1.
CHANNEL_AXES = "CSQI"
MAX_CHANNELS = 64


@dataclass(frozen=True)
class ImageData:
    """Pixels ``array`` (C, Y, X) float32 of one image and its ``channel_names``."""

    array: np.ndarray
    channel_names: tuple[str, ...]


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, read without loading pixels."""

    path: Path
    shape: tuple[int, int, int]  # (C, Y, X)
    channel_names: tuple[str, ...]


def default_channel_names(count: int) -> tuple[str, ...]:
    """Names used when a file does not name its channels: ``ch0, ch1, ...``."""
    return tuple(f"ch{i}" for i in range(count))


def _ome_channel_names(ome_xml: str | None) -> tuple[str, ...]:
    if not ome_xml:
        return ()
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return ()
    names = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Channel":
            names.append(element.attrib.get("Name", ""))
    return tuple(names) if names and all(names) else ()


def _channel_layout(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[int | None, bool]:
    """Find the channel axis in ``axes``; returns (axis or None, channel_last flag).

    Raises :class:`InputError` when the image is not 2D per channel.
    """
    extra = [(i, a, n) for i, (a, n) in enumerate(zip(axes, shape)) if a not in "YX" and n > 1]
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"{path}: cannot find the Y and X axes (axes {axes!r}, shape {shape}); "
                         "save it as a 2D multi-channel TIFF")
    if not extra:
        return None, False
    if len(extra) > 1 or extra[0][1] not in CHANNEL_AXES:
        described = ", ".join(f"{a}={n}" for _, a, n in extra)
        raise InputError(f"{path}: not a 2D image ({described} besides Y and X); "
                         "epikit needs one 2D plane per channel: project or split the stack first")
    axis, _, count = extra[0]
    if count > MAX_CHANNELS:
        raise InputError(f"{path}: {count} planes along axis {axes[axis]!r} is not a channel "
                         f"count (max {MAX_CHANNELS}); is this a stack? project or split it first")
    return axis, axis > axes.index("X")


def _tiff_header(path: Path) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        names = _ome_channel_names(tif.ome_metadata) if tif.is_ome else ()
        return series.axes, tuple(series.shape), names


def _png_array(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3]
        if all(np.array_equal(array[..., 0], array[..., i]) for i in range(1, array.shape[-1])):
            array = array[..., 0]
        else:
            array = np.moveaxis(array, -1, 0)
    return array if array.ndim == 3 else array[None]


def _open_error(path: Path, error: Exception) -> InputError:
    return InputError(f"{path}: cannot read image ({type(error).__name__}: {error}); "
                      "check that the file is a complete TIFF/PNG or remove it from the input")


def probe_image(path: str | os.PathLike[str]) -> ImageInfo:
    """Read the header of ``path``: (C, Y, X) shape and channel names, without the pixels."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            axes, shape, names = _tiff_header(path)
        elif suffix in PNG_SUFFIXES:
            array = _png_array(path)
            axes, shape, names = "CYX", array.shape, ()
        else:
            raise InputError(f"{path}: unsupported image type {suffix!r}; use TIFF, OME-TIFF or PNG")
    except InputError:
        raise
    except Exception as error:
        raise _open_error(path, error) from error
    channel_axis, _ = _channel_layout(path, axes, shape)
    y, x = shape[axes.index("Y")], shape[axes.index("X")]
    count = 1 if channel_axis is None else shape[channel_axis]
    if len(names) != count:
        names = default_channel_names(count)
    return ImageInfo(path, (count, y, x), names)


def _read_pixels(path: Path, info: ImageInfo) -> np.ndarray:
    """Pixels of ``path`` as (C, Y, X) in the file's own dtype."""
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, raw = series.axes, series.asarray()
            channel_axis, _ = _channel_layout(path, axes, raw.shape)
            order = ([channel_axis] if channel_axis is not None else []) + [
                axes.index("Y"), axes.index("X")]
            # Move channel, Y, X to the front; what is left has length 1 and is dropped.
            rest = [i for i in range(raw.ndim) if i not in order]
            array = np.transpose(raw, order + rest).reshape(info.shape)
        else:
            array = _png_array(path).reshape(info.shape)
    except InputError:
        raise
    except Exception as error:
        raise _open_error(path, error) from error
    return array


def read_image(path: str | os.PathLike[str]) -> ImageData:
    """Read ``path`` as channel-first float32 ``(C, Y, X)`` with its channel names."""
    path = Path(path)
    info = probe_image(path)
    return ImageData(_read_pixels(path, info).astype(np.float32), info.channel_names)


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 2D label image (TIFF or PNG) as int32; raises :class:`InputError` if not 2D."""
    path = Path(path)
    info = probe_image(path)
    if info.shape[0] != 1:
        raise InputError(f"{path}: a label image must be 2D, found {info.shape[0]} channels")
    labels = _read_pixels(path, info)[0]
    if labels.dtype.kind not in "iub" or (labels.size and labels.min() < 0):
        raise InputError(f"{path}: a label image must hold non-negative integers "
                         f"(found dtype {labels.dtype}); save labels as an integer TIFF")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise InputError(f"{path}: label values exceed the int32 range")
    return labels.astype(np.int32)
