"""Seed robustness of the specification-curve tests: tiny planted and null grids over several seeds.

Runs the grid of tests/test_compare.py (watershed, maskrcnn x gradcam, gradcampp x scaled,
distance shells; 5 demo fields of 160 px per condition, 2-epoch CNN) with a rim effect
planted in CTCF and with none, for each seed, and prints per grid the intensity curve's
share of specifications with the dominant sign, its joint-test p, and the map curve's p.

    nice python bench/bench_specification.py --seeds 0 1 2 3 4 --workdir /tmp/bench-spec
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from epikit.compare import compare_methods
from epikit.config import default_config, merge_config
from epikit.options import CompareOptions

TINY = {"demo": {"fields": 5, "size": 160, "min_nuclei": 6, "max_nuclei": 9, "effect_channel": "CTCF"},
        "train": {"folds": 2, "epochs": 2}, "explain": {"max_cells": 6}, "extract": {"crop_size": 32},
        "biomarkers": {"trust": False, "profile_resamples": 200}, "report": {"enabled": False}}


def run(seed: int, effect_size: float, workdir: Path) -> dict[str, float]:
    """One tiny grid; the numbers of its two curves."""
    config = merge_config(default_config(), {**TINY, "seed": seed})
    config["demo"]["effect_size"] = effect_size
    out = workdir / f"seed{seed}-effect{effect_size:g}"
    shutil.rmtree(out, ignore_errors=True)
    compare_methods(config, out, "watershed,maskrcnn", "cnn", "gradcam,gradcampp",
                    choices={"shell": "scaled,distance"}, options=CompareOptions(permutations=500), progress=False)
    from epikit.io import read_json
    from epikit.runfolder.layout import SPECIFICATION_CURVE

    curves = read_json(out / SPECIFICATION_CURVE)
    return {"same_sign": curves["intensity"]["share_same_sign"], "sign": curves["intensity"]["sign"],
            "p_intensity": curves["intensity"]["joint_test"]["p_value"],
            "p_map": curves["map"]["joint_test"]["p_value"]}


def main() -> None:
    """Print one line per seed and effect."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--effect-size", type=float, default=1.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-specification"))
    args = parser.parse_args()
    print("seed | effect | intensity same sign (sign) | intensity joint p | map joint p | seconds")
    for seed in args.seeds:
        for effect in (args.effect_size, 0.0):
            started = time.perf_counter()
            numbers = run(seed, effect, args.workdir)
            print(f"{seed} | {effect:g} | {numbers['same_sign']:.2f} ({numbers['sign']:+d}) | "
                  f"{numbers['p_intensity']:.3f} | {numbers['p_map']:.3f} | {time.perf_counter() - started:.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
