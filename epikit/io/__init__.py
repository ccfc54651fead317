"""Reading inputs and writing run folders.

* :mod:`epikit.io.images`: image and label readers (TIFF / OME-TIFF / PNG);
* :mod:`epikit.io.discover`: input discovery (condition folders or a manifest CSV);
* :mod:`epikit.io.store`: atomic writers for run-folder files;
* :mod:`epikit.io.annotated`: annotated nuclei data sets (DSB2018 folders, image + label pairs).
"""

from epikit.io.discover import ImageRecord, SkippedFile, discover_images, find_images, mask_path
from epikit.io.images import ImageData, ImageInfo, probe_image, read_image, read_labels
from epikit.io.store import (
    atomic_path,
    read_json,
    sha256_file,
    write_csv,
    write_json,
    write_parquet,
    write_tiff,
)

__all__ = [
    "ImageData",
    "ImageInfo",
    "ImageRecord",
    "SkippedFile",
    "atomic_path",
    "discover_images",
    "find_images",
    "mask_path",
    "probe_image",
    "read_image",
    "read_json",
    "read_labels",
    "sha256_file",
    "write_csv",
    "write_json",
    "write_parquet",
    "write_tiff",
]
