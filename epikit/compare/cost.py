"""The cost of a comparison grid, printed before it runs: runs, shared stage executions, time.

A stage runs once per distinct combination of the choices made up to it (see
:mod:`epikit.compare.grid`), so sharing turns ``runs x stages`` executions into far fewer.
Each execution's time comes from timings measured in run folders already under the
comparison folder (an earlier or interrupted grid on the same input, matched on stage,
plugin and crop size), else from :data:`REFERENCE_SECONDS`, measured on the default demo and
scaled by the number of input images (and the crop area for training and explanation).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epikit.compare.grid import AXES, Grid
from epikit.config import PLUGIN_STAGES, STAGES
from epikit.io import read_json
from epikit.runfolder import layout

#: Seconds of one execution of each stage on the default demo (20 images of 256 x 256 px,
#: ~295 nuclei, 198 cells, 64-px crops, default options, trust checks on), measured in the
#: 2 x 2 x 2 demo grid of bench/README.md ("Comparison grids": one thread, nice'd, on 2 CPU
#: cores shared with other work at load 2-3); plugin stages per plugin (an unmeasured plugin
#: counts as the slowest measured one). The biomarkers stage per explainer (its trust checks
#: explain again with it), and ``"kept"``: reusing a sibling's trust measurements (another
#: shell definition) or running without trust checks.
REFERENCE_SECONDS: dict[tuple[str, str], float] = {
    ("segment", "watershed"): 0.8,
    ("segment", "maskrcnn"): 2.3,
    ("extract", ""): 1.1,
    ("train", "resnet10"): 91.0,
    ("explain", "scorecam"): 26.3,
    ("explain", "gradcam"): 1.1,
    ("biomarkers", "scorecam"): 94.0,
    ("biomarkers", "gradcam"): 50.0,
    ("biomarkers", "kept"): 0.8,
    ("report", ""): 2.9,
}
REFERENCE_IMAGES = 20
REFERENCE_CROP = 64
#: Stages whose time grows with the crop area.
CROP_STAGES = ("train", "explain")


@dataclass
class CostEstimate:
    """What a grid will cost: ``runs`` run folders, ``executions`` per stage, ``seconds`` in all."""

    runs: int
    executions: dict[str, int]
    seconds: float
    measured: int = 0
    referenced: int = 0
    per_stage: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """Two lines for the terminal: counts, then the time estimate and where it comes from."""
        counts = ", ".join(f"{stage} {n}x" for stage, n in self.executions.items())
        unshared = self.runs * len(self.executions)
        source = (f"{self.measured} from timings measured under this folder, {self.referenced} from the demo's "
                  "reference timings scaled to this input")
        return (f"grid: {self.runs} run(s); stage executions with sharing: {counts} "
                f"({sum(self.executions.values())} instead of {unshared})\n"
                f"estimated time: {self.seconds / 60:.1f} min ({source}, measured on 2 shared CPU cores)")


def _key(stage: str, choices: dict[str, Any]) -> tuple[str, str, int]:
    plugin = str(choices.get(PLUGIN_STAGES[stage], "")) if stage in PLUGIN_STAGES else ""
    crop = int(choices.get("crop_size", REFERENCE_CROP)) if stage in CROP_STAGES else 0
    return stage, plugin, crop


def measured_seconds(out: Path) -> dict[tuple[str, str, int], float]:
    """Mean seconds per (stage, plugin, crop size) over the run folders under ``out``."""
    found: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for manifest_path in sorted(out.glob(f"*/*/{layout.MANIFEST}")):
        manifest = read_json(manifest_path, default={})
        config = manifest.get("parameters") or {}
        try:
            choices = {a.name: config[a.stage][a.key] for a in AXES}
        except (KeyError, TypeError):
            continue
        for stage, seconds in (manifest.get("stage_seconds") or {}).items():
            if stage in STAGES and isinstance(seconds, (int, float)):
                found[_key(stage, choices)].append(float(seconds))
    return {key: sum(values) / len(values) for key, values in found.items()}


def estimate_cost(grid: Grid, out: Path, n_images: int) -> CostEstimate:
    """Runs, stage executions and estimated seconds of ``grid`` on ``n_images`` input images."""
    measured = measured_seconds(out)
    estimate = CostEstimate(runs=len(grid), executions={}, seconds=0.0)
    trust = bool(grid.config["biomarkers"].get("trust", True))
    for position, stage in enumerate(STAGES):
        upstream = [a for a in AXES if a.position <= position]
        combinations = list(itertools.product(*(grid.values[a.name] for a in upstream)))
        estimate.executions[stage] = len(combinations)
        total, explained = 0.0, set()
        for combination in combinations:
            key = _key(stage, dict(zip((a.name for a in upstream), combination)))
            if key in measured:
                total += measured[key]
                estimate.measured += 1
                continue
            reference_key = key[:2]
            if stage == "biomarkers":  # trust measured once per explanation, reused by its siblings
                maps = combination[:len([a for a in upstream if a.position < position])]
                first = trust and maps not in explained
                reference_key = (stage, str(dict(zip((a.name for a in upstream), combination))["explainer"])
                                 if first else "kept")
                explained.add(maps)
            reference = REFERENCE_SECONDS.get(reference_key) or max(
                (s for (name, kind), s in REFERENCE_SECONDS.items() if name == stage and kind != "kept"), default=0.0)
            crop_factor = (key[2] / REFERENCE_CROP) ** 2 if key[2] else 1.0
            total += reference * n_images / REFERENCE_IMAGES * crop_factor
            estimate.referenced += 1
        estimate.per_stage[stage] = total
        estimate.seconds += total
    return estimate
