"""Radial profiles: calibration of the bands and the curve test under the null, and their cost.

``coverage``: ``--reps`` null simulations at the profile-table level
(:func:`epikit.simulate.profiles.simulate_profile_table`: two conditions of ``--images``
images with ``--cells`` cells each, a smooth random shift per image and noise per cell, no
planted difference). Each goes through :func:`epikit.analysis.radial.compare_profiles`
exactly as the biomarker stage runs it (hierarchical bootstrap, simultaneous 95% bands,
cluster-mass permutation test). Reports the share of runs whose difference band covers 0 at
every bin, whose reference-curve band covers the true curve (1) at every bin, and whose curve
test finds any interval with p < 0.05 (the family-wise false-positive rate). Also the power
with ``--effect periphery``.

``cost``: simulate fields, extract cells at the default crop size (the extract stage, features
on), then time the radial profiles of every cell's crops read back from ``crops.zarr``
(:func:`epikit.radial_biomarkers.measure_profiles`, image channels, relative and micrometre
bins, each alone), both in this process, and report their ratios.

Run: ``nice python bench/bench_profiles.py coverage --reps 200`` and
``nice python bench/bench_profiles.py cost``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def coverage(args: argparse.Namespace) -> dict:
    """Null (and planted-effect) calibration of bands and the curve test."""
    from epikit.analysis.radial import compare_profiles
    from epikit.simulate.profiles import simulate_profile_table

    edges = np.linspace(0, 1, args.bins + 1)
    results = {}
    for effect in ("none", *([args.effect] if args.effect != "none" else [])):
        covered_difference = covered_reference = rejected = 0
        started = time.perf_counter()
        for rep in range(args.reps):
            table = simulate_profile_table(effect=effect, n_images=args.images, n_cells=args.cells,
                                           n_bins=args.bins, image_sd=args.image_sd, cell_sd=args.cell_sd,
                                           seed=args.seed + rep)
            bins = [f"b{b}" for b in range(args.bins)]
            result = compare_profiles(table[bins].to_numpy(), table, "ctrl", edges, n_boot=args.boot,
                                      n_permutations=args.permutations, seed=rep)
            curves = result.curves
            difference = curves[curves["kind"] == "difference"]
            reference = curves[curves["curve"] == "ctrl"]
            covered_difference += bool(((difference["low"] <= 0) & (difference["high"] >= 0)).all())
            covered_reference += bool(((reference["low"] <= 1) & (reference["high"] >= 1)).all())
            rejected += any(i["p_value"] < 0.05 for i in result.intervals)
        results[effect] = {
            "reps": args.reps,
            "difference_band_covers_zero_everywhere": covered_difference / args.reps,
            "reference_band_covers_truth_everywhere": covered_reference / args.reps,
            "curve_test_rejects": rejected / args.reps,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(effect, json.dumps(results[effect]), flush=True)
    return {"settings": {k: v for k, v in vars(args).items() if k not in ("func", "json")}, "results": results}


def cost(args: argparse.Namespace) -> dict:
    """Extraction time versus profile time on the same simulated fields (one process)."""
    from epikit.extraction import extract_cells
    from epikit.io import discover_images
    from epikit.radial_biomarkers import measure_profiles
    from epikit.runfolder.cells import CellDataset
    from epikit.simulate import simulate_dataset

    root = Path(tempfile.mkdtemp(prefix="bench_profiles_"))
    try:
        simulate_dataset(root / "input", n_fields=args.fields, size=args.size, seed=args.seed)
        rows = []
        for repeat in range(args.repeats):
            run = root / f"run{repeat}"
            run.mkdir()
            started = time.perf_counter()
            extract_cells(discover_images(root / "input" / "images"), root / "input" / "masks", run)
            extract_seconds = time.perf_counter() - started
            dataset = CellDataset(run)
            row = {"cells": len(dataset.table), "extract_s": round(extract_seconds, 2)}
            measure_profiles(run, dataset.table.iloc[:8], dataset.channel_names, [], bins=20)  # warm-up: zarr, imports
            for name, cells in (("relative", dataset.table), ("relative+um", dataset.table.assign(pixel_size_um=0.1))):
                started = time.perf_counter()
                measure_profiles(run, cells, dataset.channel_names, [], bins=20, bin_um=0.25)
                seconds = time.perf_counter() - started
                row[f"{name}_s"] = round(seconds, 3)
                row[f"{name}_ratio"] = round(seconds / extract_seconds, 4)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
        return {"settings": {"fields": args.fields, "size": args.size, "crop_size": 64,
                             "load_average": os.getloadavg()}, "runs": rows,
                "median_ratio": {k: float(np.median([r[f"{k}_ratio"] for r in rows])) for k in ("relative", "relative+um")},
                "min_ratio": {k: min(r[f"{k}_s"] for r in rows) / min(r["extract_s"] for r in rows)
                              for k in ("relative", "relative+um")}}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Parse the command line and run one benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    sub = parser.add_subparsers(required=True)
    calibrate = sub.add_parser("coverage", help="null calibration at the profile-table level")
    calibrate.add_argument("--reps", type=int, default=200)
    calibrate.add_argument("--images", type=int, default=6, help="images per condition")
    calibrate.add_argument("--cells", type=int, default=20, help="cells per image")
    calibrate.add_argument("--bins", type=int, default=20)
    calibrate.add_argument("--image-sd", type=float, default=0.05)
    calibrate.add_argument("--cell-sd", type=float, default=0.15)
    calibrate.add_argument("--boot", type=int, default=1000)
    calibrate.add_argument("--permutations", type=int, default=2000)
    calibrate.add_argument("--effect", default="periphery", help="also measure power with this effect")
    calibrate.add_argument("--seed", type=int, default=20261201)
    calibrate.set_defaults(func=coverage)
    extraction = sub.add_parser("cost", help="profile time relative to extraction time")
    extraction.add_argument("--fields", type=int, default=4)
    extraction.add_argument("--size", type=int, default=512)
    extraction.add_argument("--repeats", type=int, default=2)
    extraction.add_argument("--seed", type=int, default=20261201)
    extraction.set_defaults(func=cost)
    args = parser.parse_args()
    result = args.func(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
