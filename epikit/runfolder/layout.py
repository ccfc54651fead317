"""Names of every artefact in a run folder, relative to the run folder (the one place they are spelled).

The run-folder contract (``DESIGN.md``, README "The run folder")::

    manifest.json  config.toml  masks/  segmentation.csv/.json  cells.parquet  crops.zarr
    model/  maps.zarr  biomarkers.csv  metrics.json  report.html  figures/
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
METRICS = "metrics.json"
REPORT = "report.html"
FIGURES = "figures"
DEMO_INPUT = "demo_input"

#: Hidden folder for bookkeeping and resume scratch.
STATE_DIR = Path(".epikit")
#: Stage fingerprints of ``epikit run``.
STAGES_FILE = STATE_DIR / "stages.json"
#: Working store of an unfinished extraction.
EXTRACT_SCRATCH = STATE_DIR / "extract"
#: Finished folds of an unfinished training, one folder per view.
TRAIN_SCRATCH = STATE_DIR / "train_folds"
#: Finished chunks of an unfinished explanation, one folder per settings hash.
EXPLAIN_SCRATCH = STATE_DIR / "explain"

#: What each stage writes (removed when ``epikit run`` invalidates the stage).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "segment": (MASKS, SEGMENTATION_TABLE, SEGMENTATION_RECORD),
    "extract": (CROPS, CELLS, EXTRACT_SCRATCH.as_posix()),
    "train": (MODEL,),
    "explain": (MAPS,),
    "biomarkers": (BIOMARKERS,),
    "report": (REPORT, FIGURES),
}
