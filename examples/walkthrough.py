"""A tour of epikit's Python API: simulate -> run -> read the run folder -> a custom plot.

    python examples/walkthrough.py                 # demo-sized, a few minutes on 2 cores
    python examples/walkthrough.py --tiny          # seconds-sized settings (used by the tests)

Everything the command line does is a library call; this script uses the same functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import epikit  # noqa: E402
from epikit.config import default_config, merge_config  # noqa: E402
from epikit.runfolder.maps import read_maps  # noqa: E402
from epikit.pipeline import run_pipeline  # noqa: E402
from epikit.simulate import simulate_dataset  # noqa: E402

TINY = {
    "segment": {"segmenter": "watershed"},
    "train": {"classifier": "cnn", "folds": 2, "epochs": 3},
    "explain": {"explainer": "gradcam", "max_cells": 12},
    "biomarkers": {"trust": False},
}


def main(workdir: Path, tiny: bool) -> Path:
    """Run the walkthrough in ``workdir``; return the path of the custom figure."""
    # 1. Simulated input: two conditions, VPA nuclei carry more H3K27ac at their rim.
    data = simulate_dataset(workdir / "data", n_fields=6 if tiny else 10,
                            size=192 if tiny else 256, n_nuclei=(8, 12), seed=7, overwrite=True)

    # 2. The whole study in one call; `config` is what `epikit run` writes to config.toml.
    print("segmenters:", epikit.list_segmenters(), "explainers:", epikit.list_explainers())
    config = merge_config(default_config(), {"input": str(data / "images"), "seed": 7})
    if tiny:
        config = merge_config(config, TINY)
    run_dir = workdir / "run"
    run_pipeline(config, run_dir, progress=False)

    # 3. Read the results: one row per cell, the maps keyed by cell id, the biomarker table.
    cells = pd.read_parquet(run_dir / "cells.parquet")
    print(cells.groupby("condition")[["H3K27ac_shell_1_share", "correct"]].mean())
    maps = read_maps(run_dir)
    explained = cells.set_index("cell_id").loc[maps.cell_ids]
    biomarkers = pd.read_csv(run_dir / "biomarkers.csv")
    image_level = biomarkers[biomarkers["unit"] == "image"].sort_values("q_value")
    print(image_level[["source", "channel", "region", "effect", "q_value"]].head())

    # 4. A custom plot: mean explanation map per condition.
    conditions = sorted(explained["condition"].unique())
    figure, axes = plt.subplots(1, len(conditions), figsize=(3 * len(conditions), 3))
    for axis, condition in zip(np.atleast_1d(axes), conditions):
        rows = (explained["condition"] == condition).to_numpy()
        axis.imshow(maps.maps[rows].mean(axis=0), cmap="magma", vmin=0, vmax=1)
        axis.set_title(f"{condition} (n={rows.sum()})")
        axis.axis("off")
    target = workdir / "mean_maps.png"
    figure.savefig(target, dpi=100, bbox_inches="tight")
    plt.close(figure)
    print("figure:", target, "report:", run_dir / "report.html")
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("epikit-walkthrough"))
    parser.add_argument("--tiny", action="store_true", help="seconds-sized settings")
    arguments = parser.parse_args()
    main(arguments.workdir, arguments.tiny)
