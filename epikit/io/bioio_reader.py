"""Vendor formats (Nikon .nd2, Zeiss .czi, Leica .lif, Olympus/Evident .vsi/.oir, ...) through bioio.

``pip install 'epikit[formats]'`` installs bioio and its plugins; any file bioio can open is
then an input. bioio hands every image over as ``TCZYX`` with pixel sizes in micrometres;
each scene (position) of a multi-scene file is one image. A file whose plugin is missing
stops with one line naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import InputError
from epikit.io.images import ImageInfo, default_channel_names

#: The bioio plugin that reads each vendor suffix.
PLUGINS: dict[str, str] = {
    ".nd2": "bioio-nd2", ".czi": "bioio-czi", ".lif": "bioio-lif", ".vsi": "bioio-vsi",
    ".oir": "bioio-bioformats", ".ims": "bioio-imaris", ".dv": "bioio-dv", ".sldy": "bioio-sldy",
}
FORMATS_EXTRA = "pip install 'epikit[formats]'"


def _plugin_hint(path: Path) -> str:
    suffix = path.suffix.lower()
    plugin = PLUGINS.get(suffix)
    if plugin:
        return f"pip install {plugin}"
    return f"{FORMATS_EXTRA} or the bioio plugin for {suffix or 'this file type'}"


def open_bioimage(path: Path) -> Any:
    """``bioio.BioImage`` of ``path``, or a one-line :class:`InputError` naming the install that fixes it."""
    try:
        from bioio import BioImage
        from bioio_base.exceptions import UnsupportedFileFormatError
    except ImportError:
        raise InputError(f"{path}: epikit reads {path.suffix or 'this'} files through bioio, which is "
                         f"not installed; {FORMATS_EXTRA} (or convert the file to OME-TIFF)") from None
    try:
        return BioImage(path)
    except UnsupportedFileFormatError:
        raise InputError(f"{path}: no installed bioio plugin reads {path.suffix or 'this'} files; "
                         f"{_plugin_hint(path)}") from None
    except Exception as error:
        raise InputError(f"{path}: cannot read image ({type(error).__name__}: {error}); check that "
                         "the file is complete") from error


def _select(image: Any, path: Path, scene: int) -> None:
    scenes = list(image.scenes)
    if not 0 <= scene < len(scenes):
        raise InputError(f"{path}: has {len(scenes)} scene(s), no scene {scene}")
    image.set_scene(scene)
    if image.dims.T > 1:
        raise InputError(f"{path}: scene {scene} is a time series ({image.dims.T} time points); "
                         "epikit reads one time point: split the series first")


def _info(image: Any, path: Path) -> ImageInfo:
    dims = image.dims
    names = tuple(str(n) for n in image.channel_names or ())
    if len(names) != dims.C or not all(names):
        names = default_channel_names(dims.C)
    size = image.physical_pixel_sizes.X
    return ImageInfo(path, (dims.C, dims.Y, dims.X), names, dims.Z, len(image.scenes),
                     float(size) if size else None)


def probe_bioio(path: Path, scene: int = 0) -> ImageInfo:
    """Header of scene ``scene`` of a file bioio reads: shape, Z planes, scenes, channel names, pixel size."""
    image = open_bioimage(path)
    _select(image, path, scene)
    return _info(image, path)


def probe_bioio_scenes(path: Path) -> list[ImageInfo]:
    """The header of every scene of a file bioio reads (see :func:`probe_bioio`), from one open of the file."""
    image = open_bioimage(path)
    infos = []
    for scene in range(len(image.scenes)):
        _select(image, path, scene)
        infos.append(_info(image, path))
    return infos


def read_bioio(path: Path, scene: int = 0) -> tuple[np.ndarray, ImageInfo]:
    """Pixels ``(C, Z, Y, X)`` of scene ``scene`` of a file bioio reads, and its header."""
    image = open_bioimage(path)
    _select(image, path, scene)
    return np.asarray(image.get_image_data("CZYX", T=0)), _info(image, path)
