"""The segment stage: run a segmenter over discovered images, one label TIFF per image.

:func:`run` is the stage (``epikit segment`` and the pipeline call it): it refuses to mix
masks made with other settings (``segmentation.json`` records them), reuses the masks an
interrupted run left, and writes ``segmentation.csv`` and ``metrics.json["segmentation"]``.
:func:`segment_images` is the per-image loop underneath::

    from epikit import get_segmenter
    from epikit.io import discover_images
    from epikit.segmentation import segment_images

    records = discover_images("images/", min_conditions=1)
    table = segment_images(records, get_segmenter("watershed"), "run/")

Masks go to ``out_dir/masks/<condition>/<stem>.tif`` (int32, 0 = background), each
written atomically; an existing mask is kept and only counted when ``skip_existing``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epikit.errors import ConfigError, ModelError
from epikit.options import SegmentOptions
from epikit.runfolder import layout

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from epikit.distributed import Executor, PluginSpec
    from epikit.interfaces import Segmenter
    from epikit.io import ImageRecord

TABLE_COLUMNS = ("image_id", "condition", "group", "path", "mask", "n_nuclei",
                 "median_area", "seconds", "reused")


def resolve_channel(channel: int | str, channel_names: Sequence[str]) -> int:
    """Index of ``channel`` given as an index (``0``, ``"0"``) or a channel name."""
    names = list(channel_names)
    if isinstance(channel, str) and channel in names:
        return names.index(channel)
    try:
        index = int(channel)
    except (TypeError, ValueError):
        raise ConfigError(f"nuclear channel {channel!r} is not one of the channels "
                          f"({', '.join(names)}) nor an index") from None
    if not 0 <= index < len(names):
        raise ConfigError(f"nuclear channel index {index} is out of range for "
                          f"{len(names)} channel(s) ({', '.join(names)})")
    return index


def check_labels(labels: Any, shape: tuple[int, ...], source: str) -> np.ndarray:
    """Validate a segmenter's output against the contract; return it as int32.

    ``source`` names the segmenter in the :class:`ModelError` raised on a violation.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(shape):
        raise ModelError(f"segmenter {source} returned labels shaped {labels.shape} for an "
                         f"image of {tuple(shape)}")
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise ModelError(f"segmenter {source} returned {labels.dtype} labels; expected "
                         "non-negative integers")
    return labels.astype(np.int32, copy=False)


def _count(labels: np.ndarray) -> tuple[int, float]:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return int(areas.size), float(np.median(areas)) if areas.size else 0.0


def segment_image(
    record: ImageRecord,
    segmenter: Any,
    masks_dir: Path,
    nuclear_channel: int | str = 0,
    skip_existing: bool = True,
) -> dict[str, Any]:
    """Segment one image and write its mask atomically (or reuse an existing mask).

    The unit of work of :func:`segment_images`, run in-process or on a Dask worker.
    ``segmenter`` is a segmenter or a :class:`epikit.distributed.PluginSpec` (built once per
    process). Returns ``n_nuclei, median_area, seconds, reused``.
    """
    from epikit.distributed import resolve_plugin
    from epikit.io import mask_path, read_labels, read_record, write_tiff

    segmenter = resolve_plugin(segmenter)
    target = mask_path(masks_dir, record)
    start = time.perf_counter()
    reused = skip_existing and target.is_file()
    if reused:
        labels = read_labels(target)
    else:
        image = read_record(record).array
        channel = resolve_channel(nuclear_channel, record.channel_names)
        labels = segmenter.segment(image, nuclear_channel=channel)
        labels = check_labels(labels, image.shape[1:], type(segmenter).__name__)
        write_tiff(target, labels)
    n_nuclei, median_area = _count(labels)
    return {"n_nuclei": n_nuclei, "median_area": median_area,
            "seconds": time.perf_counter() - start, "reused": bool(reused)}


def segment_images(
    records: Sequence[ImageRecord],
    segmenter: Segmenter | PluginSpec,
    out_dir: str | os.PathLike[str],
    nuclear_channel: int | str = 0,
    skip_existing: bool = True,
    progress: bool = True,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """Segment every record's image and write its mask under ``out_dir/masks``.

    ``nuclear_channel`` is an index or a channel name (resolved per image). With
    ``skip_existing`` an image whose mask already exists is not segmented again (its mask
    is read to count nuclei), so an interrupted run resumes. ``executor`` (see
    :func:`epikit.distributed.get_executor`; default: this process) runs the images in
    parallel; each task writes its own mask. ``segmenter`` may be a
    :class:`~epikit.distributed.PluginSpec` so that workers build it themselves, once each.
    An error names the image it happened on. Returns one row per image, in input order:
    ``image_id, condition, group, path, mask, n_nuclei, median_area, seconds, reused``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from epikit.distributed import InProcessExecutor, PluginSpec, for_workers
    from epikit.io import mask_path

    if not isinstance(segmenter, PluginSpec) and not callable(getattr(segmenter, "segment", None)):
        raise ConfigError(f"{segmenter!r} is not a segmenter (it has no segment() method)")
    executor = executor or InProcessExecutor()
    masks_dir = Path(out_dir) / layout.MASKS
    shared = (segmenter, Path(os.path.abspath(masks_dir)), nuclear_channel, skip_existing)
    counts: dict[str, dict[str, Any]] = {}
    records = list(records)
    with tqdm(total=len(records), desc="segment", unit="image", file=sys.stderr,
              disable=not progress) as bar:
        for record, row in executor.map_unordered(segment_image, [for_workers(r) for r in records],
                                                  shared=shared, label=lambda r: str(r.path)):
            counts[record.image_id] = row
            bar.update(1)
    rows = [{"image_id": r.image_id, "condition": r.condition, "group": r.group, "path": str(r.path),
             "mask": str(mask_path(masks_dir, r)), **counts[r.image_id]} for r in records]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def summarise_counts(table: pd.DataFrame) -> dict[str, Any]:
    """Nucleus counts of a :func:`segment_images` table: overall and per condition."""
    per_condition = {
        str(condition): {"images": int(len(group)), "nuclei": int(group["n_nuclei"].sum()),
                         "nuclei_per_image": float(group["n_nuclei"].mean())}
        for condition, group in table.groupby("condition", sort=True)
    }
    return {
        "images": int(len(table)),
        "nuclei": int(table["n_nuclei"].sum()),
        "images_without_nuclei": int((table["n_nuclei"] == 0).sum()),
        "per_condition": per_condition,
    }


def segmentation_settings(options: SegmentOptions) -> dict[str, Any]:
    """What a run folder's masks depend on, as ``segmentation.json`` records it."""
    return {"segmenter": options.segmenter, "params": options.params,
            "nuclear_channel": str(options.nuclear_channel)}


def run(
    run_dir: str | os.PathLike[str],
    options: SegmentOptions,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The segment stage: segment ``options.images`` into ``run_dir/masks/``; return the summary.

    Masks already in ``run_dir`` are reused (an interrupted run resumes) only when
    ``segmentation.json`` says they were made with the same segmenter, parameters and
    nuclear channel; otherwise a :class:`ConfigError` is raised unless ``options.overwrite``
    (then every image is segmented again). Writes ``segmentation.csv``,
    ``segmentation.json`` (settings, plugin provenance, summary) and
    ``metrics.json["segmentation"]`` (the summary, with the segmenter's ``weights_info``).
    """
    from epikit.distributed import PluginSpec
    from epikit.interfaces import optional_attribute
    from epikit.io import read_json, write_csv, write_json
    from epikit.registry import get_entry
    from epikit.runfolder.metrics import update_metrics

    run_dir = Path(run_dir)
    # By name and parameters: workers build it themselves, once each (here: built once, cached).
    spec = PluginSpec("segmenter", options.segmenter, options.params)
    segmenter = spec.build()  # fail on a bad name or parameter before any work
    settings = segmentation_settings(options)
    previous = read_json(run_dir / layout.SEGMENTATION_RECORD, default=None)
    if previous is not None and not options.overwrite and previous.get("settings") != settings:
        raise ConfigError(f"{run_dir} holds masks made with {previous.get('settings')}; overwrite "
                          "them (--overwrite) or choose another output folder")
    table = segment_images(options.images, spec, run_dir, nuclear_channel=options.nuclear_channel,
                           skip_existing=not options.overwrite, progress=progress, executor=executor)
    write_csv(table, run_dir / layout.SEGMENTATION_TABLE)
    summary = summarise_counts(table)
    weights = optional_attribute(segmenter, "segmenter", "weights_info")
    if weights:
        summary["weights"] = weights
    write_json(run_dir / layout.SEGMENTATION_RECORD, {
        "settings": settings,
        "provenance": get_entry("segmenter", options.segmenter).provenance(),
        "summary": summary,
    })
    update_metrics(run_dir, "segmentation", summary)
    return summary


def segment_annotated(
    segmenter: Segmenter,
    data_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    progress: bool = True,
) -> pd.DataFrame:
    """Segment every image of a DSB2018 folder into ``pred_dir/<id>.tif`` (for scoring).

    The predictions pair with the folder's ground truth in
    :func:`epikit.analysis.segmentation_metrics.evaluate_folders`. Returns one row per image:
    ``image, n_nuclei, seconds`` (segmentation time only, reading excluded).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from epikit.errors import InputError
    from epikit.io import write_tiff
    from epikit.io.annotated import dsb_samples, read_dsb_sample

    samples = dsb_samples(data_dir)
    if not samples:
        raise InputError(f"{data_dir} is not a DSB2018 folder (<id>/images/<id>.png + <id>/masks/*.png); "
                         "segment other layouts with 'epikit segment' and score its masks")
    rows = []
    for folder in tqdm(samples, desc="segment", unit="image", file=sys.stderr, disable=not progress):
        image = read_dsb_sample(folder).image
        start = time.perf_counter()
        labels = check_labels(segmenter.segment(image[None], nuclear_channel=0), image.shape, folder.name)
        seconds = time.perf_counter() - start
        write_tiff(Path(pred_dir) / f"{folder.name}.tif", labels)
        rows.append({"image": folder.name, "n_nuclei": _count(labels)[0], "seconds": seconds})
    return pd.DataFrame(rows, columns=["image", "n_nuclei", "seconds"])
