"""Reading inputs and writing run folders.

* :mod:`epikit.io.images`: image and label readers (TIFF / OME-TIFF / PNG, the fast path);
* :mod:`epikit.io.omezarr`: OME-Zarr images and HCS plates; :mod:`epikit.io.bioio_reader`:
  vendor formats through bioio; :mod:`epikit.io.sources`: picks the reader of an input;
* :mod:`epikit.io.zstack`: Z-stack projection; :mod:`epikit.io.channel_files`: one file per
  channel; :mod:`epikit.io.plates`: wells and layout CSVs;
* :mod:`epikit.io.record`: :class:`ImageRecord`, one input image, and its manifest entry;
* :mod:`epikit.io.discover`: input discovery (condition folders, manifests, patterns, plates);
* :mod:`epikit.io.store`: atomic writers for run-folder files;
* :mod:`epikit.io.annotated`: annotated nuclei data sets (DSB2018 folders, image + label pairs).
"""

from epikit.io.discover import SkippedFile, discover_images, find_images, mask_path
from epikit.io.images import ImageData, ImageInfo, probe_image, read_image, read_labels
from epikit.io.record import ImageRecord, record_dict, record_from_dict, record_sha256
from epikit.io.sources import read_record
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
    "read_record",
    "record_dict",
    "record_from_dict",
    "record_sha256",
    "sha256_file",
    "write_csv",
    "write_json",
    "write_parquet",
    "write_tiff",
]
