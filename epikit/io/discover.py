"""Input discovery: which images belong to which condition and group.

Two layouts are accepted:

* a folder with one sub-folder per condition (``input/ctrl/*.tif``, ``input/vpa/*.tif``);
  a folder holding ``manifest.csv`` uses that manifest instead;
* a manifest CSV with columns ``path,condition[,group][,replicate][,dose]`` (paths relative
  to the CSV) and optional extra columns such as ``plate`` or ``date`` kept as metadata (the
  classifier's confound check reads them).

``group`` is the splitting unit (a field or well); it defaults to the image itself.
``replicate`` (a plate or day) and a numeric ``dose`` describe the design: the statistics
test at the highest independent level (:mod:`epikit.analysis.design`) and look for a dose
trend (:mod:`epikit.analysis.multigroup`); :func:`design_values` gives them typed.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from epikit.errors import DataError, InputError
from epikit.io.images import IMAGE_SUFFIXES, ImageInfo, probe_image

MANIFEST_NAME = "manifest.csv"
#: Manifest columns that describe the experimental design (copied into ``cells.parquet``).
DESIGN_COLUMNS: tuple[str, ...] = ("replicate", "dose")


@dataclass(frozen=True)
class ImageRecord:
    """One input image: where it is, its condition and group, and its channel names."""

    path: Path
    condition: str
    group: str
    channel_names: tuple[str, ...]
    image_id: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SkippedFile:
    """An input file left out with ``skip_bad=True`` and why."""

    path: Path
    reason: str


def _natural_key(text: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _image_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _entries_from_folder(folder: Path) -> list[tuple[Path, str, str | None, dict[str, str]]]:
    conditions = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries = [(path, condition.name, None, {})
               for condition in conditions for path in _image_files(condition)]
    if not entries:
        loose = _image_files(folder)
        if loose:
            raise InputError(f"{folder}: images lie directly in the folder; put them into one "
                             "sub-folder per condition (e.g. ctrl/, vpa/) or give a manifest CSV")
        raise InputError(f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} "
                         "in one sub-folder per condition)")
    return entries


def _entries_from_manifest(manifest: Path) -> list[tuple[Path, str, str | None, dict[str, str]]]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{manifest}: cannot read manifest ({error})") from error
    if not rows:
        raise InputError(f"{manifest}: manifest has no rows; list one image per row "
                         "with columns path,condition[,group]")
    missing = {"path", "condition"} - set(rows[0])
    if missing:
        raise InputError(f"{manifest}: manifest lacks column(s) {', '.join(sorted(missing))}; "
                         "expected path,condition[,group]")
    entries = []
    for number, row in enumerate(rows, start=2):
        path_text, condition = (row.get("path") or "").strip(), (row.get("condition") or "").strip()
        if not path_text or not condition:
            raise InputError(f"{manifest}: line {number} has an empty path or condition")
        path = Path(path_text)
        if not path.is_absolute():
            path = manifest.parent / path
        group = (row.get("group") or "").strip() or None
        extra = {k: (v or "").strip() for k, v in row.items()
                 if k not in {"path", "condition", "group"} and k is not None}
        _check_design(manifest, number, extra)
        entries.append((path, condition, group, extra))
    return entries


def _check_design(manifest: Path, number: int, extra: dict[str, str]) -> None:
    """A manifest row's ``replicate`` must be non-empty and its ``dose`` a finite number >= 0."""
    for column in DESIGN_COLUMNS:
        if column in extra and not extra[column]:
            raise InputError(f"{manifest}: line {number} has an empty {column}; give every row one")
    if "dose" in extra:
        try:
            dose = float(extra["dose"])
        except ValueError:
            dose = float("nan")
        if not math.isfinite(dose) or dose < 0:
            raise InputError(f"{manifest}: line {number} has dose {extra['dose']!r}; "
                             "give a number >= 0 (e.g. 0, 0.5, 2)")


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
) -> tuple[list[ImageRecord], list[SkippedFile]]:
    """Discover input images; with ``skip_bad`` unreadable files are returned as skipped.

    Checks, each raising a one-line :class:`InputError` / :class:`DataError` naming the file:
    missing input, no images, fewer than ``min_conditions`` conditions, unreadable or
    non-2D files, channel counts that differ between files or from ``channels``.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: input does not exist; give a folder with one sub-folder "
                         "per condition or a manifest CSV")
    if source.is_dir():
        manifest = source / MANIFEST_NAME
        entries = _entries_from_manifest(manifest) if manifest.is_file() else _entries_from_folder(source)
    elif source.suffix.lower() == ".csv":
        entries = _entries_from_manifest(source)
    else:
        raise InputError(f"{source}: input must be a folder or a manifest .csv file")

    records: list[ImageRecord] = []
    skipped: list[SkippedFile] = []
    first: ImageInfo | None = None
    seen_ids: dict[str, Path] = {}
    for path, condition, group, extra in entries:
        try:
            info = probe_image(path)
        except InputError as error:
            if not skip_bad:
                raise
            skipped.append(SkippedFile(path, str(error)))
            warnings.warn(f"skipping {path}: {error}", stacklevel=2)
            continue
        if channels is not None and len(channels) != info.shape[0]:
            raise InputError(f"{path}: has {info.shape[0]} channel(s) but --channels names "
                             f"{len(channels)} ({', '.join(channels)}); name every channel once")
        if first is not None and first.shape[0] != info.shape[0]:
            raise InputError(f"{path}: has {info.shape[0]} channel(s) but {first.path} has "
                             f"{first.shape[0]}; all images must have the same channels")
        first = first or info
        image_id = f"{condition}/{_stem(path)}"
        if image_id in seen_ids:
            raise InputError(f"{path}: image id {image_id!r} is used twice (also {seen_ids[image_id]}); "
                             "give images of one condition distinct file names")
        seen_ids[image_id] = path
        names = tuple(channels) if channels is not None else info.channel_names
        records.append(ImageRecord(path, condition, group or image_id, names, image_id, extra))

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
    return records, skipped


def discover_images(
    source: str | os.PathLike[str],
    channels: list[str] | tuple[str, ...] | None = None,
    *,
    min_conditions: int = 2,
) -> list[ImageRecord]:
    """Discover input images (see :func:`find_images`); any bad file is an error."""
    return find_images(source, channels, min_conditions=min_conditions)[0]


def mask_path(masks_dir: str | os.PathLike[str], record: ImageRecord) -> Path:
    """Where the label image of ``record`` lives: ``masks_dir/<condition>/<stem>.tif``."""
    return Path(masks_dir) / record.condition / f"{_stem(record.path)}.tif"
