"""The extract stage: images + label images -> ``crops.zarr`` + ``cells.parquet``.

:func:`run` is the stage (the pipeline and ``epikit extract`` call it with
:class:`~epikit.options.ExtractOptions`); :func:`extract_cells` cuts every nucleus out of every image (see :mod:`epikit.nuclei.crops`),
measures its features on the raw image (see :mod:`epikit.nuclei.features`) and writes

* ``OUT/crops.zarr``: arrays ``crops (N, C, S, S)`` (float16, float32 without normalisation)
  and ``masks (N, S, S)`` uint8, a few cells per chunk; group attributes ``channel_names``,
  ``crop_size``, ``normalisation``, ``percentiles``, ``scale_mode``, ``align``,
  ``keep_context``, ``dtype``, ``feature_columns`` and ``n_cells``;
* ``OUT/cells.parquet``: one row per cell, row ``i`` describing crop ``i``
  (``crop_index == i``): ids, image, condition, group, label, bbox, centroid, area,
  orientation, eccentricity, ``crop_scale``, ``clipped`` and the feature columns;
* ``metrics.json["extraction"]``: the summary returned.

Resumable, with bounded memory: one image is read at a time, and its crops are computed and
written a batch of whole chunks (at most :data:`BATCH_BYTES`) at a time into a working store
in the extract :class:`~epikit.runfolder.scratch.Scratch` (``OUT/.epikit/scratch/extract/<settings key>/``). After each image, its table rows go to a part file and then a
line appended to ``progress.jsonl`` records the image as done (the commit point). An interrupted run therefore
never counts a half-written image: on restart the arrays are cut back to the committed cells
and extraction continues with the next image. When every image is done, ``cells.parquet`` is
streamed from the parts and the Zarr store is renamed into place, so both appear complete or
not at all. Re-running on the same inputs does nothing; adding images later extends the
existing store; changed settings or changed
input files start afresh.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from epikit.nuclei.crops import (
    SKIP_REASONS,
    CropSettings,
    crop_nuclei,
    describe_nuclei,
    find_nuclei,
    intensity_range,
    ring_width_pixels,
)
from epikit.errors import ConfigError, DataError, InputError
from epikit.nuclei.features import feature_names
from epikit.io import (
    ImageRecord,
    atomic_path,
    mask_path,
    read_labels,
    read_record,
)
from epikit.io.discover import design_values
from epikit.config import section_hash
from epikit.device import single_torch_thread
from epikit.options import ExtractOptions, option_values
from epikit.runfolder.crop_writer import STATE_VERSION, CropWriter
from epikit.runfolder.layout import CELLS, MASKS
from epikit.runfolder.scratch import Scratch
from epikit.runfolder.metrics import update_metrics

if TYPE_CHECKING:  # pragma: no cover
    from epikit.distributed import Executor

#: In the extract scratch: per-image part folders written by workers, removed once committed.
PENDING_DIR = "pending"
#: Most float32 crop bytes computed and written at once (whole chunks, at least one).
BATCH_BYTES = 8 * 1024 * 1024
DTYPES = ("float16", "float32")
#: Columns that identify and place a cell (the rest of ``cells.parquet`` are features or
#: columns added by later stages).
METADATA_COLUMNS: tuple[str, ...] = (
    "cell_id", "image_id", "path", "condition", "group", "label",
    "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "centroid_y", "centroid_x",
    "area", "orientation", "eccentricity", "crop_index", "crop_scale", "clipped", "pixel_size_um",
)


def _fingerprint(record: ImageRecord, masks: Path) -> list[Any]:
    """What must not change for a finished image to stay valid: its metadata and both files."""
    files = [os.stat(p) for p in (*record.files, masks)]
    return [str(record.path), record.condition, record.group, dict(sorted(record.metadata.items())),
            *[[s.st_size, s.st_mtime_ns] for s in files]]


def _check_channels(records: list[ImageRecord]) -> tuple[str, ...]:
    names = records[0].channel_names
    for record in records[1:]:
        if record.channel_names != names:
            raise InputError(f"{record.path}: channels {', '.join(record.channel_names)} differ from "
                             f"{records[0].path} ({', '.join(names)}); all images need the same channels")
    ids = [r.image_id for r in records]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"image id(s) {', '.join(twice)} appear more than once in the inputs; "
                         "give each image a distinct file name within its condition")
    return names


def _labels_file(record: ImageRecord, masks_dir: Path) -> Path:
    """The label image of ``record``, which must exist."""
    labels_file = mask_path(masks_dir, record)
    if not labels_file.is_file():
        raise InputError(f"{labels_file}: no label image for {record.path}; run `epikit segment` "
                         "first or pass --masks with a folder of <condition>/<stem>.tif label images")
    return labels_file


def _read_pair(record: ImageRecord, masks_dir: Path, n_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Read an image and its label image, checking that they belong together."""
    labels_file = _labels_file(record, masks_dir)
    image = read_record(record).array
    labels = read_labels(labels_file)
    if labels.shape != image.shape[1:]:
        raise InputError(f"{labels_file}: label image is {labels.shape[0]}x{labels.shape[1]} but "
                         f"{record.path} is {image.shape[1]}x{image.shape[2]}; masks must be segmented "
                         "from the same images")
    if image.shape[0] != n_channels:
        raise InputError(f"{record.path}: has {image.shape[0]} channel(s), expected {n_channels}")
    return image, labels


@dataclass(frozen=True)
class _Job:
    """What every image of one extraction is processed with."""

    settings: CropSettings
    channel_names: tuple[str, ...]
    masks_dir: Path
    features: bool
    n_shells: int
    dtype: str
    pixel_size_um: float | None = None
    ring_width_um: float = 0.0

    def zarr_attrs(self, n_cells: int) -> dict[str, Any]:
        s = self.settings
        return {
            "channel_names": list(self.channel_names), "crop_size": s.crop_size,
            "normalisation": s.normalise, "percentiles": list(s.percentiles), "scale_mode": s.scale,
            "align": s.align, "keep_context": s.keep_context, "dtype": self.dtype,
            "n_shells": self.n_shells, "n_cells": n_cells,
            "pixel_size_um": self.pixel_size_um, "ring_width_um": self.ring_width_um,
            "feature_columns": feature_names(self.channel_names, self.n_shells, physical=bool(self.pixel_size_um),
                                             rings=self.ring_width_um > 0) if self.features else [],
        }

    def describe(self, image: np.ndarray, labels: np.ndarray, nuclei: list[Any]) -> list[dict[str, Any]]:
        """The ``cells.parquet`` measurements of ``nuclei`` (see :func:`describe_nuclei`)."""
        return describe_nuclei(image, labels, nuclei, self.channel_names, features=self.features,
                               n_shells=self.n_shells, pixel_size_um=self.pixel_size_um,
                               ring_width_um=self.ring_width_um)

    def config(self) -> dict[str, Any]:
        """The options whose change invalidates finished images."""
        return {"settings": {**asdict(self.settings), "percentiles": list(self.settings.percentiles)},
                "dtype": self.dtype, "features": self.features, "n_shells": self.n_shells,
                "channel_names": list(self.channel_names), "pixel_size_um": self.pixel_size_um,
                "ring_width_um": self.ring_width_um}


def extract_cells(
    records: Iterable[ImageRecord],
    masks_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    crop_size: int = 64,
    keep_context: bool = False,
    scale: str = "fit",
    align: str = "none",
    normalise: str = "image",
    percentiles: tuple[float, float] = (1.0, 99.8),
    min_area: int = 30,
    max_area: int | None = 0,
    features: bool = True,
    n_shells: int = 5,
    dtype: str | None = None,
    ring_width_um: float = 0.0,
    progress: bool = False,
    on_image: Callable[[ImageRecord, int], None] | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Extract every nucleus of ``records`` into ``out_dir/crops.zarr`` and ``cells.parquet``.

    ``masks_dir`` holds one label image per input (``<condition>/<stem>.tif``, see
    :func:`epikit.io.mask_path`). The crop options are those of
    :class:`epikit.nuclei.crops.CropSettings`; ``max_area`` 0 or None means no upper limit.
    ``features`` adds the columns of :mod:`epikit.nuclei.features` (``n_shells`` shells per method;
    µm columns when the records' pixel size is known, fixed-width rings with ``ring_width_um``).
    ``dtype`` of the stored crops defaults to float16, float32 with ``normalise="none"`` (raw
    intensities above 2048 are not exact in float16). ``on_image(record, n_cells)`` is called
    after each image is committed; ``progress`` shows a progress bar on stderr.

    ``executor`` (see :func:`epikit.distributed.get_executor`; default: this process) extracts
    images in parallel: each worker writes its image's crops into its own part folder under
    ``pending/`` of the extract scratch and returns the table rows; this process copies the crops
    into the store and commits images in input order, so the outputs are identical to an
    in-process run and an interrupted run resumes the same way.

    Returns the summary also stored as ``metrics.json["extraction"]`` (left untouched when
    everything was already done). Warns when nuclei are clipped (``scale="native"`` with
    nuclei longer than the crop) and when label images hold no nucleus; raises
    :class:`DataError` when no cell at all was extracted.
    """
    started = time.perf_counter()
    records = list(records)
    if not records:
        raise InputError("no images to extract from; check the input folder or manifest")
    settings = CropSettings(crop_size=int(crop_size), keep_context=bool(keep_context), scale=scale,
                            align=align, normalise=normalise,
                            percentiles=(float(percentiles[0]), float(percentiles[1])),
                            min_area=int(min_area or 0), max_area=int(max_area or 0))
    dtype = dtype or ("float32" if normalise == "none" else "float16")
    if dtype not in DTYPES:
        raise ConfigError(f"crop dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    job = _Job(settings, _check_channels(records), Path(masks_dir), bool(features), int(n_shells), dtype,
               records[0].pixel_size_um, float(ring_width_um or 0))
    ring_width_pixels(job.ring_width_um, job.pixel_size_um)  # a ring width without a pixel size fails now
    out_dir = Path(out_dir)
    fingerprints = {r.image_id: _fingerprint(r, _labels_file(r, job.masks_dir)) for r in records}

    scratch = Scratch(out_dir, "extract", section_hash(STATE_VERSION, job.config()))
    work = CropWriter(out_dir, job.config(), scratch.path)
    reason = "settings changed" if scratch.open() else work.load(fingerprints)
    if reason:
        warnings.warn(f"{scratch.root}: earlier extraction discarded ({reason}); starting again",
                      stacklevel=2)
    todo = [r for r in records if r.image_id not in work.done]
    if not todo and work.finalised and (out_dir / CELLS).exists():
        work.finalise(job.zarr_attrs(work.n_cells))  # completes an interrupted final move
        summary = _summary(work.images, records, job)
        summary.update({"n_images_processed": 0, "n_images_resumed": len(records)})
        return summary

    crops_array, masks_array = work.open_arrays(len(job.channel_names), settings.crop_size, dtype)
    processed_cells = 0
    bar = _progress_bar(len(records), len(records) - len(todo)) if progress else None
    try:
        with single_torch_thread():
            for record, count in _extract_all(todo, job, work, crops_array, masks_array, fingerprints,
                                              executor):
                processed_cells += count
                if bar is not None:
                    bar.update(1)
                if on_image is not None:
                    on_image(record, count)
    finally:
        if bar is not None:
            bar.close()
    summary = _summary(work.images, records, job)
    if work.n_cells == 0:
        raise DataError(_no_cells_message(summary, job.masks_dir))
    work.finalise(job.zarr_attrs(work.n_cells))

    elapsed = time.perf_counter() - started
    summary.update({"n_images_processed": len(todo), "n_images_resumed": len(records) - len(todo),
                    "seconds": round(elapsed, 3),
                    "cells_per_second": round(processed_cells / elapsed, 1) if processed_cells else None})
    _warn_about(summary, job.masks_dir)
    update_metrics(out_dir, "extraction", summary)
    return summary


def run(
    run_dir: str | os.PathLike[str],
    options: ExtractOptions,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The extract stage: :func:`extract_cells` of ``options.images`` into ``run_dir``.

    Label images come from ``options.masks``, by default the run folder's ``masks/``.
    """
    masks = Path(options.masks) if options.masks is not None else Path(run_dir) / MASKS
    return extract_cells(options.images, masks, run_dir, features=options.features,
                         progress=progress, executor=executor, **option_values(options))


def _extract_all(todo: list[ImageRecord], job: _Job, work: CropWriter, crops_array: Any, masks_array: Any,
                 fingerprints: dict[str, list[Any]], executor: Executor | None) -> Iterator[tuple[ImageRecord, int]]:
    """Extract and commit ``todo`` in input order, here or on ``executor``; yield ``(record, cells)``."""
    if executor is None or executor.in_process:
        for record in todo:
            yield record, _extract_image(record, job, work, crops_array, masks_array,
                                         fingerprints[record.image_id])
        return
    from epikit.distributed import for_workers

    pending = work.work / PENDING_DIR
    originals = {record.image_id: record for record in todo}
    shared = (replace(job, masks_dir=Path(os.path.abspath(job.masks_dir))), Path(os.path.abspath(pending)),
              crops_array.chunks[0])
    parts = executor.map(extract_part, [for_workers(r) for r in todo], shared=shared, label=lambda r: str(r.path))
    for sent, part in parts:
        record = originals[sent.image_id]
        yield record, _commit_part(record, part, job, work, crops_array, masks_array,
                                   fingerprints[record.image_id])
    shutil.rmtree(pending, ignore_errors=True)


def _batches(n: int, chunk: int, n_channels: int, crop_size: int) -> list[tuple[int, int]]:
    """Image-relative ``(a, b)`` ranges of nuclei cropped together: whole chunks, at most
    :data:`BATCH_BYTES` of float32 crops each.

    The edges depend only on the image (never on how many cells came before it), so an
    image's crops are the same bits wherever and in whichever process it is extracted
    (resampling a batch pads to the batch's largest patch, which moves the last bits).
    """
    cell_bytes = 4 * n_channels * crop_size**2
    batch = chunk * max(1, BATCH_BYTES // (chunk * cell_bytes))
    edges = [*range(0, n, batch), n]
    return list(itertools.pairwise(edges))


def _crop_batches(image: np.ndarray, labels: np.ndarray, nuclei: list[Any], job: _Job,
                  chunk: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Crops (in the stored dtype) and masks of ``nuclei``, one batch at a time: ``(a, b, crops, masks)``."""
    settings = job.settings
    image_range = intensity_range(image, settings.percentiles) if settings.normalise == "image" else None
    for a, b in _batches(len(nuclei), chunk, len(job.channel_names), settings.crop_size):
        crops, masks = crop_nuclei(image, labels, nuclei[a:b], settings, image_range)
        yield a, b, crops.astype(job.dtype), masks


def _entry(record: ImageRecord, fingerprint: list[Any], start: int, count: int, skipped: dict[str, int],
           clipped: int, empty: bool) -> dict[str, Any]:
    """The progress-log line of one finished image."""
    return {"image_id": record.image_id, "condition": record.condition, "fingerprint": fingerprint,
            "part": None, "start": start, "count": count, "skipped": skipped, "clipped": clipped,
            "empty": empty}


def _extract_image(record: ImageRecord, job: _Job, work: CropWriter, crops_array: Any, masks_array: Any,
                   fingerprint: list[Any]) -> int:
    """Extract one image into the working store and commit it; return its number of cells."""
    image, labels = _read_pair(record, job.masks_dir, len(job.channel_names))
    selection = find_nuclei(labels, job.settings)
    nuclei = selection.nuclei
    start = work.n_cells
    rows = job.describe(image, labels, nuclei)
    if nuclei:
        _grow(crops_array, masks_array, start + len(nuclei))
        for a, b, crops, masks in _crop_batches(image, labels, nuclei, job, crops_array.chunks[0]):
            crops_array[start + a:start + b] = crops
            masks_array[start + a:start + b] = masks
    part = _part_table(record, rows, start) if rows else None
    work.commit(_entry(record, fingerprint, start, len(nuclei), selection.skipped, selection.clipped,
                       not bool(labels.any())), part)
    return len(nuclei)


def _grow(crops_array: Any, masks_array: Any, n: int) -> None:
    crops_array.resize((n,) + tuple(crops_array.shape[1:]))
    masks_array.resize((n,) + tuple(masks_array.shape[1:]))


def extract_part(record: ImageRecord, job: _Job, pending_dir: Path, chunk: int) -> dict[str, Any]:
    """Extract one image into its own part folder; the unit of work on a Dask worker.

    Writes ``pending_dir/<digest>-<random>/crops.npy`` and ``masks.npy`` (atomically, a
    folder no other task writes) and returns the small rest: the image's table part and counts. The
    driver copies the crops into the working store and commits the image
    (:func:`_commit_part`), so the progress log is only ever written by the driver.
    """
    image, labels = _read_pair(record, job.masks_dir, len(job.channel_names))
    selection = find_nuclei(labels, job.settings)
    nuclei = selection.nuclei
    rows = job.describe(image, labels, nuclei)
    folder = None
    if nuclei:
        # A fresh name per attempt: a task rerun after a lost worker, or a stale task of an
        # interrupted run, never writes a folder the driver is reading.
        folder = pending_dir / f"{hashlib.sha1(record.image_id.encode()).hexdigest()[:12]}-{uuid.uuid4().hex[:8]}"
        size = job.settings.crop_size
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            crops_out = np.lib.format.open_memmap(tmp / "crops.npy", mode="w+", dtype=job.dtype,
                                                  shape=(len(nuclei), len(job.channel_names), size, size))
            masks_out = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8,
                                                  shape=(len(nuclei), size, size))
            for a, b, crops, masks in _crop_batches(image, labels, nuclei, job, chunk):
                crops_out[a:b] = crops
                masks_out[a:b] = masks
            crops_out.flush()
            masks_out.flush()
            del crops_out, masks_out
    return {"table": _part_table(record, rows, 0) if rows else None, "folder": str(folder) if folder else None,
            "count": len(nuclei), "skipped": selection.skipped, "clipped": selection.clipped,
            "empty": not bool(labels.any())}


def _commit_part(record: ImageRecord, part: dict[str, Any], job: _Job, work: CropWriter, crops_array: Any,
                 masks_array: Any, fingerprint: list[Any]) -> int:
    """Copy one worker-extracted image into the working store, commit it, drop its part folder."""
    start, count = work.n_cells, part["count"]
    if count:
        folder = Path(part["folder"])
        crops = np.load(folder / "crops.npy", mmap_mode="r")
        masks = np.load(folder / "masks.npy", mmap_mode="r")
        _grow(crops_array, masks_array, start + count)
        for a, b in _batches(count, crops_array.chunks[0], len(job.channel_names), job.settings.crop_size):
            crops_array[start + a:start + b] = np.asarray(crops[a:b])
            masks_array[start + a:start + b] = np.asarray(masks[a:b])
        del crops, masks
    table = part["table"]
    if table is not None:  # built on the worker from crop 0 and the worker's absolute path
        for name, value in (("crop_index", pa.array(range(start, start + table.num_rows), pa.int64())),
                            ("path", pa.array([str(record.path)] * table.num_rows, pa.string()))):
            position = table.schema.get_field_index(name)
            table = table.set_column(position, pa.field(name, value.type), value)
    work.commit(_entry(record, fingerprint, start, count, part["skipped"], part["clipped"], part["empty"]),
                table)
    if part["folder"]:
        shutil.rmtree(part["folder"], ignore_errors=True)
    return count


def _part_table(record: ImageRecord, rows: list[dict[str, Any]], start: int) -> pa.Table:
    """The ``cells.parquet`` rows of one image: ids and image metadata, measurements, crop rows."""
    n = len(rows)
    columns: dict[str, list[Any]] = {
        "cell_id": [f"{record.image_id}#{row['label']}" for row in rows],
        "image_id": [record.image_id] * n, "path": [str(record.path)] * n,
        "condition": [record.condition] * n, "group": [record.group] * n,
        **{key: [value] * n for key, value in {**record.metadata, **design_values(record)}.items()
           if key not in rows[0]},
    }
    for key in rows[0]:
        columns[key] = [row[key] for row in rows]
        if key == "eccentricity":
            columns["crop_index"] = list(range(start, start + n))
    return pa.table(columns)


def _summary(images: list[dict[str, Any]], records: list[ImageRecord], job: _Job) -> dict[str, Any]:
    settings = job.settings
    per_condition: dict[str, int] = {}
    for entry in images:
        per_condition[entry["condition"]] = per_condition.get(entry["condition"], 0) + entry["count"]
    return {
        "n_images": len(records),
        "n_cells": sum(e["count"] for e in images),
        "cells_per_condition": dict(sorted(per_condition.items())),
        "n_images_empty": sum(e["empty"] for e in images),
        "empty_images": [e["image_id"] for e in images if e["empty"]],
        **{f"n_skipped_{reason}": sum(e["skipped"][reason] for e in images) for reason in SKIP_REASONS},
        "n_clipped": sum(e["clipped"] for e in images),
        "crop_size": settings.crop_size,
        "scale_mode": settings.scale,
        "align": settings.align,
        "normalisation": settings.normalise,
        "keep_context": settings.keep_context,
        "dtype": job.dtype,
        "channel_names": list(job.channel_names),
    }


def _no_cells_message(summary: dict[str, Any], masks_dir: Path) -> str:
    if summary["n_images_empty"] == summary["n_images"]:
        return (f"{masks_dir}: none of the {summary['n_images']} label images holds a nucleus; "
                "check the segmentation (e.g. `epikit segment` parameters) or the --masks folder")
    skipped = ", ".join(f"{reason} {summary[f'n_skipped_{reason}']}" for reason in SKIP_REASONS)
    return (f"{masks_dir}: every nucleus was skipped ({skipped}); nuclei touching the border are "
            "never used, lower --min-area or raise --max-area")


def _warn_about(summary: dict[str, Any], masks_dir: Path) -> None:
    if summary["n_images_empty"]:
        names = summary["empty_images"]
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        warnings.warn(f"{masks_dir}: {len(names)} of {summary['n_images']} label images hold no "
                      f"nucleus and were skipped ({shown})", stacklevel=3)
    if summary["n_clipped"]:
        warnings.warn(f"{summary['n_clipped']} of {summary['n_cells']} nuclei are larger than the "
                      f"{summary['crop_size']}x{summary['crop_size']} crop and were clipped "
                      "(--scale native); raise --crop-size or use --scale fit", stacklevel=3)


def _progress_bar(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="extract", unit="image")

