"""Pixels of an input, whatever holds them: the one place that picks a reader.

* TIFF / OME-TIFF / PNG: the fast path of :mod:`epikit.io.images` (no extra needed);
* an OME-Zarr image folder (``*.zarr``, or a plate's field): :mod:`epikit.io.omezarr`;
* anything else (Nikon .nd2, Zeiss .czi, Leica .lif, ...): bioio (:mod:`epikit.io.bioio_reader`).

:func:`read_record` reads an :class:`~epikit.io.record.ImageRecord`: its scene, or its one
file per channel stacked in channel order, projected to one plane per channel by the
record's ``z`` (see :mod:`epikit.io.zstack`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from epikit.errors import InputError
from epikit.io.images import IMAGE_SUFFIXES, ImageData, ImageInfo, probe_image, probe_image_scenes, read_stack
from epikit.io.record import ImageRecord
from epikit.io.zstack import project


def _kind(path: Path) -> str:
    from epikit.io.omezarr import is_ome_zarr

    if path.is_dir():
        if is_ome_zarr(path):
            return "ome-zarr"
        raise InputError(f"{path}: a folder that is no OME-Zarr image (no multiscales attributes); "
                         "give an image file or an OME-Zarr image")
    if not path.exists():
        raise InputError(f"{path}: file not found")
    return "native" if path.suffix.lower() in IMAGE_SUFFIXES else "bioio"


def probe_source(path: str | os.PathLike[str], scene: int = 0) -> ImageInfo:
    """Header of any input (file or OME-Zarr folder): shape, Z planes, scenes, names, pixel size."""
    path = Path(path)
    kind = _kind(path)
    if kind == "native":
        return probe_image(path, scene)
    if kind == "ome-zarr":
        from epikit.io.omezarr import probe_ome_zarr

        return probe_ome_zarr(path)
    from epikit.io.bioio_reader import probe_bioio

    return probe_bioio(path, scene)


def probe_scenes(path: str | os.PathLike[str]) -> list[ImageInfo]:
    """Headers of every scene of any input (see :func:`probe_source`), each file opened once."""
    path = Path(path)
    kind = _kind(path)
    if kind == "native":
        return probe_image_scenes(path)
    if kind == "ome-zarr":
        from epikit.io.omezarr import probe_ome_zarr

        return [probe_ome_zarr(path)]
    from epikit.io.bioio_reader import probe_bioio_scenes

    return probe_bioio_scenes(path)


def read_source(path: str | os.PathLike[str], scene: int = 0) -> tuple[np.ndarray, ImageInfo]:
    """Pixels ``(C, Z, Y, X)`` of any input in its own dtype, and its header."""
    path = Path(path)
    kind = _kind(path)
    if kind == "native":
        return read_stack(path, scene)
    if kind == "ome-zarr":
        from epikit.io.omezarr import read_ome_zarr

        return read_ome_zarr(path)
    from epikit.io.bioio_reader import read_bioio

    return read_bioio(path, scene)


def check_same_shape(first: ImageInfo, other: ImageInfo) -> None:
    """Files of one field must agree in (Y, X) and Z planes; raise a one-line error otherwise."""
    if (first.shape[1:], first.n_z) != (other.shape[1:], other.n_z):
        raise InputError(f"{other.path}: is {other.shape[1]}x{other.shape[2]} with {other.n_z} plane(s) "
                         f"but {first.path} of the same field is {first.shape[1]}x{first.shape[2]} with "
                         f"{first.n_z}; the channel files of one field must have the same shape")


def read_record(record: ImageRecord) -> ImageData:
    """The image of ``record`` as float32 ``(C, Y, X)`` (projected), named by the record's channels."""
    if record.channel_files:
        stacks, first = [], None
        for path in record.channel_files:
            stack, info = read_source(path)
            if info.shape[0] != 1:
                raise InputError(f"{path}: a per-channel file must hold one channel, found {info.shape[0]}")
            first = first or info
            check_same_shape(first, info)
            stacks.append(stack)
        stack = np.concatenate(stacks, axis=0)
    else:
        stack, _ = read_source(record.path, record.scene)
    array = project(stack, record.z, record.z_channel, str(record.path))
    if record.channel_names and len(record.channel_names) != array.shape[0]:
        raise InputError(f"{record.path}: has {array.shape[0]} channel(s) but the run names "
                         f"{len(record.channel_names)}; did the file change since discovery?")
    return ImageData(array, record.channel_names or tuple(f"ch{i}" for i in range(array.shape[0])))
