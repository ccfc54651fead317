"""Names of every artefact in a run folder, relative to the run folder (the one place they are spelled).

The run-folder contract (``DESIGN.md``, README "The run folder")::

    manifest.json  config.toml  masks/  segmentation.csv/.json  cells.parquet  crops.zarr
    model/  maps.zarr  biomarkers.csv  condition_tests.csv  mixed_models.csv  profiles.parquet
    profile_curves.csv  metrics.json  report.html  figures/  power.csv  power.png
    .epikit/       stages.json and the resume scratch of each stage
    demo_input/    the simulated input of a demo run
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
CONFIG = "config.toml"
MASKS = "masks"
SEGMENTATION_TABLE = "segmentation.csv"
#: The settings the masks were made with (so a resumed segmentation never mixes settings).
SEGMENTATION_RECORD = "segmentation.json"
CELLS = "cells.parquet"
CROPS = "crops.zarr"
MODEL = "model"
TRAINING_INFO = "training.json"  # inside MODEL
MAPS = "maps.zarr"
BIOMARKERS = "biomarkers.csv"
#: Radial profile of every cell (per channel / map view, relative and micrometre bins).
PROFILES = "profiles.parquet"
#: Per-condition radial curves and difference curves with their 95% bands.
PROFILE_CURVES = "profile_curves.csv"
#: Tests across three or more conditions and the dose trend (epikit.analysis.multigroup).
CONDITION_TESTS = "condition_tests.csv"
#: Linear mixed models per quantity (``-p biomarkers.model=mixed``; epikit.analysis.mixed).
MIXED_MODELS = "mixed_models.csv"
#: The power plan of ``epikit power`` (epikit.analysis.power): table and figure.
POWER_TABLE = "power.csv"
POWER_FIGURE = "power.png"
METRICS = "metrics.json"
REPORT = "report.html"
FIGURES = "figures"
DEMO_INPUT = "demo_input"

# The comparison folder of ``epikit compare`` (beside its runs/ and shared/ run folders).
#: One row per specification: scores, findings, the compared feature's effects and intervals.
COMPARISON_TABLE = "comparison.csv"
#: The intensity and map specification curves with their summaries and joint tests.
SPECIFICATION_CURVE = "specification_curve.json"
#: Runs differing only in the explainer: same top map finding? maps' rank correlation per cell.
EXPLAINER_AGREEMENT = "explainer_agreement.csv"

#: Hidden folder for bookkeeping and resume scratch.
STATE_DIR = Path(".epikit")
#: Stage fingerprints of ``epikit run``.
STAGES_FILE = STATE_DIR / "stages.json"
#: The resumable work scratch, one folder per stage and settings key (epikit.runfolder.scratch).
SCRATCH_DIR = STATE_DIR / "scratch"

#: What each stage writes, its scratch included (removed when ``epikit run`` invalidates the stage).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "segment": (MASKS, SEGMENTATION_TABLE, SEGMENTATION_RECORD),
    "extract": (CROPS, CELLS, (SCRATCH_DIR / "extract").as_posix()),
    "train": (MODEL, (SCRATCH_DIR / "train").as_posix()),
    "explain": (MAPS, (SCRATCH_DIR / "explain").as_posix()),
    "biomarkers": (BIOMARKERS, CONDITION_TESTS, MIXED_MODELS, PROFILES, PROFILE_CURVES),
    "report": (REPORT, FIGURES),
}
