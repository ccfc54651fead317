"""Cost of the crops fingerprint every maps reader asks for: hashed crops against the stored hash.

Writes a random crops.zarr of ``--cells`` cells and times :func:`crops_fingerprint` on a store
without the content hash (every crop and mask read and hashed, as before extraction stored it),
:func:`content_hash` (what extraction now pays once), and :func:`crops_fingerprint` reading the
stored hash::

    PYTHONPATH=. python bench/bench_fingerprint.py --cells 4000 --size 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from epikit.runfolder.crops import CONTENT_HASH_ATTR, content_hash, crops_fingerprint


def seconds(function) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    """Build the store, time the three ways, print one line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    n, c, s = args.cells, args.channels, args.size
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        group = zarr.open_group(str(root / "crops.zarr"), mode="w")
        create = getattr(group, "create_array", None) or group.create_dataset
        crops = create("crops", shape=(n, c, s, s), chunks=(16, c, s, s), dtype="float16")
        masks = create("masks", shape=(n, s, s), chunks=(16, s, s), dtype="uint8")
        rng = np.random.default_rng(0)
        crops[...] = rng.random((n, c, s, s)).astype("float16")
        masks[...] = rng.random((n, s, s)) > 0.5
        pd.DataFrame({"cell_id": [f"c/f#{i}" for i in range(n)],
                      "crop_index": np.arange(n)}).to_parquet(root / "cells.parquet")
        hashed = seconds(lambda: crops_fingerprint(root))
        once = seconds(lambda: group.attrs.update({CONTENT_HASH_ATTR: content_hash(root / "crops.zarr")}))
        stored = seconds(lambda: crops_fingerprint(root))
        print(f"{n} cells x {c}x{s}x{s} float16 ({crops.nbytes / 1e6:.0f} MB): hashed {hashed:.3f} s, "
              f"content hash once {once:.3f} s, from attrs {stored:.4f} s ({hashed / stored:.0f}x)")


if __name__ == "__main__":
    main()
