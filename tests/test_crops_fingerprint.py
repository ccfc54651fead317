"""The crops fingerprint that ties maps to their cells is computed once, when extraction writes crops.zarr.

Every reader of the maps (explain, biomarkers, report, napari, compared runs) asks for it; it
must come from the store's attrs, not from hashing every crop again, and still change when
the cells are extracted again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import zarr

from epikit.config import section_hash
from epikit.extraction import extract_cells
from epikit.io import discover_images
from epikit.runfolder.crops import CONTENT_HASH_ATTR, content_hash, crops_fingerprint
from tiny_runs import build_tiny_run


def test_extraction_stores_the_content_hash_and_the_fingerprint_reads_it(tmp_path):
    run = build_tiny_run(tmp_path, train=False, n_fields=2)
    store = run / "crops.zarr"
    stored = zarr.open_group(str(store), mode="r").attrs[CONTENT_HASH_ATTR]
    assert stored == content_hash(store)
    cells = pd.read_parquet(run / "cells.parquet", columns=["cell_id", "crop_index"])
    ids, rows = cells["cell_id"].astype(str).tolist(), cells["crop_index"].to_numpy(np.int64)
    assert crops_fingerprint(run) == section_hash(ids, rows, stored)

    # A store written before the attr existed is hashed as before, so its maps stay valid.
    group = zarr.open_group(str(store), mode="r+")
    legacy = section_hash(ids, rows, group["crops"], group["masks"])
    del group.attrs[CONTENT_HASH_ATTR]
    assert crops_fingerprint(run) == legacy

    # Extracted again with other settings: other cells, another fingerprint.
    again = tmp_path / "again"
    again.mkdir()
    extract_cells(discover_images(tmp_path / "input" / "images"), run / "masks", again, crop_size=16, min_area=500)
    assert crops_fingerprint(again) != crops_fingerprint(run)
    assert zarr.open_group(str(again / "crops.zarr"), mode="r").attrs[CONTENT_HASH_ATTR] != stored
