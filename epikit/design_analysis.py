"""The biomarkers stage's design step: the unit of the tests, many conditions, doses, mixed models.

Called by :func:`epikit.biomarker_stage.biomarker_run` on its long table of shell shares
(one row per cell and quantity). :func:`analyse_design` reads the design from the cells
(``replicate``, ``group``, ``dose``; :mod:`epikit.analysis.design`), builds the
``biomarkers.csv`` table at the design unit with the lower levels for comparison, writes
``condition_tests.csv`` (the overall test across three or more conditions and, with doses,
the trend test and monotone fit; :mod:`epikit.analysis.multigroup`) and, with
``model="mixed"``, ``mixed_models.csv`` (:mod:`epikit.analysis.mixed`). An artefact the
settings no longer make is removed, so a run folder never shows a stale one.
:func:`design_findings` ranks the findings at the design unit and puts each one's unit,
effective n and (with mixed models) variance components and ICC next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epikit.analysis.biomarkers import KEYS, biomarker_table, plain, rank_findings
from epikit.analysis.design import Design, attach_design
from epikit.analysis.mixed import MODELS, mixed_table
from epikit.analysis.multigroup import OVERALL_STATISTICS, across_conditions
from epikit.analysis.stats import IMAGE_TESTS, choose_reference
from epikit.errors import ConfigError
from epikit.io.store import write_csv
from epikit.runfolder.layout import CONDITION_TESTS, MIXED_MODELS

#: Columns of a mixed-model row attached to a finding.
MIXED_FIELDS = ("coefficient", "std_error", "p_value", "var_replicate", "var_group", "var_image", "var_cell", "icc")


@dataclass
class DesignedAnalysis:
    """The biomarker table at the design unit, the design summary, and the mixed-model rows (or None)."""

    table: pd.DataFrame
    design: Design
    summary: dict[str, Any]
    mixed: pd.DataFrame | None


def check_design_options(unit_test: str, overall_test: str, model: str, min_units: int) -> None:
    """Raise a one-line :class:`ConfigError` for an unknown test or model, or ``min_units`` below 2."""
    if unit_test not in IMAGE_TESTS:
        raise ConfigError(f"biomarkers.unit_test {unit_test!r} is not one of: {', '.join(IMAGE_TESTS)}")
    if overall_test not in OVERALL_STATISTICS:
        raise ConfigError(f"biomarkers.overall_test {overall_test!r} is not one of: {', '.join(OVERALL_STATISTICS)}")
    if model not in MODELS:
        raise ConfigError(f"biomarkers.model {model!r} is not one of: {', '.join(MODELS)}")
    if isinstance(min_units, bool) or not isinstance(min_units, (int, np.integer)) or min_units < 2:
        raise ConfigError(f"biomarkers.min_units = {min_units!r} must be a whole number >= 2")


def _write_or_remove(frame: pd.DataFrame | None, path: Path) -> None:
    if frame is None:
        path.unlink(missing_ok=True)
    else:
        write_csv(frame, path)


def analyse_design(run_dir: str | Path, long: pd.DataFrame, cells: pd.DataFrame, design: Design, *,
                   reference: str | None, seed: int, alpha: float, image_test: str, unit_test: str,
                   overall_test: str, model: str, target: str = "contrast",
                   extra: pd.DataFrame | None = None) -> DesignedAnalysis:
    """Design-aware biomarker table, ``condition_tests.csv`` and ``mixed_models.csv`` (see the module).

    ``design``: :func:`epikit.analysis.design.describe_design` of ``cells`` (the stage computes it
    once, so the radial ``extra`` rows are tested at the same unit).

    Map rows are compared under the maps' target policy ``target`` (:func:`biomarker_table`);
    ``extra`` rows (radial intervals) join the q-value families.
    The tests across all conditions and the mixed models use the image rows only: maps of
    different conditions explain different classes under every policy but one fixed class,
    so pooling them across conditions would mix the target into the comparison.
    """
    run_dir = Path(run_dir)
    long = attach_design(long, cells)
    reference = choose_reference(long["condition"].astype(str).unique(), reference or None)
    table = biomarker_table(long, reference, image_test, seed, target, design=design, unit_test=unit_test,
                            extra=extra)
    images = long[long["source"] == "image"]
    across = across_conditions(images, KEYS, design, overall_test, seed=seed)
    _write_or_remove(across, run_dir / CONDITION_TESTS)
    mixed = mixed_table(images, KEYS, design, reference) if model == "mixed" else None
    _write_or_remove(mixed, run_dir / MIXED_MODELS)
    at_unit = table["role"] == "design"
    summary: dict[str, Any] = {
        **design.to_dict(),
        "test": unit_test if design.unit != "image" else image_test,
        "n_significant": int((at_unit & (table["q_value"] < alpha)).sum()),
        "n_significant_by_unit": {str(u): int(((table["unit"] == u) & (table["q_value"] < alpha)).sum())
                                  for u in table["unit"].unique()},
        "model": model,
    }
    if across is not None:
        summary["across_conditions"] = _across_summary(across, alpha)
    if model == "mixed" and mixed is None:
        summary["mixed_note"] = "no replicate or multi-image group level: nothing random to model"
    return DesignedAnalysis(table, design, summary, mixed)


def _across_summary(across: pd.DataFrame, alpha: float) -> dict[str, Any]:
    """Counts of significant overall and trend tests, and the strongest trend."""
    out: dict[str, Any] = {"statistic": str(across["overall_test"].iloc[0]),
                           "n_quantities": int(len(across)),
                           "n_significant_overall": int((across["overall_q"] < alpha).sum())}
    if "trend_q" in across:
        out["n_significant_trend"] = int((across["trend_q"] < alpha).sum())
        best = across.sort_values(["trend_q", "trend_p"], kind="mergesort").iloc[0]
        out["strongest_trend"] = {k: plain(best[k]) for k in (*KEYS, "trend_direction", "trend_tau", "trend_p",
                                                                "trend_q", "doses", "monotone_fit")}
    return out


def design_findings(designed: DesignedAnalysis, alpha: float, n_shells: int) -> list[dict[str, Any]]:
    """Findings at the design unit, each with ``effective_n`` and (mixed models) its ``mixed`` row."""
    found = rank_findings(designed.table, alpha, n_shells, unit=designed.design.unit)
    lookup: dict[tuple[Any, ...], dict[str, Any]] = {}
    if designed.mixed is not None:
        for record in designed.mixed.to_dict("records"):
            key = (*[record[k] for k in KEYS], record["condition"])
            lookup[key] = {k: plain(record[k]) for k in MIXED_FIELDS}
    for finding in found:
        finding["effective_n"] = {finding["condition"]: finding["n_condition"],
                                  finding["reference"]: finding["n_reference"]}
        mixed = lookup.get((*[finding[k] for k in KEYS], finding["condition"]))
        if mixed is not None:
            finding["mixed"] = mixed
    return found
