"""``epikit compare``: the same study under every defensible analysis choice, as a specification curve.

Answers "does the conclusion survive a change of method?". The grid (:mod:`epikit.compare.grid`)
spans the plugins (segmenter, classifier, explainer) and analysis choices (crop size and
scaling, explanation target policy, shell definition); every specification is an ordinary run
folder under ``OUT/runs/``, made with the same configuration, seed and therefore the same
grouped splits. Work is shared wherever a choice cannot affect it: the stages before a varying
choice run once per combination of the choices made so far in ``OUT/shared/`` and are
hard-linked into the later folders (every epikit writer replaces files by rename, so a shared
file is never modified in place); a run folder starts from its previous sibling (the same
shared folder, other final choices), so the stage fingerprints redo only what differs and the
biomarkers stage reuses its kept trust measurements across shell definitions. The cost is printed before anything runs
(:mod:`epikit.compare.cost`). ``comparison.csv`` has one row per specification with its top
(map) finding and the effect and image-level 95% interval of one fixed feature for intensity
and for maps; ``specification_curve.json`` the two curves with their joint permutation tests
(:mod:`epikit.compare.curve`); ``explainer_agreement.csv`` how runs differing only in the
explainer agree, by finding and cell by cell.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from epikit.compare.cost import CostEstimate, estimate_cost
from epikit.compare.curve import explainer_agreement, specification_curves
from epikit.compare.grid import Grid
from epikit.compare.measures import RunValues, parse_feature, run_values, top_map_finding
from epikit.errors import ConfigError
from epikit.io import find_images, read_json, write_csv, write_json
from epikit.options import CompareOptions, ReadOptions, options_from_table
from epikit.pipeline import run_pipeline
from epikit.runfolder import layout
from epikit.runfolder.cells import CellDataset
from epikit.runfolder.metrics import read_metrics

COMPARISON_FILE = layout.COMPARISON_TABLE


def _link_tree(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with hard links (plain copies across filesystems)."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, copy_function=link)


def _seeded_from(source: Path, target: Path) -> None:
    """Start ``target`` from the finished stages of ``source`` unless it already has state."""
    if not (target / layout.STAGES_FILE).exists():
        _link_tree(source, target)


def _segmentation_ap(run_dir: Path, ground_truth: Path | None) -> dict[str, Any]:
    """AP of the run's masks against ``ground_truth`` (or the demo's own ground truth)."""
    from epikit.analysis.segmentation_metrics import evaluate_folders

    truth = ground_truth or (run_dir / layout.DEMO_INPUT / layout.MASKS)
    if not truth.is_dir():
        return {}
    _, overall = evaluate_folders(run_dir / layout.MASKS, truth)
    return {"seg_ap50": overall.get("ap_50"), "seg_mean_ap": overall.get("mean_ap")}


def _top_finding(metrics: dict[str, Any]) -> dict[str, Any]:
    findings = metrics.get("findings") or []
    return findings[0] if findings and isinstance(findings[0], dict) else {}


def _finding_key(finding: dict[str, Any]) -> str:
    """The conclusion two combinations must share to agree: condition and localisation."""
    if not finding:
        return ""
    return f"{finding.get('condition', '')}: {finding.get('localisation', '')}"


def _row(run_dir: Path, names: dict[str, Any], ground_truth: Path | None) -> dict[str, Any]:
    metrics = read_metrics(run_dir)
    manifest = read_json(run_dir / layout.MANIFEST, default={})
    classification = metrics.get("classification", {})
    segmentation = metrics.get("segmentation", {})
    faithfulness = (metrics.get("trust", {}).get("faithfulness", {})
                    .get(names["explainer"], {}))
    finding, map_finding = _top_finding(metrics), top_map_finding(run_dir)
    row: dict[str, Any] = {
        **names,
        "run": str(run_dir),
        "images": segmentation.get("images"),
        "nuclei": segmentation.get("nuclei"),
        **_segmentation_ap(run_dir, ground_truth),
        "cells": metrics.get("extraction", {}).get("n_cells"),
        "accuracy": classification.get("accuracy"),
        "balanced_accuracy": classification.get("balanced_accuracy"),
        "roc_auc": classification.get("roc_auc"),
        "deletion_auc": faithfulness.get("deletion_auc"),
        "insertion_auc": faithfulness.get("insertion_auc"),
        "top_finding": finding.get("text", ""),
        "top_finding_q": finding.get("q_value"),
        "finding_key": _finding_key(finding),
        "top_map_finding": map_finding.get("text", ""),
        "top_map_finding_q": map_finding.get("q_value"),
        "map_finding_key": _finding_key(map_finding),
    }
    for stage, seconds in manifest.get("stage_seconds", {}).items():
        row[f"seconds_{stage}"] = seconds
    return row



def _input_images(config: dict[str, Any]) -> int:
    """How many images each specification reads (for the cost estimate)."""
    if not config["input"]:
        return 2 * int(config["demo"]["fields"])
    records, _ = find_images(Path(config["input"]), config["channels"] or None, skip_bad=True,
                             reading=options_from_table(ReadOptions, config["read"]),
                             nuclear_channel=config["segment"]["nuclear_channel"])
    return len(records)


def plan_comparison(config: dict[str, Any], out: str | Path, choices: dict[str, Any],
                    options: CompareOptions = CompareOptions()) -> tuple[Grid, CostEstimate]:
    """The grid of ``choices`` (axis name -> values, see :data:`epikit.compare.grid.AXES`) and its cost.

    Raises :class:`ConfigError` for an unknown name or value, or a grid larger than
    ``options.max_runs``, before any work.
    """
    grid = Grid(config, choices)
    if len(grid) > options.max_runs:
        sizes = " x ".join(f"{len(grid.values[a.name])} {a.name}" for a in grid.varying())
        raise ConfigError(f"the grid has {len(grid)} runs ({sizes}), more than --max-runs {options.max_runs}; "
                          "drop some choices or raise --max-runs")
    return grid, estimate_cost(grid, Path(out), _input_images(config))


def compare_methods(
    config: dict[str, Any],
    out: str | Path,
    segmenters: list[str] | str | None = None,
    classifiers: list[str] | str | None = None,
    explainers: list[str] | str | None = None,
    *,
    choices: dict[str, Any] | None = None,
    options: CompareOptions = CompareOptions(),
    ground_truth: str | Path | None = None,
    progress: bool = True,
    executor: Any = None,
    announce: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Run every specification of the grid on ``config``'s input; write the comparison.

    The grid: the three plugin lists plus ``choices`` (``crop_size``, ``scale``, ``target``,
    ``shell``: lists of values; a missing axis keeps the configuration's value). ``announce``
    receives the cost estimate before any run starts. Returns the comparison table (also
    ``out/comparison.csv``): per specification its scores, top finding and top map finding,
    ``agrees`` (top finding equals the grid's most common one), ``explainers_agree`` (the runs
    differing only in the explainer share the top map finding, or its absence, and the sign of
    the map feature), and ``intensity_effect/low/high`` and ``map_effect/low/high`` of the compared
    feature (``options.feature``). Also writes ``specification_curve.json``,
    ``explainer_agreement.csv`` and ``comparison.html``. ``executor`` (see
    :func:`epikit.distributed.get_executor`) runs the per-image and per-chunk work.
    """
    out = Path(out)
    axes = {"segmenter": segmenters, "classifier": classifiers, "explainer": explainers, **(choices or {})}
    grid, cost = plan_comparison(config, out, axes, options)
    if announce is not None:
        announce(cost.describe())
    truth = Path(ground_truth) if ground_truth else None
    rows, values, done = [], [], set()
    latest: dict[Path, Path] = {}  # per shared folder, the last run folder started from it
    for spec in grid.specifications():
        parent = None
        for folder, level in grid.folders(out, spec):
            if folder not in done:
                if parent is not None:
                    _seeded_from(parent, folder)
                run_pipeline(grid.spec_config(spec, level.axes), folder, progress=progress,
                             stop_after=level.stop_after, executor=executor)
                done.add(folder)
            parent = folder
        run_dir = out / "runs" / grid.name(spec)
        if parent is not None:
            # From the previous sibling, if any: it differs only in the final stages' choices, so
            # the pipeline redoes those, and the biomarkers stage finds its kept trust measurements.
            _seeded_from(latest.get(parent, parent), run_dir)
            latest[parent] = run_dir
        run_config = grid.spec_config(spec)
        run_pipeline(run_config, run_dir, progress=progress, executor=executor)
        rows.append({"name": grid.name(spec), **spec, **_row(run_dir, spec, truth)})
        values.append(_values(run_dir, run_config, options))
    table = pd.DataFrame(rows)
    keys = Counter(k for k in table["finding_key"] if k)
    consensus = keys.most_common(1)[0][0] if keys else ""
    table["agrees"] = [bool(consensus) and key == consensus for key in table["finding_key"]]
    others = sorted(set(values[0].conditions) - {values[0].reference})
    if options.condition and options.condition not in others:
        raise ConfigError(f"--condition {options.condition!r} is not a non-reference condition of the input; "
                          f"choose one of: {', '.join(others)} (the finished runs are reused)")
    condition = options.condition or others[0]
    table, curves = specification_curves(table, values, condition, options, seed=int(config["seed"]))
    table["explainers_agree"], pairs = explainer_agreement(table)
    curves.update(feature=str(values[0].feature), varying=[a.name for a in grid.varying()],
                  cost={"runs": cost.runs, "executions": cost.executions,
                        "estimated_seconds": round(cost.seconds, 1)})
    write_csv(table, out / COMPARISON_FILE)
    write_csv(pairs, out / layout.EXPLAINER_AGREEMENT)
    write_json(out / layout.SPECIFICATION_CURVE, curves)
    from epikit.report.comparison import build_comparison_report

    build_comparison_report(out, table, consensus, curves, pairs)
    return table


def _values(run_dir: Path, config: dict[str, Any], options: CompareOptions) -> RunValues:
    """The compared feature's per-image values in a finished run folder."""
    dataset = CellDataset(run_dir)
    feature = parse_feature(options.feature, dataset.channel_names, config["segment"]["nuclear_channel"],
                            int(dataset.attrs.get("n_shells", 5)))
    return run_values(run_dir, feature, options.condition)
