"""OME-Zarr (OME-NGFF) images and HCS plates, read with zarr alone (no extra needed).

An image is a Zarr group whose attributes hold ``multiscales`` (NGFF 0.4, Zarr v2
``.zattrs``; or 0.5, Zarr v3 ``zarr.json`` under ``ome``): epikit reads its first (full
resolution) dataset, axes ``[t][c][z]yx``; channel names come from ``omero.channels[].label``
and the pixel size from the dataset's ``scale`` transformation and the x axis's unit. A
plate is a group with ``plate`` attributes: ``plate.wells[].path`` (``A/1``) lead to well
groups whose ``well.images[].path`` are the fields, each an image.

Writing (:func:`write_ome_zarr`) makes small NGFF 0.4 images, e.g. for tests and examples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import InputError
from epikit.io.images import ImageInfo, info_from_axes, length_in_um, to_czyx

ZARR_SUFFIX = ".zarr"


def zarr_attributes(path: Path) -> dict[str, Any] | None:
    """The NGFF attributes of the Zarr group at ``path`` (v2 or v3), or None if it is no group."""
    try:
        if (path / ".zattrs").is_file():
            return dict(json.loads((path / ".zattrs").read_text(encoding="utf-8")))
        if (path / "zarr.json").is_file():
            attributes = json.loads((path / "zarr.json").read_text(encoding="utf-8")).get("attributes") or {}
            return dict(attributes.get("ome", attributes))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read Zarr attributes ({error}); is the OME-Zarr complete?") from error
    return None


def is_ome_zarr(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr image or plate folder."""
    if not path.is_dir():
        return False
    attributes = zarr_attributes(path) or {}
    return "multiscales" in attributes or "plate" in attributes


def is_plate(path: Path) -> bool:
    """Whether ``path`` is an OME-Zarr HCS plate."""
    return path.is_dir() and "plate" in (zarr_attributes(path) or {})


def _multiscale(path: Path) -> tuple[str, str, list[dict[str, Any]], list[Any]]:
    """Axis letters (e.g. ``CZYX``), the full-resolution dataset path, its axes and transformations."""
    attributes = zarr_attributes(path) or {}
    multiscales = attributes.get("multiscales")
    if not multiscales:
        raise InputError(f"{path}: not an OME-Zarr image (no 'multiscales' attributes); "
                         "give the image group, e.g. plate.zarr/A/1/0")
    scale = multiscales[0]
    axes = [a if isinstance(a, dict) else {"name": a} for a in scale.get("axes") or
            [{"name": n} for n in "tczyx"]]
    letters = "".join(str(a["name"]).upper() for a in axes)
    dataset = scale["datasets"][0]
    return letters, str(dataset["path"]), axes, list(dataset.get("coordinateTransformations") or [])


def _pixel_size(axes: list[dict[str, Any]], transformations: list[Any]) -> float | None:
    """X pixel size (µm) from the dataset's scale transformation and the x axis's unit."""
    scale = next((t.get("scale") for t in transformations
                  if isinstance(t, dict) and t.get("type") == "scale"), None)
    names = [str(a["name"]).lower() for a in axes]
    if not scale or "x" not in names or len(scale) != len(names):
        return None
    unit = axes[names.index("x")].get("unit")
    return length_in_um(scale[names.index("x")], unit.replace("micrometer", "µm") if unit else None)


def _channel_names(path: Path) -> tuple[str, ...]:
    channels = ((zarr_attributes(path) or {}).get("omero") or {}).get("channels") or []
    names = tuple(str(c.get("label") or "") for c in channels if isinstance(c, dict))
    return names if names and all(names) else ()


def _open_array(path: Path, dataset: str) -> Any:
    import zarr

    try:
        return zarr.open_array(str(path / dataset), mode="r")
    except Exception as error:  # zarr raises several types for a missing or broken array
        raise InputError(f"{path}: cannot open OME-Zarr dataset {dataset!r} ({type(error).__name__}: "
                         f"{error}); is the OME-Zarr complete?") from error


def probe_ome_zarr(path: Path) -> ImageInfo:
    """Header of an OME-Zarr image: shape, Z planes, channel names, pixel size."""
    letters, dataset, axes, transformations = _multiscale(path)
    shape = tuple(_open_array(path, dataset).shape)
    if len(shape) != len(letters):
        raise InputError(f"{path}: dataset {dataset!r} has {len(shape)} axes but multiscales names "
                         f"{len(letters)} ({letters.lower()})")
    return info_from_axes(path, letters, shape, _channel_names(path), 1, _pixel_size(axes, transformations))


def read_ome_zarr(path: Path) -> tuple[np.ndarray, ImageInfo]:
    """Pixels ``(C, Z, Y, X)`` of an OME-Zarr image's full resolution, and its header."""
    info = probe_ome_zarr(path)
    letters, dataset, _, _ = _multiscale(path)
    return to_czyx(path, letters, np.asarray(_open_array(path, dataset)[...]), info), info


def plate_fields(path: Path) -> list[tuple[str, str, str]]:
    """``(row, column, field path)`` of every field of an OME-Zarr plate, in plate order."""
    plate = (zarr_attributes(path) or {}).get("plate") or {}
    fields = []
    for well in plate.get("wells") or []:
        well_path = str(well["path"])
        row, _, column = well_path.partition("/")
        images = ((zarr_attributes(path / well_path) or {}).get("well") or {}).get("images") or []
        if not images:
            raise InputError(f"{path / well_path}: well lists no images (well.images); "
                             "is the plate complete?")
        fields += [(row, column, f"{well_path}/{image['path']}") for image in images]
    if not fields:
        raise InputError(f"{path}: plate lists no wells (plate.wells); is the plate complete?")
    return fields


def write_ome_zarr(path: Path, stack: np.ndarray, channel_names: tuple[str, ...] = (),
                   pixel_size_um: float | None = None) -> Path:
    """Write ``stack (C, Z, Y, X)`` as a single-scale NGFF 0.4 image group at ``path``."""
    import zarr

    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=np.asarray(stack), chunks=(1, 1) + tuple(stack.shape[2:]))
    size = pixel_size_um or 1.0
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": n, "type": "space", **({"unit": "micrometer"} if pixel_size_um else {})} for n in "zyx"]
    group.attrs["multiscales"] = [{
        "version": "0.4", "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, size, size]}]}]}]
    if channel_names:
        group.attrs["omero"] = {"channels": [{"label": name} for name in channel_names]}
    return path


def write_plate(path: Path, fields: dict[tuple[str, str], list[np.ndarray]],
                channel_names: tuple[str, ...] = (), pixel_size_um: float | None = None) -> Path:
    """Write an NGFF 0.4 plate: ``fields[(row, column)]`` lists each well's ``(C, Z, Y, X)`` fields."""
    import zarr

    plate = zarr.open_group(str(path), mode="w", zarr_format=2)
    rows = sorted({r for r, _ in fields})
    columns = sorted({c for _, c in fields}, key=int)
    wells = []
    for (row, column), stacks in fields.items():
        well = zarr.open_group(str(path / row / column), mode="w", zarr_format=2)
        well.attrs["well"] = {"images": [{"path": str(k)} for k in range(len(stacks))], "version": "0.4"}
        for k, stack in enumerate(stacks):
            write_ome_zarr(path / row / column / str(k), stack, channel_names, pixel_size_um)
        wells.append({"path": f"{row}/{column}", "rowIndex": rows.index(row),
                      "columnIndex": columns.index(column)})
    plate.attrs["plate"] = {"rows": [{"name": r} for r in rows], "columns": [{"name": c} for c in columns],
                            "wells": wells, "field_count": max(len(s) for s in fields.values()),
                            "version": "0.4"}
    return path
