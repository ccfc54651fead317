"""False positives of the biomarker stage on null data sets, under the default and the study's target policy.

Each data set is simulated with no planted effect (``--effect none``) but with per-field
brightness differences (``field_brightness_sd``, a batch effect), and analysed by
``run_pipeline`` with the default configuration (segmentation, extraction, training,
explanation, biomarkers; trust checks and the report are off, they change no row). A data set
is a false positive when any image-level row of ``biomarkers.csv`` (image or map source) has
q < 0.05. Each set is then explained again under the study's policy (``target=own``,
``cells=correct``; the run resumes, so only explain and biomarkers run again) and counted
the same way. The goal for the default policy: at most 1 of 20.

Full benchmark (an idle machine; about 2-3 minutes per data set on 2 CPU cores):
``python bench/bench_false_positives.py --n 20 --out fp.json``. A quick check of the script:
``python bench/bench_false_positives.py --n 4 --tiny`` (cnn, Grad-CAM, watershed, fewer fields).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

#: The study's target policy (epikit.analysis.targets), next to the default.
POLICIES: dict[str, dict[str, Any]] = {
    "default (contrast, all cells)": {},
    "study (own, correct cells)": {"target": "own", "cells": "correct"},
}
#: Cheap settings for a quick check of the script (not the benchmark's numbers).
TINY: dict[str, Any] = {
    "segment": {"segmenter": "watershed"},
    "extract": {"crop_size": 32},
    "train": {"classifier": "cnn", "epochs": 8, "folds": 3},
    "explain": {"explainer": "gradcam"},
}


def false_positives(table: Any, alpha: float = 0.05) -> dict[str, Any]:
    """Image-level rows with q < ``alpha``, by source, and the smallest q of each source."""
    rows = table[table["unit"] == "image"]
    return {source: {"n_significant": int((part["q_value"] < alpha).sum()),
                     "min_q": round(float(part["q_value"].min()), 4)}
            for source, part in rows.groupby("source")}


def one_set(number: int, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Simulate null set ``number`` and count its significant rows under each policy."""
    import pandas as pd

    from epikit.config import default_config, merge_config
    from epikit.io import read_json
    from epikit.pipeline import run_pipeline
    from epikit.simulate import simulate_dataset

    seed = args.seed + number
    data, run = root / f"set_{number:02d}", root / f"run_{number:02d}"
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    simulate_dataset(data, n_fields=args.fields, size=args.size, effect="none", seed=seed,
                     field_brightness_sd=args.brightness_sd)
    base = {"input": str(data / "images"), "seed": seed, "biomarkers": {"trust": False},
            "report": {"enabled": False}}
    if args.tiny:
        base = {**TINY, **base}
    result: dict[str, Any] = {"set": number, "seed": seed}
    for name, explain in POLICIES.items():
        config = merge_config(default_config(), {**base, "explain": {**base.get("explain", {}), **explain}})
        started = time.perf_counter()
        run_pipeline(config, run, progress=False)
        table = pd.read_csv(run / "biomarkers.csv")
        counts = false_positives(table)
        result[name] = {
            "false_positive": any(c["n_significant"] for c in counts.values()),
            "by_source": counts,
            "balanced_accuracy": read_json(run / "metrics.json")["classification"].get("balanced_accuracy"),
            "seconds": round(time.perf_counter() - started, 1),
        }
    if not args.keep:
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)
    return result


def main() -> None:
    """Run ``--n`` null data sets and print the false-positive count per policy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of null data sets")
    parser.add_argument("--fields", type=int, default=10, help="fields per condition")
    parser.add_argument("--size", type=int, default=256, help="field size in pixels")
    parser.add_argument("--brightness-sd", type=float, default=0.5, help="per-field brightness spread")
    parser.add_argument("--seed", type=int, default=100, help="seed of the first data set")
    parser.add_argument("--tiny", action="store_true", help="cheap settings (a check of the script)")
    parser.add_argument("--root", type=Path, default=Path("bench_fp"), help="scratch folder")
    parser.add_argument("--keep", action="store_true", help="keep the data sets and run folders")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args()
    results = []
    for number in range(args.n):
        results.append(one_set(number, args.root, args))
        print(json.dumps(results[-1]), flush=True)
    summary = {name: sum(r[name]["false_positive"] for r in results) for name in POLICIES}
    for name, count in summary.items():
        print(f"{name}: {count} of {len(results)} null data sets with an image-level row at q < 0.05")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "results": results, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
