"""Validate `epikit power` on the simulator: does the planned design reach the planned power?

1. Pilot: simulate ``--pilot-replicates`` x ``--pilot-fields`` per condition (ctrl, vpa) with
   the replicate effect and the planted effect, extract cells on the ground-truth masks,
   estimate the variance components of H3K27ac rim_vs_centre.
2. Effect in feature units: a calibration study without replicate effect (``--calibration-fields``
   per condition) gives the mean image-level difference the planted effect makes.
3. Plan: simulated power over replicates x images per replicate; take the grid points whose
   planned power is closest to each ``--targets`` value.
4. Check: simulate ``--datasets`` new studies at each chosen point (fresh seeds), analyse each
   like the biomarkers stage (design unit; Student's t on replicate means) and count p < alpha.
5. Pilot size: ``--small-pilots`` typical pilots (3 replicates x 4 fields per condition) plan
   the same points; their spread shows how much a small pilot's components move the plan.

The main pilot is large (default 30 replicates x 2 fields) so that step 4 checks the
planner's simulation, not the luck of one pilot.

    nice python bench/bench_power.py --datasets 60
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from epikit.analysis.design import compare_design, describe_design
from epikit.analysis.power import feature_values, simulate_power, variance_components
from epikit.extraction import extract_cells
from epikit.io import discover_images
from epikit.simulate import simulate_dataset

FEATURE = "H3K27ac:rim_vs_centre"
FIELDS = dict(size=128, n_nuclei=(5, 7), radius=(10.0, 14.0))


def study_cells(root: Path, seed: int, replicates: int, fields: int, replicate_sd: float,
                effect_size: float) -> pd.DataFrame:
    """cells.parquet of a simulated study (ground-truth masks), as a table."""
    shutil.rmtree(root, ignore_errors=True)
    simulate_dataset(root / "input", n_fields=fields, replicates=replicates, replicate_sd=replicate_sd,
                     effect_size=effect_size, seed=seed, **FIELDS)
    run = root / "run"
    run.mkdir(parents=True)
    shutil.copytree(root / "input" / "masks", run / "masks")
    extract_cells(discover_images(root / "input" / "manifest.csv"), run / "masks", run, crop_size=16,
                  progress=False, features=True)
    cells = pd.read_parquet(run / "cells.parquet")
    shutil.rmtree(root, ignore_errors=True)
    return cells


def design_p(cells: pd.DataFrame) -> float:
    """p-value of vpa vs ctrl for the feature at the design unit, as the biomarkers stage tests it."""
    long = pd.DataFrame({"cell_id": cells["cell_id"], "image_id": cells["image_id"], "condition": cells["condition"],
                         "region": "rim_vs_centre", "value": feature_values(cells, FEATURE)})
    if "replicate" in cells:
        long["replicate"] = cells["replicate"].to_numpy()
    rows = compare_design(long, ["region"], describe_design(long), image_test="permutation", cell_level=False)
    return float(rows.loc[rows["role"] == "design", "p_value"].iloc[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pilot-replicates", type=int, default=30)
    parser.add_argument("--pilot-fields", type=int, default=2)
    parser.add_argument("--small-pilots", type=int, default=8)
    parser.add_argument("--calibration-fields", type=int, default=24)
    parser.add_argument("--replicate-sd", type=float, default=0.15)
    parser.add_argument("--effect-size", type=float, default=0.5)
    parser.add_argument("--targets", default="0.5,0.8")
    parser.add_argument("--datasets", type=int, default=60)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_power_"))
    pilot = study_cells(work / "pilot", 101, args.pilot_replicates, args.pilot_fields, args.replicate_sd,
                        args.effect_size)
    components = variance_components(pilot, FEATURE)
    calibration = study_cells(work / "calibration", 202, 1, args.calibration_fields, 0.0, args.effect_size)
    calibration["value"] = feature_values(calibration, FEATURE)
    per_image = calibration.groupby(["condition", "image_id"])["value"].mean()
    delta = float(per_image["vpa"].mean() - per_image["ctrl"].mean())
    plan = simulate_power(components, delta, [3, 4, 5, 6, 8], [1, 2, 3, 4], alpha=args.alpha,
                          n_simulations=4000)
    print(f"components {components.to_dict()}\neffect in feature units {delta:.4f}")
    results = []
    for target in (float(t) for t in args.targets.split(",")):
        point = plan.iloc[int(np.argmin(np.abs(plan["power"].to_numpy() - target)))]
        r, m = int(point["replicates"]), int(point["images_per_replicate"])
        p_values = [design_p(study_cells(work / "check", 1000 + k, r, m, args.replicate_sd, args.effect_size))
                    for k in range(args.datasets)]
        achieved = float(np.mean(np.array(p_values) < args.alpha))
        stderr = float(np.sqrt(achieved * (1 - achieved) / args.datasets))
        results.append({"target": target, "replicates": r, "images_per_replicate": m,
                        "planned_power": float(point["power"]), "achieved_power": achieved,
                        "achieved_stderr": stderr, "datasets": args.datasets})
        print(f"target {target:.2f}: {r} replicates x {m} images per condition -> planned "
              f"{point['power']:.3f}, achieved {achieved:.3f} +- {stderr:.3f} ({args.datasets} studies)")
    for result in results:
        result["small_pilot_plans"] = []
    for k in range(args.small_pilots):
        small = variance_components(study_cells(work / "small", 3000 + k, 3, 4, args.replicate_sd,
                                                args.effect_size), FEATURE)
        for result in results:
            again = simulate_power(small, delta, [result["replicates"]], [result["images_per_replicate"]],
                                   alpha=args.alpha, n_simulations=4000)
            result["small_pilot_plans"].append(float(again["power"].iloc[0]))
    for result in results:
        plans = np.array(result["small_pilot_plans"])
        if plans.size:
            print(f"{result['replicates']} x {result['images_per_replicate']}: planned from {plans.size} small "
                  f"pilots (3 x 4 fields): median {np.median(plans):.3f}, range {plans.min():.3f}-{plans.max():.3f}")
    shutil.rmtree(work, ignore_errors=True)
    summary = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "components": components.to_dict(), "effect_feature_units": delta, "results": results,
               "plan": plan.to_dict("records"), "seconds": round(time.perf_counter() - started, 1)}
    print(f"{summary['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
