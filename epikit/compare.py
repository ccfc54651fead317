"""``epikit compare``: the same study over a grid of segmenters x classifiers x explainers.

Answers "does the biomarker conclusion survive a change of method?". Every combination is an
ordinary run folder under ``OUT/runs/``, made with the same configuration, seed and therefore
the same grouped splits. Work is shared where the grid allows: one segmentation + extraction
per segmenter and one training per (segmenter, classifier) pair, kept in ``OUT/shared/`` and
hard-linked into the run folders (every epikit writer replaces files by rename, so a shared
file is never modified in place). ``comparison.csv`` has one row per combination.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from epikit.config import merge_config
from epikit.errors import ConfigError
from epikit.io import read_json, write_csv
from epikit.pipeline import run_pipeline
from epikit.runfolder import layout
from epikit.runfolder.metrics import read_metrics

COMPARISON_FILE = "comparison.csv"


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


def _combination_name(*names: str) -> str:
    return "__".join(names)


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


def _row(run_dir: Path, names: dict[str, str], ground_truth: Path | None) -> dict[str, Any]:
    metrics = read_metrics(run_dir)
    manifest = read_json(run_dir / layout.MANIFEST, default={})
    classification = metrics.get("classification", {})
    segmentation = metrics.get("segmentation", {})
    faithfulness = (metrics.get("trust", {}).get("faithfulness", {})
                    .get(names["explainer"], {}))
    finding = _top_finding(metrics)
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
    }
    for stage, seconds in manifest.get("stage_seconds", {}).items():
        row[f"seconds_{stage}"] = seconds
    return row


def _split_names(names: list[str] | str, what: str) -> list[str]:
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise ConfigError(f"compare needs at least one {what}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{what}s listed twice: {', '.join(items)}")
    return items


def compare_methods(
    config: dict[str, Any],
    out: str | Path,
    segmenters: list[str] | str,
    classifiers: list[str] | str,
    explainers: list[str] | str,
    *,
    ground_truth: str | Path | None = None,
    progress: bool = True,
    executor: Any = None,
) -> pd.DataFrame:
    """Run every combination of the three lists on ``config``'s input; write the comparison.

    Returns the comparison table (also written to ``out/comparison.csv``) with an ``agrees``
    column: whether the combination's top finding (source, channel, region, direction)
    matches the most common top finding of the grid. ``executor`` (see
    :func:`epikit.distributed.get_executor`) runs the per-image and per-chunk work.
    """
    from epikit.registry import get_entry

    out = Path(out)
    grid = {"segmenter": _split_names(segmenters, "segmenter"),
            "classifier": _split_names(classifiers, "classifier"),
            "explainer": _split_names(explainers, "explainer")}
    for kind, names in grid.items():
        for name in names:
            get_entry(kind, name)  # unknown names fail before any work
    truth = Path(ground_truth) if ground_truth else None
    rows = []
    for segmenter in grid["segmenter"]:
        seg_config = merge_config(config, {"segment": {"segmenter": segmenter}})
        seg_dir = out / "shared" / segmenter
        run_pipeline(seg_config, seg_dir, progress=progress, stop_after="extract", executor=executor)
        for classifier in grid["classifier"]:
            clf_config = merge_config(seg_config, {"train": {"classifier": classifier}})
            clf_dir = out / "shared" / _combination_name(segmenter, classifier)
            _seeded_from(seg_dir, clf_dir)
            run_pipeline(clf_config, clf_dir, progress=progress, stop_after="train", executor=executor)
            for explainer in grid["explainer"]:
                run_config = merge_config(clf_config, {"explain": {"explainer": explainer}})
                run_dir = out / "runs" / _combination_name(segmenter, classifier, explainer)
                _seeded_from(clf_dir, run_dir)
                run_pipeline(run_config, run_dir, progress=progress, executor=executor)
                names = {"segmenter": segmenter, "classifier": classifier, "explainer": explainer}
                rows.append(_row(run_dir, names, truth))
    table = pd.DataFrame(rows)
    keys = Counter(k for k in table["finding_key"] if k)
    consensus = keys.most_common(1)[0][0] if keys else ""
    table["agrees"] = [bool(consensus) and key == consensus for key in table["finding_key"]]
    write_csv(table, out / COMPARISON_FILE)
    from epikit.report.comparison import build_comparison_report

    build_comparison_report(out, table, consensus)
    return table

