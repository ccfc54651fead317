"""The resumable writer of ``crops.zarr`` + ``cells.parquet`` (the extract stage's working store).

Its work folder (the extract stage's :class:`~epikit.runfolder.scratch.Scratch`, keyed by
the options) holds ``config.json`` (the options), a Zarr store growing one image
at a time, one part table per image and ``progress.jsonl`` (one line per finished image, the
commit point). :meth:`CropWriter.finalise` streams the parts into ``cells.parquet`` and
renames the store to ``crops.zarr``, so both appear complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from epikit.io.store import atomic_path, read_json, write_json
from epikit.runfolder.crops import CONTENT_HASH_ATTR, content_hash
from epikit.runfolder.layout import CELLS, CROPS

STATE_VERSION = 1
#: Target size of one Zarr chunk; chunks hold 1 to :data:`MAX_CHUNK_CELLS` cells.
CHUNK_BYTES = 512 * 1024
MAX_CHUNK_CELLS = 16

#: Rows per row group of ``cells.parquet``.
ROW_GROUP_ROWS = 8192


def chunk_cells(channels: int, crop_size: int, dtype: str) -> int:
    """Cells per Zarr chunk: about :data:`CHUNK_BYTES` per chunk, at least one cell."""
    cell_bytes = channels * crop_size * crop_size * np.dtype(dtype).itemsize
    return int(min(MAX_CHUNK_CELLS, max(1, CHUNK_BYTES // cell_bytes)))


def _create_array(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str) -> Any:
    """Create an array in a Zarr group with zarr 3 (``create_array``) or zarr 2 (``create_dataset``)."""
    create = getattr(group, "create_array", None) or group.create_dataset
    return create(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0)


class CropWriter:
    """The working store of an extraction: Zarr arrays, part tables and the progress log.

    Lives in ``work`` (the extract scratch of these options) until :meth:`finalise` moves
    ``crops.zarr`` and ``cells.parquet`` into place.

    ``config.json`` holds the options; ``progress.jsonl`` one line per finished image, appended
    and flushed to disk after the image's crops and part table are written (the commit point;
    a torn last line is ignored); ``finalised`` marks that ``cells.parquet`` was written.
    """

    def __init__(self, out_dir: Path, config: dict[str, Any], work: Path) -> None:
        self.out_dir = out_dir
        self.work = work
        self.config = config
        self.images: list[dict[str, Any]] = []

    @property
    def work_store(self) -> Path:
        return self.work / CROPS

    @property
    def final_store(self) -> Path:
        return self.out_dir / CROPS

    @property
    def log(self) -> Path:
        return self.work / "progress.jsonl"

    @property
    def marker(self) -> Path:
        return self.work / "finalised"

    @property
    def n_cells(self) -> int:
        return sum(entry["count"] for entry in self.images)

    @property
    def finalised(self) -> bool:
        return self.marker.exists()

    @property
    def done(self) -> dict[str, dict[str, Any]]:
        return {entry["image_id"]: entry for entry in self.images}

    def _read_log(self) -> list[dict[str, Any]]:
        """Committed entries; a line torn by a kill is cut off the log."""
        if not self.log.exists():
            return []
        text = self.log.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        if len(complete) != len(text):
            with open(self.log, "r+", encoding="utf-8") as handle:
                handle.truncate(len(complete.encode("utf-8")))
        return [json.loads(line) for line in complete.splitlines()]

    def load(self, fingerprints: dict[str, list[Any]]) -> str | None:
        """Pick up an earlier extraction into ``out_dir``; return why it was discarded, if it was."""
        if read_json(self.work / "config.json") is None:
            return None  # nothing earlier (the scratch key already matches the options)
        images = self._read_log()
        if any(fingerprints.get(e["image_id"]) != e["fingerprint"] for e in images):
            reason = "input images or masks changed or were removed"
        elif set(e["image_id"] for e in images) - set(fingerprints):
            reason = "it holds images that are no longer inputs"
        elif images and not (self.work_store.exists() or self.final_store.exists()):
            reason = "its crops.zarr is missing"
        else:
            self.images = images
            return None
        shutil.rmtree(self.work, ignore_errors=True)
        return reason

    def open_arrays(self, n_channels: int, crop_size: int, dtype: str) -> tuple[Any, Any]:
        """Open (or create) the working Zarr arrays, cut back to the committed cells."""
        import zarr

        if not self.work_store.exists() and self.finalised and self.final_store.exists():
            # Extending a finished extraction: its outputs become working files again.
            os.replace(self.final_store, self.work_store)
            (self.out_dir / CELLS).unlink(missing_ok=True)
        self.marker.unlink(missing_ok=True)
        if not self.work_store.exists():
            self.work.mkdir(parents=True, exist_ok=True)
            write_json(self.work / "config.json", {"version": STATE_VERSION, **self.config})
            group = zarr.open_group(str(self.work_store), mode="w")
            k = chunk_cells(n_channels, crop_size, dtype)
            _create_array(group, "crops", (0, n_channels, crop_size, crop_size),
                          (k, n_channels, crop_size, crop_size), dtype)
            _create_array(group, "masks", (0, crop_size, crop_size), (k, crop_size, crop_size), "uint8")
        group = zarr.open_group(str(self.work_store), mode="a")
        crops, masks = group["crops"], group["masks"]
        n = self.n_cells
        if crops.shape[0] != n or masks.shape[0] != n:  # drop a half-written image
            crops.resize((n,) + tuple(crops.shape[1:]))
            masks.resize((n,) + tuple(masks.shape[1:]))
        return crops, masks

    def commit(self, entry: dict[str, Any], part: pa.Table | None) -> None:
        """Record one finished image: its part table first, then its log line (the commit point)."""
        if part is not None:
            path = self.work / "parts" / f"{len(self.images):06d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                pq.write_table(part, tmp)
            entry["part"] = str(path.relative_to(self.work))
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.images.append(entry)

    def write_table(self) -> None:
        """Stream the part tables, in crop order, into ``cells.parquet`` (atomically).

        Parts are gathered into row groups of about :data:`ROW_GROUP_ROWS` rows, so memory is
        bounded by one row group and the file does not hold one tiny row group per image.
        """
        writer = None
        pending: list[pa.Table] = []
        try:
            with atomic_path(self.out_dir / CELLS) as tmp:
                for entry in self.images:
                    if entry.get("part") is None:
                        continue
                    table = pq.read_table(self.work / entry["part"])
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    pending.append(table if table.schema == writer.schema else table.cast(writer.schema))
                    if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
                        writer.write_table(pa.concat_tables(pending))
                        pending.clear()
                if pending:
                    writer.write_table(pa.concat_tables(pending))
                writer.close()
                writer = None
        finally:
            if writer is not None:
                writer.close()

    def finalise(self, attrs: dict[str, Any]) -> None:
        """Write ``cells.parquet``, then move the finished Zarr store into place.

        The store's attrs get ``attrs`` and the hash of its content
        (:data:`~epikit.runfolder.crops.CONTENT_HASH_ATTR`), computed once here for every
        later reader of :func:`~epikit.runfolder.crops.crops_fingerprint`."""
        import zarr

        if not self.finalised or not (self.out_dir / CELLS).exists():
            if self.work_store.exists():
                zarr.open_group(str(self.work_store), mode="a").attrs.update(
                    {**attrs, CONTENT_HASH_ATTR: content_hash(self.work_store)})
            self.write_table()
            self.marker.touch()
        if self.work_store.exists():
            with atomic_path(self.final_store) as tmp:
                os.replace(self.work_store, tmp)
