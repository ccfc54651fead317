"""Annotated nuclei images for training segmenters: DSB2018 folders and image + label pairs.

Two layouts are read (:func:`load_training_images` tells them apart):

* **DSB2018** (2018 Data Science Bowl): one folder per image, ``<id>/images/<id>.png`` and
  one binary PNG per nucleus in ``<id>/masks/*.png``;
* **image + label pairs**: ``ROOT/images/**/<stem>.<tif|png>`` with an integer label image
  ``ROOT/masks/**/<stem>.tif`` (or ``ROOT/labels/...``) at the same relative path - the
  layout ``epikit simulate`` writes, so simulated data sets can be used as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epikit.errors import InputError
from epikit.io.images import read_image, read_labels

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
LABEL_FOLDERS = ("masks", "labels")


@dataclass
class AnnotatedImage:
    """One training image: its nuclear channel (Y, X) float32 and int32 instance labels."""

    name: str
    image: np.ndarray
    labels: np.ndarray


def nuclear_plane(path: Path, nuclear_channel: int = 0) -> np.ndarray:
    """The nuclear channel of an image file; RGB(A) colour PNGs are averaged to grey."""
    data = read_image(path)
    array = data.array
    if path.suffix.lower() == ".png" and array.shape[0] == 3:
        return array.mean(axis=0)
    if not -array.shape[0] <= nuclear_channel < array.shape[0]:
        raise InputError(f"{path}: nuclear_channel {nuclear_channel} is out of range ({array.shape[0]} channels)")
    return array[nuclear_channel]


def read_dsb_sample(folder: str | Path) -> AnnotatedImage:
    """Read one DSB2018 sample folder (``images/<id>.png`` + ``masks/*.png``)."""
    folder = Path(folder)
    images = sorted((folder / "images").glob("*.png"))
    if len(images) != 1:
        raise InputError(f"{folder}: expected one PNG in {folder / 'images'}, found {len(images)}")
    image = nuclear_plane(images[0])
    labels = np.zeros(image.shape, dtype=np.int32)
    for index, mask_file in enumerate(sorted((folder / "masks").glob("*.png")), start=1):
        mask = read_labels(mask_file)
        if mask.shape != image.shape:
            raise InputError(f"{mask_file}: mask shape {mask.shape} differs from image shape {image.shape}")
        labels[mask > 0] = index
    return AnnotatedImage(folder.name, image, labels)


def read_label_pair(image_path: str | Path, label_path: str | Path, nuclear_channel: int = 0) -> AnnotatedImage:
    """Read an image file and its integer label image (same Y, X)."""
    image_path, label_path = Path(image_path), Path(label_path)
    image = nuclear_plane(image_path, nuclear_channel)
    labels = read_labels(label_path)
    if labels.shape != image.shape:
        raise InputError(f"{label_path}: label shape {labels.shape} differs from image {image_path} {image.shape}")
    return AnnotatedImage(image_path.stem, image, labels.astype(np.int32))


def _is_dsb_sample(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir() and any((folder / "images").glob("*.png"))


def _label_for(root: Path, image_file: Path) -> Path | None:
    relative = image_file.relative_to(root / "images")
    for folder in LABEL_FOLDERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = (root / folder / relative).with_suffix(suffix)
            if candidate.is_file():
                return candidate
    return None


def load_training_images(root: str | Path, nuclear_channel: int = 0) -> list[AnnotatedImage]:
    """All annotated images under ``root`` (DSB2018 layout or image + label pairs).

    Raises :class:`InputError` naming ``root`` when it holds neither layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"training data folder {root} does not exist")
    samples = sorted(p for p in root.iterdir() if p.is_dir() and _is_dsb_sample(p))
    if samples:
        return [read_dsb_sample(p) for p in samples]
    if _is_dsb_sample(root):
        return [read_dsb_sample(root)]
    pairs = []
    if (root / "images").is_dir():
        for image_file in sorted((root / "images").rglob("*")):
            if image_file.suffix.lower() in IMAGE_SUFFIXES and image_file.is_file():
                label_file = _label_for(root, image_file)
                if label_file is not None:
                    pairs.append(read_label_pair(image_file, label_file, nuclear_channel))
    if not pairs:
        raise InputError(
            f"no annotated images in {root}: use the DSB2018 layout (<id>/images/<id>.png + "
            "<id>/masks/*.png) or images/<name>.tif with masks/<name>.tif label images"
        )
    return pairs
