"""Readers for multi-channel microscopy images: TIFF / OME-TIFF and PNG (the fast path).

:func:`read_stack` returns the file's pixels as ``(C, Z, Y, X)``; :func:`read_image` projects
a Z-stack (see :mod:`epikit.io.zstack`) and returns channel-first ``float32`` ``(C, Y, X)``.
Channel order is the file's; channel names and the pixel size (micrometres) come from OME
or ImageJ metadata when present; each image of a multi-image OME-TIFF is a scene. Anything
else besides Y, X, one channel axis and one Z axis (a time series) is rejected with the
file named.
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
#: Micrometres per unit of the length units OME and ImageJ metadata use.
UNIT_UM: dict[str, float] = {"m": 1e6, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
                             "nm": 1e-3, "pm": 1e-6, "cm": 1e4}


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
    n_z: int = 1
    n_scenes: int = 1
    pixel_size_um: float | None = None


def default_channel_names(count: int) -> tuple[str, ...]:
    """Names used when a file does not name its channels: ``ch0, ch1, ...``."""
    return tuple(f"ch{i}" for i in range(count))


def length_in_um(value: float | str | None, unit: str | None) -> float | None:
    """``value`` in ``unit`` (default micrometres) as micrometres; None if absent or not positive."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    factor = UNIT_UM.get((unit or "µm").strip().lower().replace("\u03bc", "\u00b5"))
    return number * factor if factor is not None and number > 0 else None


def _tag(element: ElementTree.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


def _ome_image(ome_xml: str | None, scene: int) -> tuple[tuple[str, ...], float | None]:
    """Channel names and X pixel size (µm) of image ``scene`` of an OME-XML header."""
    if not ome_xml:
        return (), None
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return (), None
    images = [e for e in root if _tag(e) == "Image"]
    if scene >= len(images):
        return (), None
    pixels = next((e for e in images[scene] if _tag(e) == "Pixels"), None)
    if pixels is None:
        return (), None
    names = tuple(e.attrib.get("Name", "") for e in pixels if _tag(e) == "Channel")
    size = length_in_um(pixels.attrib.get("PhysicalSizeX"), pixels.attrib.get("PhysicalSizeXUnit"))
    return (names if names and all(names) else ()), size


def _imagej_pixel_size(tif: object) -> float | None:
    """X pixel size (µm) of an ImageJ TIFF: XResolution (pixels per unit) in ImageJ's unit."""
    metadata = getattr(tif, "imagej_metadata", None) or {}
    unit = metadata.get("unit")
    if not unit:
        return None
    try:
        numerator, denominator = tif.pages[0].tags["XResolution"].value  # type: ignore[attr-defined]
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return length_in_um(denominator / numerator, unit) if numerator else None


def axes_layout(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[int | None, int | None]:
    """Find the channel axis and the Z axis in ``axes`` (each None when absent or of length 1).

    Raises :class:`InputError` when anything else besides Y and X is longer than 1.
    """
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"{path}: cannot find the Y and X axes (axes {axes!r}, shape {shape}); "
                         "save it as a 2D or Z-stack multi-channel TIFF")
    extra = [(i, a, n) for i, (a, n) in enumerate(zip(axes, shape)) if a not in "YX" and n > 1]
    z_axis = next((i for i, a, _ in extra if a == "Z"), None)
    extra = [e for e in extra if e[1] != "Z"]
    if len(extra) > 1 or (extra and extra[0][1] not in CHANNEL_AXES):
        described = ", ".join(f"{a}={n}" for _, a, n in extra)
        raise InputError(f"{path}: not a channel or Z axis ({described} besides Y and X); "
                         "epikit reads one image (Z-stack) per channel: split time series first")
    if not extra:
        return None, z_axis
    axis, _, count = extra[0]
    if count > MAX_CHANNELS:
        raise InputError(f"{path}: {count} planes along axis {axes[axis]!r} is not a channel "
                         f"count (max {MAX_CHANNELS}); is this a Z-stack? save it as OME-TIFF "
                         "or ImageJ TIFF with a Z axis")
    return axis, z_axis


def _tiff_headers(path: Path, scene: int | None) -> list[tuple[str, tuple[int, ...], tuple[str, ...], int, float | None]]:
    """Axes, shape, channel names, number of scenes and pixel size (µm) of scene ``scene`` of a
    TIFF, or of every scene (``None``), from one open of the file."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        scenes = len(tif.series) if tif.is_ome else 1
        if scene is not None and not 0 <= scene < scenes:
            raise InputError(f"{path}: has {scenes} scene(s), no scene {scene}")
        headers = []
        for k in range(scenes) if scene is None else [scene]:
            series = tif.series[k]
            names, size = _ome_image(tif.ome_metadata, k) if tif.is_ome else ((), None)
            if size is None and tif.is_imagej:
                size = _imagej_pixel_size(tif)
            headers.append((series.axes, tuple(series.shape), names, scenes, size))
        return headers


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


def probe_image(path: str | os.PathLike[str], scene: int = 0) -> ImageInfo:
    """Read the header of ``path`` (scene ``scene``): (C, Y, X) shape, Z planes, scenes,
    channel names and pixel size, without the pixels."""
    return _probe_headers(Path(path), scene)[0]


def probe_image_scenes(path: str | os.PathLike[str]) -> list[ImageInfo]:
    """The header of every scene of ``path`` (see :func:`probe_image`), from one open of the file."""
    return _probe_headers(Path(path), None)


def _probe_headers(path: Path, scene: int | None) -> list[ImageInfo]:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            headers = _tiff_headers(path, scene)
        elif suffix in PNG_SUFFIXES:
            array = _png_array(path)
            headers = [("CYX", array.shape, (), 1, None)]
        else:
            raise InputError(f"{path}: unsupported image type {suffix!r}; use TIFF, OME-TIFF or PNG")
    except InputError:
        raise
    except Exception as error:
        raise _open_error(path, error) from error
    return [info_from_axes(path, *header) for header in headers]


def info_from_axes(path: Path, axes: str, shape: tuple[int, ...], names: tuple[str, ...],
                   scenes: int = 1, pixel_size_um: float | None = None) -> ImageInfo:
    """The :class:`ImageInfo` of an image with axis letters ``axes`` (e.g. ``"CZYX"``) and ``shape``."""
    channel_axis, z_axis = axes_layout(path, axes, shape)
    y, x = shape[axes.index("Y")], shape[axes.index("X")]
    count = 1 if channel_axis is None else shape[channel_axis]
    if len(names) != count:
        names = default_channel_names(count)
    n_z = 1 if z_axis is None else shape[z_axis]
    return ImageInfo(path, (count, y, x), names, n_z, scenes, pixel_size_um)


def to_czyx(path: Path, axes: str, raw: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Reorder an array with axis letters ``axes`` to ``(C, Z, Y, X)`` (no copy where possible)."""
    channel_axis, z_axis = axes_layout(path, axes, raw.shape)
    order = [a for a in (channel_axis, z_axis) if a is not None] + [axes.index("Y"), axes.index("X")]
    # Move channel, Z, Y, X to the front; what is left has length 1 and is dropped.
    rest = [i for i in range(raw.ndim) if i not in order]
    return np.transpose(raw, order + rest).reshape((info.shape[0], info.n_z) + info.shape[1:])


def read_stack(path: str | os.PathLike[str], scene: int = 0) -> tuple[np.ndarray, ImageInfo]:
    """Pixels of ``path`` (scene ``scene``) as ``(C, Z, Y, X)`` in the file's dtype, and its header."""
    path = Path(path)
    info = probe_image(path, scene)
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[scene]
                axes, raw = series.axes, series.asarray()
            array = to_czyx(path, axes, raw, info)
        else:
            array = _png_array(path).reshape((info.shape[0], 1) + info.shape[1:])
    except InputError:
        raise
    except Exception as error:
        raise _open_error(path, error) from error
    return array, info


def read_image(path: str | os.PathLike[str], *, z: str | int = "max", z_channel: int = 0,
               scene: int = 0) -> ImageData:
    """Read ``path`` as channel-first float32 ``(C, Y, X)`` with its channel names.

    A Z-stack is projected by ``z`` (``max``, ``mean``, ``best`` (the sharpest plane of
    channel ``z_channel``) or a plane index; see :func:`epikit.io.zstack.project`).
    """
    from epikit.io.zstack import project

    stack, info = read_stack(path, scene)
    return ImageData(project(stack, z, z_channel, str(path)), info.channel_names)


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 2D label image (TIFF or PNG) as int32; raises :class:`InputError` if not 2D."""
    path = Path(path)
    stack, info = read_stack(path)
    if info.shape[0] != 1 or info.n_z != 1:
        raise InputError(f"{path}: a label image must be 2D, found {info.shape[0]} channels "
                         f"and {info.n_z} z-planes")
    labels = stack[0, 0]
    if labels.dtype.kind not in "iub" or (labels.size and labels.min() < 0):
        raise InputError(f"{path}: a label image must hold non-negative integers "
                         f"(found dtype {labels.dtype}); save labels as an integer TIFF")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise InputError(f"{path}: label values exceed the int32 range")
    return labels.astype(np.int32)
