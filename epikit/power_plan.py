"""``epikit power``: plan images and replicates from a pilot run folder -> ``power.csv``, ``power.png``.

:func:`plan_power` reads the pilot's ``cells.parquet`` (any run folder after extraction),
estimates the feature's variance components (:mod:`epikit.analysis.power`), simulates the
power of the design-unit test over the grid (or the effect detectable at the target power)
and writes the table and a figure into the run folder, and the plan into ``metrics.json``
under ``power``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from epikit.analysis.power import recommend, simulate_power, variance_components
from epikit.errors import InputError
from epikit.io.store import atomic_path, write_csv
from epikit.options import PowerOptions
from epikit.runfolder.layout import CELLS, POWER_FIGURE, POWER_TABLE
from epikit.runfolder.metrics import update_metrics


def plan_power(run_dir: str | Path, options: PowerOptions = PowerOptions()) -> dict[str, Any]:
    """Variance components, power grid and recommendation for ``options.feature``; writes the artefacts."""
    run_dir = Path(run_dir)
    path = run_dir / CELLS
    if not path.is_file():
        raise InputError(f"{path}: not found; give a pilot run folder after `epikit extract` (or `epikit run`)")
    started = time.perf_counter()
    cells = pd.read_parquet(path)
    components = variance_components(cells, options.feature)
    table = simulate_power(components, options.effect, list(options.replicates), list(options.images),
                           alpha=options.alpha, target=options.power, n_simulations=options.simulations,
                           min_units=options.min_units, seed=options.seed)
    write_csv(table, run_dir / POWER_TABLE)
    _figure(table, options, run_dir / POWER_FIGURE)
    plan = {
        "feature": options.feature, "effect": options.effect, "alpha": options.alpha, "target_power": options.power,
        "simulations": options.simulations, "min_units": options.min_units, "components": components.to_dict(),
        "assumptions": [] if components.replicate is not None else [
            "the pilot has one replicate per condition: between-replicate variance assumed 0 (optimistic)"],
        "recommendation": recommend(table, options.power), "seconds": round(time.perf_counter() - started, 2),
    }
    update_metrics(run_dir, "power", plan)
    return {**plan, "table": table, "paths": [str(run_dir / POWER_TABLE), str(run_dir / POWER_FIGURE)]}


def _figure(table: pd.DataFrame, options: PowerOptions, path: Path) -> None:
    """Power (or detectable effect) against images per condition, one line per replicate count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = "power" if "power" in table else "detectable_effect"
    figure, axes = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for replicates, block in table.groupby("replicates"):
        axes.plot(block["images_per_condition"], block[column], marker="o",
                  label=f"{replicates} replicate{'s' if replicates > 1 else ''} ({block['unit'].iloc[0]} unit)")
    if column == "power":
        axes.axhline(options.power, color="grey", linestyle="--", linewidth=1)
        axes.set_ylim(0, 1)
        axes.set_title(f"{options.feature}: power to detect {options.effect:g}", fontsize=9)
    else:
        axes.set_title(f"{options.feature}: effect detectable at {options.power:.0%} power", fontsize=9)
    axes.set_xlabel("images per condition")
    axes.set_ylabel(column.replace("_", " "))
    axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
