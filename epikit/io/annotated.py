"""Annotated nuclei images for training and scoring segmenters: DSB2018 folders and image + label pairs.

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
    fluorescence: bool = True


def looks_like_fluorescence(array: np.ndarray) -> bool:
    """True for a grey 8-bit PNG image (C, Y, X) on a dark background, as DSB2018's fluorescence fields are.

    DSB2018 also holds stained tissue (colour) and bright-field images (light background).
    """
    grey = all(np.array_equal(array[0], channel) for channel in array[1:])
    return grey and float(np.median(array[0])) < 100.0


def _is_rgb_png(path: Path, array: np.ndarray) -> bool:
    return path.suffix.lower() == ".png" and array.shape[0] == 3


def nuclear_plane(path: Path, nuclear_channel: int = 0) -> np.ndarray:
    """The nuclear channel of an image file; RGB(A) colour PNGs are averaged to grey."""
    array = read_image(path).array
    if _is_rgb_png(path, array):
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
    array = read_image(images[0]).array
    fluorescence = looks_like_fluorescence(array)
    image = array.mean(axis=0) if _is_rgb_png(images[0], array) else array[0]
    labels = np.zeros(image.shape, dtype=np.int32)
    for index, mask_file in enumerate(sorted((folder / "masks").glob("*.png")), start=1):
        mask = read_labels(mask_file)
        if mask.shape != image.shape:
            raise InputError(f"{mask_file}: mask shape {mask.shape} differs from image shape {image.shape}")
        labels[mask > 0] = index
    return AnnotatedImage(folder.name, image, labels, fluorescence)


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


def dsb_samples(root: str | Path) -> list[Path]:
    """The DSB2018 sample folders of ``root`` (``root`` itself when it is one), sorted; [] if none."""
    root = Path(root)
    if not root.is_dir():
        return []
    if _is_dsb_sample(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and _is_dsb_sample(p))


def _label_for(root: Path, image_file: Path) -> Path | None:
    relative = image_file.relative_to(root / "images")
    for folder in LABEL_FOLDERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = (root / folder / relative).with_suffix(suffix)
            if candidate.is_file():
                return candidate
    return None


def load_training_images(
    root: str | Path, nuclear_channel: int = 0, fluorescence_only: bool = False
) -> list[AnnotatedImage]:
    """All annotated images under ``root`` (DSB2018 layout or image + label pairs).

    ``fluorescence_only`` keeps the DSB2018 samples that :func:`looks_like_fluorescence`
    (label-pair images are single-channel stains and always kept). Raises
    :class:`InputError` naming ``root`` when it holds neither layout, or nothing is kept.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"training data folder {root} does not exist")
    samples = dsb_samples(root)
    if samples:
        images = [read_dsb_sample(p) for p in samples]
        kept = [image for image in images if image.fluorescence or not fluorescence_only]
        if not kept:
            raise InputError(f"none of the {len(images)} images in {root} is a fluorescence image "
                             "(grey on a dark background); train on all of them with fluorescence_only=False")
        return kept
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
