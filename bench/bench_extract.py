"""Benchmark the extract stage: cells per second and peak memory at 1x and 4x the cells.

Simulates 512 x 512 fields with 40-50 nuclei each (about 40 usable cells per field), then
runs :func:`epikit.extraction.extract_cells` in a fresh subprocess per measurement and reads
that process's peak resident memory (``ru_maxrss``), so imports (torch, zarr) are counted
once as a baseline and the growth during extraction is visible. Memory should not grow with
the number of cells: one image and one chunk of crops are held at a time.

Also compares the two resize strategies for one field's nuclei: the batched
``torch.nn.functional.grid_sample`` used by :func:`epikit.nuclei.crops.crop_nuclei` against a
per-nucleus scikit-image loop (pad to square, ``skimage.transform.resize`` with
anti-aliasing).

Usage::

    python bench/bench_extract.py                       # 10,000 cells (4x) and 2,500 (1x)
    python bench/bench_extract.py --cells 2000 --crop-size 96 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CELLS_PER_FIELD = 40  # measured for the settings below (border nuclei excluded)
FIELD = {"size": 512, "n_nuclei": (40, 50), "radius": (10.0, 16.0)}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux ``/proc``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(manifest: Path, masks: Path, out: Path, options: dict) -> None:
    """Run one extraction and print a JSON line with its summary and memory."""
    import zarr  # noqa: F401  (imported before the baseline, like everything extraction uses)

    from epikit.extraction import extract_cells
    from epikit.io import discover_images

    records = discover_images(manifest)
    baseline = peak_rss_mb()
    trace: list[tuple[int, int, float]] = []  # (images done, cells done, RSS MiB)
    step = max(1, len(records) // 10)

    def sample(record: object, count: int) -> None:
        cells = (trace[-1][1] if trace else 0) + count
        images = (trace[-1][0] if trace else 0) + 1
        trace.append((images, cells, current_rss_mb()))

    started = time.perf_counter()
    summary = extract_cells(records, masks, out, on_image=sample, **options)
    seconds = time.perf_counter() - started
    print(json.dumps({"cells": summary["n_cells"], "images": len(records), "seconds": seconds,
                      "cells_per_second": summary["n_cells"] / seconds,
                      "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
                      "rss_trace": [t for t in trace if t[0] % step == 0 or t[0] == len(trace)]}))


def simulate(root: Path, cells: int, seed: int) -> Path:
    from epikit.simulate import simulate_dataset

    fields_per_condition = math.ceil(cells / CELLS_PER_FIELD / 2)
    data = root / f"data_{fields_per_condition}"
    if not data.exists():
        started = time.perf_counter()
        simulate_dataset(data, n_fields=fields_per_condition, seed=seed, **FIELD)
        print(f"simulated {2 * fields_per_condition} fields in {time.perf_counter() - started:.0f} s")
    return data


def subset_manifest(data: Path, fraction: float, target: Path) -> Path:
    """A manifest with the first ``fraction`` of each condition's images."""
    with open(data / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_condition: dict[str, list[dict]] = {}
    for row in rows:
        by_condition.setdefault(row["condition"], []).append(row)
    kept = [r for group in by_condition.values() for r in group[: max(1, round(len(group) * fraction))]]
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in kept:
            row = dict(row)
            row["path"] = str((data / row["path"]).resolve())
            writer.writerow(row)
    return target


def measure(manifest: Path, masks: Path, out: Path, options: dict) -> dict:
    command = [sys.executable, __file__, "--worker", str(manifest), str(masks), str(out), json.dumps(options)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_resize(data: Path, crop_size: int, repeats: int = 3) -> dict:
    """Milliseconds per nucleus: batched grid_sample vs a per-nucleus scikit-image loop."""
    import numpy as np
    import torch
    from skimage.transform import resize

    from epikit.nuclei.crops import CropSettings, crop_nuclei, find_nuclei, intensity_range
    from epikit.io import discover_images, mask_path, read_image, read_labels

    record = discover_images(data / "images")[0]
    image = read_image(record.path).array
    labels = read_labels(mask_path(data / "masks", record))
    settings = CropSettings(crop_size=crop_size)
    nuclei = find_nuclei(labels, settings).nuclei
    image_range = intensity_range(image, settings.percentiles)
    low, high = image_range

    def skimage_loop() -> None:
        for n in nuclei:
            patch = (image[(slice(None),) + n.slices] - low[:, None, None]) / (high - low)[:, None, None]
            patch = patch * (labels[n.slices] == n.label)
            side = max(patch.shape[1:])
            square = np.zeros((patch.shape[0], side, side), np.float32)
            y, x = (side - patch.shape[1]) // 2, (side - patch.shape[2]) // 2
            square[:, y:y + patch.shape[1], x:x + patch.shape[2]] = patch
            resize(square, (patch.shape[0], crop_size, crop_size), anti_aliasing=True)

    def torch_batch() -> None:
        crop_nuclei(image, labels, nuclei, settings, image_range)

    torch.set_num_threads(1)
    timings = {}
    for name, run in (("grid_sample_batch", torch_batch), ("skimage_loop", skimage_loop)):
        run()
        started = time.perf_counter()
        for _ in range(repeats):
            run()
        timings[name] = (time.perf_counter() - started) / repeats / len(nuclei) * 1e3
    return {"nuclei": len(nuclei), "ms_per_nucleus": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=10_000, help="cells of the 4x run (1x is a quarter)")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None, help="keep data here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        manifest, masks, out, options = args.worker
        worker(Path(manifest), Path(masks), Path(out), json.loads(options))
        return

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_extract_"))
    root.mkdir(parents=True, exist_ok=True)
    data = simulate(root, args.cells, args.seed)
    results = {"resize": compare_resize(data, args.crop_size)}
    print(json.dumps(results["resize"]))
    options = {"crop_size": args.crop_size}
    runs = [("1x", 0.25, options), ("4x", 1.0, options), ("4x no features", 1.0, {**options, "features": False})]
    for name, fraction, run_options in runs:
        manifest = subset_manifest(data, fraction, root / f"manifest_{fraction}.csv")
        out = root / f"run_{name.replace(' ', '_')}"
        shutil.rmtree(out, ignore_errors=True)  # a finished run would be resumed, not measured
        results[name] = measure(manifest, data / "masks", out, run_options)
        print(name, json.dumps(results[name]))
    print("\n| run | images | cells | seconds | cells/s | RSS after imports (MiB) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for name, _, _ in runs:
        r = results[name]
        print(f"| {name} | {r['images']} | {r['cells']} | {r['seconds']:.1f} | {r['cells_per_second']:.0f} "
              f"| {r['baseline_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    print("\nRSS (MiB) while the 4x run goes on, after (images, cells):")
    print(", ".join(f"{images}/{cells}: {rss:.0f}" for images, cells, rss in results["4x"]["rss_trace"]))


if __name__ == "__main__":
    main()
