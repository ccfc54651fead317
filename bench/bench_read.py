"""Reading speed of the TIFF fast path and of the new input kinds (OME-Zarr, per-channel files, Z-stacks).

Writes the inputs into a temporary folder, then times ``read_image`` / ``read_record`` and
``find_images`` (best of ``--repeats``). Run it with ``PYTHONPATH`` pointing at two checkouts
to compare the fast path before and after a change::

    PYTHONPATH=. python bench/bench_read.py --size 2048 --repeats 7
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from epikit.io import find_images, read_image


def best_of(repeats: int, function) -> float:
    """Fastest of ``repeats`` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    """Write the inputs and print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--new", action="store_true", help="also time the new input kinds")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (3, args.size, args.size), dtype=np.uint16)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for condition in ("ctrl", "vpa"):
            (root / "in" / condition).mkdir(parents=True)
            for k in range(4):
                tifffile.imwrite(root / "in" / condition / f"f{k}.tif", image, photometric="minisblack")
        tiff = root / "in" / "ctrl" / "f0.tif"
        print(f"read_image TIFF 3x{args.size}^2: {best_of(args.repeats, lambda: read_image(tiff)):.1f} ms")
        print(f"find_images 8 TIFFs: {best_of(args.repeats, lambda: find_images(root / 'in')):.1f} ms")
        if not args.new:
            return
        from epikit.io import read_record
        from epikit.io.omezarr import write_ome_zarr
        from epikit.io.record import ImageRecord

        write_ome_zarr(root / "f.zarr", image[:, None], ("a", "b", "c"), 0.1)
        zarr_record = ImageRecord(root / "f.zarr", "c", "c", ("a", "b", "c"), "c/f")
        print(f"read_record OME-Zarr: {best_of(args.repeats, lambda: read_record(zarr_record)):.1f} ms")
        files = []
        for c in range(3):
            files.append(root / f"w{c}.tif")
            tifffile.imwrite(files[-1], image[c])
        per_channel = ImageRecord(files[0], "c", "c", ("a", "b", "c"), "c/w", channel_files=tuple(files))
        print(f"read_record 3 channel files: {best_of(args.repeats, lambda: read_record(per_channel)):.1f} ms")
        stack = np.stack([image] * 5, axis=1)
        tifffile.imwrite(root / "z.ome.tif", stack, ome=True, metadata={"axes": "CZYX"})
        for mode in ("max", "best"):
            elapsed = best_of(args.repeats, lambda: read_image(root / "z.ome.tif", z=mode))
            print(f"read_image 5-plane stack, --z {mode}: {elapsed:.1f} ms")


if __name__ == "__main__":
    main()
