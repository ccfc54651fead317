"""epikit: image-based epigenetic profiling of cell nuclei.

Public API (importing epikit does not import torch)::

    import epikit
    epikit.list_segmenters()
    seg = epikit.get_segmenter("watershed")
    epikit.describe("classifier", "resnet10")
    epikit.profiles("run", level="condition")   # radial profiles of a run folder, tidy

Plugins mark their hook functions with :data:`hookimpl`; see :mod:`epikit.hookspecs`.
"""

from __future__ import annotations

import importlib
from typing import Any

from epikit.errors import EpikitError
from epikit.hookspecs import hookimpl
from epikit.registry import (
    describe,
    get_classifier,
    get_explainer,
    get_segmenter,
    list_classifiers,
    list_explainers,
    list_segmenters,
)

__all__ = [
    "EpikitError",
    "describe",
    "get_classifier",
    "get_explainer",
    "get_segmenter",
    "hookimpl",
    "list_classifiers",
    "list_explainers",
    "list_segmenters",
]

# Heavy public names, imported on first access so `import epikit` stays light.
_LAZY: dict[str, str] = {
    "CellDataset": "epikit.runfolder.cells:CellDataset",
    "profiles": "epikit.runfolder.profiles:profiles",
    "run_pipeline": "epikit.pipeline:run_pipeline",
    "simulate_dataset": "epikit.simulate:simulate_dataset",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, _, attribute = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    raise AttributeError(f"module 'epikit' has no attribute {name!r}")
