"""One input image as discovery found it, and how the run folder records it.

An :class:`ImageRecord` says where an image's pixels are (one file, one scene of a
multi-scene file, one field of an OME-Zarr plate, or one file per channel), which condition
and group it belongs to, how a Z-stack is projected and its pixel size. The manifest stores
:func:`record_dict`; :func:`record_from_dict` rebuilds the record from it (the report and
the napari reader read images that way).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epikit.io.store import sha256_file


@dataclass(frozen=True)
class ImageRecord:
    """One input image: where it is, its condition and group, and its channel names.

    ``channel_files``: one file per channel (then ``path`` is the first of them);
    ``scene``: the scene of a multi-scene file; ``z`` / ``z_channel``: how a Z-stack is
    projected (see :mod:`epikit.io.zstack`), ``n_z`` its number of planes; ``pixel_size_um``:
    micrometres per pixel, None when unknown. ``metadata``: extra manifest columns and plate / well / field, written as
    cell columns.
    """

    path: Path
    condition: str
    group: str
    channel_names: tuple[str, ...]
    image_id: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)
    channel_files: tuple[Path, ...] = ()
    scene: int = 0
    z: str = "max"
    z_channel: int = 0
    pixel_size_um: float | None = None
    n_z: int = 1

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file (or OME-Zarr folder) the image is read from."""
        return self.channel_files or (self.path,)


def _tree_sha256(folder: Path) -> str:
    """sha256 over the relative names and contents of every file below ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def record_sha256(record: ImageRecord) -> str:
    """Content hash of a record's input: the file's sha256 for one file, else a hash of all of them."""
    hashes = [_tree_sha256(p) if p.is_dir() else sha256_file(p) for p in record.files]
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def record_dict(record: ImageRecord) -> dict[str, Any]:
    """What the manifest keeps of a record (JSON-serialisable; :func:`record_from_dict` reverses it)."""
    entry: dict[str, Any] = {"image_id": record.image_id, "path": str(record.path),
                             "condition": record.condition, "group": record.group,
                             "channel_names": list(record.channel_names), "scene": record.scene,
                             "z": record.z, "z_channel": record.z_channel,
                             "pixel_size_um": record.pixel_size_um, "n_z": record.n_z}
    if record.channel_files:
        entry["channel_files"] = [str(p) for p in record.channel_files]
    if record.metadata:
        entry["metadata"] = dict(record.metadata)
    return entry


def record_from_dict(entry: dict[str, Any], base: str | os.PathLike[str] | None = None) -> ImageRecord:
    """The record of a manifest entry; relative paths are taken relative to ``base``."""
    def resolve(text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() or base is None else Path(base) / path

    size = entry.get("pixel_size_um")
    return ImageRecord(
        resolve(entry["path"]), str(entry["condition"]), str(entry.get("group") or entry["image_id"]),
        tuple(entry.get("channel_names") or ()), str(entry["image_id"]),
        dict(entry.get("metadata") or {}), tuple(resolve(p) for p in entry.get("channel_files") or ()),
        int(entry.get("scene") or 0), str(entry.get("z") or "max"), int(entry.get("z_channel") or 0),
        float(size) if size else None, int(entry.get("n_z") or 1))


@dataclass(frozen=True)
class InputEntry:
    """One listed input before its header is read (a manifest row, a file, a plate field).

    ``name`` is the image's name within its condition (default: the file's stem);
    ``group`` None means the image is its own group. ``origin`` names where its condition
    and metadata were written (a manifest line, a layout CSV's well) for error messages;
    empty: the file itself.
    """

    path: Path
    condition: str
    group: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    channel_files: tuple[Path, ...] = ()
    name: str | None = None
    origin: str = ""

    @property
    def where(self) -> str:
        """Where the entry's labels come from, for a one-line error."""
        return self.origin or str(self.path)
