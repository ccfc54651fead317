"""Plates: well names, layout CSVs (well -> condition) and the fields of an OME-Zarr HCS plate.

A layout CSV maps wells to conditions, ``well,condition[,dose]`` (any further column is kept
as cell metadata)::

    well,condition,dose
    A01,untreated,0
    A02,vpa,2.0

Wells may be written ``A1``, ``A01`` or ``A/1``; they are compared as ``A01``. Every field of a
plate becomes one image named ``<plate>_<well>_f<field>``; ``plate``, ``well`` and ``field``
become cell columns, and the well (``<plate>/<well>``) is the image's group, so images of one
well never land on both sides of a split.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from epikit.errors import InputError
from epikit.io.record import InputEntry

_WELL = re.compile(r"^\s*([A-Za-z]{1,2})\s*[/_-]?\s*0*(\d{1,3})\s*$")


def well_name(text: str, where: str = "well") -> str:
    """``A1``, ``a01``, ``A/1`` -> ``A01``; a one-line :class:`InputError` naming ``where`` otherwise."""
    match = _WELL.match(str(text))
    if not match:
        raise InputError(f"{where}: {text!r} is not a well name; write wells as a row letter and a "
                         "column number, e.g. A01")
    return f"{match.group(1).upper()}{int(match.group(2)):02d}"


def read_layout(path: str | Path) -> dict[str, dict[str, str]]:
    """Read a layout CSV: ``{well: {"condition": ..., "dose": ..., ...}}``."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read layout CSV ({error}); give well,condition[,dose] rows") from error
    if not rows or not {"well", "condition"} <= set(rows[0]):
        raise InputError(f"{path}: a layout CSV needs the columns well,condition[,dose] and one row per well")
    layout: dict[str, dict[str, str]] = {}
    for number, row in enumerate(rows, start=2):
        well = well_name(row.get("well") or "", f"{path} line {number}")
        condition = (row.get("condition") or "").strip()
        if not condition:
            raise InputError(f"{path}: line {number} (well {well}) has no condition")
        if well in layout:
            raise InputError(f"{path}: well {well} is listed twice (line {number}); give each well one row")
        layout[well] = {k: (v or "").strip() for k, v in row.items() if k and k != "well"}
    return layout


def layout_row(layout: dict[str, dict[str, str]], layout_path: str | Path, well: str,
               source: str | Path) -> dict[str, str]:
    """The layout row of ``well`` (found in ``source``); a one-line error when the layout lacks it."""
    try:
        return layout[well]
    except KeyError:
        raise InputError(f"{layout_path}: no row for well {well} (found in {source}); add a row "
                         f"'{well},<condition>' or remove the well from the input") from None


def plate_entries(plate: Path, layout_path: str | Path | None) -> list[InputEntry]:
    """One entry per field of the OME-Zarr plate ``plate``, its condition from the layout CSV."""
    from epikit.io.omezarr import plate_fields

    if not layout_path:
        raise InputError(f"{plate}: an OME-Zarr plate needs a layout CSV mapping wells to conditions; "
                         "pass --layout layout.csv (columns well,condition[,dose])")
    layout = read_layout(layout_path)
    name = plate.name[: -len(".zarr")] if plate.name.lower().endswith(".zarr") else plate.name
    entries = []
    for row, column, field_path in plate_fields(plate):
        well = well_name(f"{row}{column}", f"{plate}/{row}/{column}")
        field = field_path.rsplit("/", 1)[-1]
        values = layout_row(layout, layout_path, well, plate)
        metadata = {"plate": name, "well": well, "field": field,
                    **{k: v for k, v in values.items() if k != "condition"}}
        entries.append(InputEntry(plate / field_path, values["condition"], f"{name}/{well}", metadata,
                                  name=f"{name}_{well}_f{field}", origin=f"{layout_path} (well {well})"))
    return entries
