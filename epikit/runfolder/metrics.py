"""``metrics.json``: one section per stage, each replaced atomically by the stage that owns it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from epikit.io.store import read_json, write_json
from epikit.runfolder.layout import METRICS


def read_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """All sections of ``run_dir/metrics.json`` (empty when it does not exist)."""
    return read_json(Path(run_dir) / METRICS, default={}) or {}


def update_metrics(run_dir: str | os.PathLike[str], key: str, value: Any) -> dict[str, Any]:
    """Set ``metrics[key] = value`` in ``run_dir/metrics.json`` atomically; return all metrics."""
    metrics = read_metrics(run_dir)
    metrics[key] = value
    write_json(Path(run_dir) / METRICS, metrics)
    return metrics
