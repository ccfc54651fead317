"""Input discovery: which images belong to which condition and group.

Accepted layouts:

* a folder with one sub-folder per condition (``input/ctrl/*.tif``, ``input/vpa/*.nd2``,
  ``input/vpa/*.zarr``); a folder holding ``manifest.csv`` uses that manifest instead;
* a manifest CSV with columns ``path,condition[,group]`` (paths relative to the CSV), or one
  path column per channel (``path_Hoechst,path_CTCF,condition``, see
  :mod:`epikit.io.channel_files`), and optional extra columns such as ``plate`` or ``date``
  kept as metadata (cell columns; the classifier's confound check reads them); ``replicate``
  (a plate or day) and a numeric ``dose`` describe the design: the statistics test at the
  highest independent level (:mod:`epikit.analysis.design`) and look for a dose trend
  (:mod:`epikit.analysis.multigroup`); :func:`design_values` gives them typed;
* a folder of per-channel files and a file-name pattern (``read.pattern``);
* an OME-Zarr HCS plate with a layout CSV (``read.layout``, see :mod:`epikit.io.plates`).

A multi-scene file gives one image per scene, ``<stem>_s<k>``. ``group`` is the statistical /
splitting unit (a field, well or replicate); it defaults to the image itself, or to the well
for plates. The read options (:class:`epikit.options.ReadOptions`) choose the Z projection
and may override the pixel size, which otherwise comes from the files' metadata and must
agree across the run.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from epikit.errors import DataError, InputError
from epikit.io.bioio_reader import PLUGINS
from epikit.io.channel_files import channel_columns, channel_names_of, natural_key, pattern_entries
from epikit.io.images import IMAGE_SUFFIXES, ImageInfo
from epikit.io.omezarr import ZARR_SUFFIX, is_plate
from epikit.io.plates import plate_entries
from epikit.io.record import ImageRecord, InputEntry
from epikit.io.sources import check_same_shape, probe_scenes, probe_source
from epikit.io.zstack import check_plane, parse_z

if TYPE_CHECKING:  # pragma: no cover
    from epikit.options import ReadOptions

MANIFEST_NAME = "manifest.csv"
#: What a condition folder may hold: TIFF/PNG, the vendor formats bioio reads, OME-Zarr folders.
INPUT_SUFFIXES: tuple[str, ...] = IMAGE_SUFFIXES + tuple(PLUGINS) + (ZARR_SUFFIX,)
#: Relative difference under which two pixel sizes count as the same.
PIXEL_SIZE_TOLERANCE = 1e-3

#: Manifest columns that describe the experimental design (copied into ``cells.parquet``).
DESIGN_COLUMNS: tuple[str, ...] = ("replicate", "dose")
#: Characters a condition name may not hold: run-folder paths are built from it.
_FORBIDDEN_IN_NAMES = ("/", "\\", "\x00")


def check_name(kind: str, name: str, where: str) -> str:
    """``name`` unchanged when it is a usable condition or group name, else a one-line :class:`InputError`.

    Masks and average maps are stored under the condition's name, so a condition must be one
    path component: no ``/`` or ``\\``, not ``.`` or ``..``, no surrounding spaces. A group is
    never part of a path and may name a hierarchy (``plate1/A01``; the default group is the
    image id ``<condition>/<stem>``, which is a path below ``masks/``), but none of the
    ``/``-separated parts of a group or image id may be empty, ``.`` or ``..``. ``where`` names
    the file (and manifest line) in the error.
    """
    nested = kind in ("group", "image id")
    parts = name.split("/") if nested else [name]
    forbidden = ("\\", "\x00") if nested else _FORBIDDEN_IN_NAMES
    if (not name or name != name.strip() or any(p in ("", ".", "..") for p in parts)
            or any(c in name for c in forbidden)):
        rule = "parts separated by '/', none '.' or '..'" if nested else "no '/', '\\', '.' or '..'"
        raise InputError(f"{where}: {kind} {name!r} is not a usable name ({rule}); "
                         f"rename it, e.g. {_suggest(name, kind)!r}")
    return name


def _suggest(name: str, kind: str) -> str:
    cleaned = re.sub(r"[/\\\x00]+", "_", name.strip()).strip("._")
    return cleaned or f"{kind}_1"


__all__ = ["ImageRecord", "SkippedFile", "discover_images", "find_images", "mask_path"]


@dataclass(frozen=True)
class SkippedFile:
    """An input file left out with ``skip_bad=True`` and why."""

    path: Path
    reason: str


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if not p.name.startswith(".") and p.suffix.lower() in INPUT_SUFFIXES
             and (p.is_file() or p.suffix.lower() == ZARR_SUFFIX)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _entries_from_folder(folder: Path) -> list[InputEntry]:
    conditions = sorted(p for p in folder.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and p.suffix.lower() != ZARR_SUFFIX)
    entries = [InputEntry(path, condition.name)
               for condition in conditions for path in _image_files(condition)]
    if not entries:
        loose = _image_files(folder)
        if loose:
            raise InputError(f"{folder}: images lie directly in the folder; put them into one "
                             "sub-folder per condition (e.g. ctrl/, vpa/) or give a manifest CSV")
        raise InputError(f"{folder}: no images found (looked for {', '.join(INPUT_SUFFIXES)} "
                         "in one sub-folder per condition)")
    return entries


def _entries_from_manifest(manifest: Path) -> tuple[list[InputEntry], tuple[str, ...] | None]:
    """Manifest rows as entries, and the channel names of ``path_<channel>`` columns (None without)."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{manifest}: cannot read manifest ({error})") from error
    if not rows:
        raise InputError(f"{manifest}: manifest has no rows; list one image per row "
                         "with columns path,condition[,group]")
    per_channel = channel_columns(list(rows[0]))
    path_columns = per_channel or ["path"]
    missing = {"condition", *path_columns} - set(rows[0])
    if missing:
        raise InputError(f"{manifest}: manifest lacks column(s) {', '.join(sorted(missing))}; "
                         "expected path,condition[,group] or path_<channel>,...,condition[,group]")

    def resolve(text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() else manifest.parent / path

    entries = []
    for number, row in enumerate(rows, start=2):
        texts = [(row.get(c) or "").strip() for c in path_columns]
        condition = (row.get("condition") or "").strip()
        if not all(texts) or not condition:
            raise InputError(f"{manifest}: line {number} has an empty path or condition")
        paths = tuple(resolve(t) for t in texts)
        group = (row.get("group") or "").strip() or None
        extra = {k: (v or "").strip() for k, v in row.items()
                 if k not in {"condition", "group", *path_columns} and k is not None}
        entries.append(InputEntry(paths[0], condition, group, extra, paths if per_channel else (),
                                  origin=f"{manifest} line {number}"))
    return entries, channel_names_of(per_channel) if per_channel else None


def _entries(source: Path, reading: ReadOptions | None,
             channels: list[str] | tuple[str, ...] | None) -> tuple[list[InputEntry], tuple[str, ...] | None]:
    """The listed inputs of ``source`` and the channel names they imply (None: from the files)."""
    layout = reading.layout if reading is not None else ""
    pattern = reading.pattern if reading is not None else ""
    if not source.exists():
        raise InputError(f"{source}: input does not exist; give a folder with one sub-folder "
                         "per condition, a manifest CSV or an OME-Zarr plate")
    if is_plate(source):
        return plate_entries(source, layout or None), None
    if pattern:
        if not source.is_dir():
            raise InputError(f"{source}: --pattern needs a folder of per-channel files")
        entries, names = pattern_entries(source, pattern, channels or (), layout or None)
        return entries, names
    if source.is_dir():
        manifest = source / MANIFEST_NAME
        return _entries_from_manifest(manifest) if manifest.is_file() else (_entries_from_folder(source), None)
    if source.suffix.lower() == ".csv":
        return _entries_from_manifest(source)
    raise InputError(f"{source}: input must be a folder, a manifest .csv file or an OME-Zarr plate")


def _probe(entry: InputEntry) -> list[ImageInfo]:
    """Headers of an entry: one per scene, or (per-channel files) one per file, checked to agree."""
    if entry.channel_files:
        infos = [probe_source(p) for p in entry.channel_files]
        for info in infos:
            if info.shape[0] != 1:
                raise InputError(f"{info.path}: a per-channel file must hold one channel, found {info.shape[0]}")
            check_same_shape(infos[0], info)
        sizes = [i.pixel_size_um for i in infos if i.pixel_size_um]
        first = infos[0]
        return [replace(first, shape=(len(infos),) + first.shape[1:], pixel_size_um=sizes[0] if sizes else None)]
    return probe_scenes(entry.path)


def _channel_index(channel: int | str, names: tuple[str, ...]) -> int:
    if isinstance(channel, str) and channel in names:
        return names.index(channel)
    try:
        return int(channel)
    except (TypeError, ValueError):
        return 0  # not a channel of these images: the segment stage reports it


def _check_pixel_sizes(records: list[ImageRecord]) -> None:
    sizes = [(r.pixel_size_um, r) for r in records]
    first_size, first = sizes[0]
    for size, record in sizes[1:]:
        same = (size is None and first_size is None) or (
            size is not None and first_size is not None
            and math.isclose(size, first_size, rel_tol=PIXEL_SIZE_TOLERANCE))
        if not same:
            raise InputError(f"{record.path}: pixel size {size or 'unknown'} µm differs from "
                             f"{first.path} ({first_size or 'unknown'} µm); pass --pixel-size to "
                             "set one size for all fields, or run them separately")


def check_entry(entry: InputEntry) -> None:
    """One-line :class:`InputError` naming ``entry.where`` unless its labels are usable.

    Whatever listed the entry (a manifest, a folder, a layout CSV, a ``--pattern``): its
    condition and group must be usable names (:func:`check_name`), its ``replicate`` non-empty
    and its ``dose`` a finite number >= 0.
    """
    where = entry.where
    check_name("condition", entry.condition, where)
    if entry.group is not None:
        check_name("group", entry.group, where)
    for column in DESIGN_COLUMNS:
        if column in entry.metadata and not entry.metadata[column]:
            raise InputError(f"{where} has an empty {column}; give every row one")
    if "dose" in entry.metadata:
        try:
            dose = float(entry.metadata["dose"])
        except ValueError:
            dose = float("nan")
        if not math.isfinite(dose) or dose < 0:
            raise InputError(f"{where} has dose {entry.metadata['dose']!r}; give a number >= 0 (e.g. 0, 0.5, 2)")


def design_values(record: ImageRecord) -> dict[str, str | float]:
    """The design columns a record's manifest row gave: ``replicate`` (str), ``dose`` (float)."""
    values: dict[str, str | float] = {}
    if "replicate" in record.metadata:
        values["replicate"] = record.metadata["replicate"]
    if "dose" in record.metadata:
        values["dose"] = float(record.metadata["dose"])
    return values


def find_images(
    source: str | os.PathLike[str],
    channels: list[str] | tuple[str, ...] | None = None,
    *,
    min_conditions: int = 2,
    skip_bad: bool = False,
    reading: ReadOptions | None = None,
    nuclear_channel: int | str = 0,
) -> tuple[list[ImageRecord], list[SkippedFile]]:
    """Discover input images; with ``skip_bad`` unreadable files are returned as skipped.

    ``reading`` (:class:`epikit.options.ReadOptions`) gives the Z projection, a pixel size
    override, a per-channel file pattern and a plate layout; ``nuclear_channel`` is the
    channel ``--z best`` focuses on. Checks, each raising a one-line :class:`InputError` /
    :class:`DataError` naming the file: missing input, unusable condition or group names and
    design values (replicate, dose) from any listing (manifest, layout CSV, ``--pattern``
    field; :func:`check_entry`), no images, fewer than
    ``min_conditions`` conditions, unreadable files, channel counts that differ between
    files or from ``channels``, channel files of one field that differ in shape, pixel
    sizes that differ between fields (unless overridden).
    """
    source = Path(source)
    z = str(parse_z(reading.z)) if reading is not None else "max"
    override = reading.pixel_size_um if reading is not None and reading.pixel_size_um > 0 else None
    entries, implied = _entries(source, reading, channels)
    if implied is not None:
        channels = implied

    records: list[ImageRecord] = []
    skipped: list[SkippedFile] = []
    first: ImageInfo | None = None
    seen_ids: dict[str, Path] = {}
    for entry in entries:  # every listing's labels, checked before any file is opened
        check_entry(entry)
    for entry in entries:
        try:
            infos = _probe(entry)
        except InputError as error:
            if not skip_bad:
                raise
            skipped.append(SkippedFile(entry.path, str(error)))
            warnings.warn(f"skipping {entry.path}: {error}", stacklevel=2)
            continue
        for scene, info in enumerate(infos):
            if channels is not None and len(channels) != info.shape[0]:
                raise InputError(f"{info.path}: has {info.shape[0]} channel(s) but --channels names "
                                 f"{len(channels)} ({', '.join(channels)}); name every channel once")
            if first is not None and first.shape[0] != info.shape[0]:
                raise InputError(f"{info.path}: has {info.shape[0]} channel(s) but {first.path} has "
                                 f"{first.shape[0]}; all images must have the same channels")
            check_plane(z, info.n_z, str(info.path))
            first = first or info
            name = entry.name or _stem(entry.path)
            image_id = f"{entry.condition}/{name}" + (f"_s{scene}" if len(infos) > 1 and not entry.channel_files else "")
            if image_id in seen_ids:
                raise InputError(f"{entry.path}: image id {image_id!r} is used twice (also "
                                 f"{seen_ids[image_id]}); give images of one condition distinct file names")
            seen_ids[image_id] = entry.path
            names = tuple(channels) if channels is not None else info.channel_names
            records.append(ImageRecord(
                entry.path, entry.condition, entry.group or image_id, names, image_id, dict(entry.metadata),
                entry.channel_files, scene, z, _channel_index(nuclear_channel, names),
                override or info.pixel_size_um, info.n_z))

    if not records:
        raise InputError(f"{source}: no readable images ({len(skipped)} skipped)")
    conditions = sorted({r.condition for r in records})
    if len(conditions) < min_conditions:
        raise DataError(f"{source}: found only condition {', '.join(conditions)!s}; at least "
                        f"{min_conditions} conditions are needed to compare (one sub-folder each)")
    names_seen = {r.channel_names for r in records}
    if len(names_seen) > 1:
        raise InputError(f"{source}: images name their channels differently "
                         f"({' vs '.join(', '.join(n) for n in sorted(names_seen))}); "
                         "pass --channels to name them once for all files")
    _check_pixel_sizes(records)
    return records, skipped


def discover_images(
    source: str | os.PathLike[str],
    channels: list[str] | tuple[str, ...] | None = None,
    *,
    min_conditions: int = 2,
    reading: ReadOptions | None = None,
) -> list[ImageRecord]:
    """Discover input images (see :func:`find_images`); any bad file is an error."""
    return find_images(source, channels, min_conditions=min_conditions, reading=reading)[0]


def mask_path(masks_dir: str | os.PathLike[str], record: ImageRecord) -> Path:
    """Where the label image of ``record`` lives: ``masks_dir/<image id>.tif`` (``<condition>/<name>.tif``)."""
    check_name("image id", record.image_id, str(record.path))
    return Path(masks_dir) / f"{record.image_id}.tif"
