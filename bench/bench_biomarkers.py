"""End to end on simulated data: does the biomarker stage find the planted effect, and only it?

For each planted effect (``periphery``: H3K27ac moves to the nuclear rim in VPA;
``interior``: to the centre; ``none``), simulate fields, cut nuclei out with their
ground-truth masks, cross-validate ``resnet10`` (field-grouped folds), explain the correctly
classified out-of-fold cells with Score-CAM, and run the biomarker stage with every trust
check. Prints and saves (``--out``) per effect: classifier accuracy, the ranked findings with
their localisation and flags, the number of image- and cell-level rows with q < 0.05,
channel attribution, faithfulness, sanity and the mask-edge control, and stage timings.

Expected: periphery -> top finding rim-enriched in vpa (q < 0.05, image level) and
H3K27ac first in channel attribution; interior -> centre-enriched; none -> no image-level
finding. Run: ``python bench/bench_biomarkers.py --effects periphery interior none``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def run_effect(effect: str, root: Path, args: argparse.Namespace) -> dict:
    """Simulate -> extract -> train -> explain -> biomarkers for one planted effect."""
    from epikit.biomarker_stage import biomarker_run
    from epikit.explanation import explain_run
    from epikit.extraction import extract_cells
    from epikit.io import discover_images, read_json
    from epikit.simulate import simulate_dataset
    from epikit.training.stage import train_run

    shutil.rmtree(root, ignore_errors=True)
    seconds = {}
    start = time.perf_counter()
    simulate_dataset(root / "input", n_fields=args.fields, size=args.size, effect=effect,
                     effect_size=args.effect_size, seed=args.seed)
    run = root / "run"
    run.mkdir(parents=True)
    shutil.copytree(root / "input" / "masks", run / "masks")
    extract_cells(discover_images(root / "input" / "images"), run / "masks", run, crop_size=args.crop)
    seconds["simulate+extract"] = time.perf_counter() - start
    start = time.perf_counter()
    train_run(run, classifier=args.classifier, folds=args.folds, epochs=args.epochs, progress=False,
              seed=args.seed)
    seconds["train"] = time.perf_counter() - start
    start = time.perf_counter()
    explained = explain_run(run, args.explainer, cells="correct", max_cells=args.max_cells,
                            seed=args.seed, progress=False)
    seconds["explain"] = time.perf_counter() - start
    start = time.perf_counter()
    biomarker_run(run, trust=args.trust, seed=args.seed, control_epochs=args.control_epochs,
                  trust_cells=args.trust_cells)
    seconds["biomarkers"] = time.perf_counter() - start
    metrics = read_json(run / "metrics.json")
    import pandas as pd

    table = pd.read_csv(run / "biomarkers.csv")
    significant = table[table["q_value"] < 0.05]
    trust = metrics.get("trust", {})
    return {
        "effect": effect,
        "cells": metrics["extraction"]["n_cells"],
        "accuracy": metrics["classification"]["accuracy"],
        "image_accuracy": (metrics["classification"].get("image_level") or {}).get("mean_probability_accuracy"),
        "explained": explained["n_cells"],
        "explain_seconds_per_cell": explained["seconds_per_cell"],
        "findings": [{k: f.get(k) for k in ("text", "localisation", "source", "channel", "region", "q_value")}
                     | {"flags": f.get("trust", {}).get("flags")} for f in metrics["findings"][:5]],
        "n_significant": {unit: int((significant["unit"] == unit).sum()) for unit in ("image", "cell")},
        "n_significant_maps": {unit: int(((significant["unit"] == unit) & (significant["source"] == "map")).sum())
                               for unit in ("image", "cell")},
        "channel_attribution": metrics.get("channel_attribution"),
        "faithfulness": {name: {k: round(v, 4) for k, v in values.items() if k.endswith("_auc")}
                         for name, values in trust.get("faithfulness", {}).items()},
        "sanity": trust.get("sanity"),
        "mask_control": {"accuracy": trust.get("mask_control", {}).get("accuracy"),
                         "rows": trust.get("mask_control", {}).get("rows")},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def main() -> None:
    """Parse arguments, run each effect, print a summary and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effects", nargs="+", default=["periphery", "interior", "none"])
    parser.add_argument("--fields", type=int, default=10, help="Fields per condition.")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--effect-size", type=float, default=0.5)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--classifier", default="resnet10")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--explainer", default="scorecam")
    parser.add_argument("--max-cells", type=int, default=60)
    parser.add_argument("--trust", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--trust-cells", type=int, default=24)
    parser.add_argument("--control-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/epikit-bench-biomarkers"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for effect in args.effects:
        result = run_effect(effect, args.workdir / effect, args)
        results.append(result)
        print(json.dumps(result, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
