"""Explanation maps of cells, each made by the fold model that did not train on it."""

from __future__ import annotations

from typing import Any

import numpy as np

from epikit.errors import DataError
from epikit.interfaces import optional_attribute


def explain_cells(
    models: dict[int, Any],
    crops: Any,
    folds: np.ndarray,
    targets: np.ndarray,
    explainer: Any,
    chunk: int = 64,
    progress: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Maps (N, S, S) float32 for ``crops`` (N, C, S, S), each by its fold's model.

    ``models`` maps fold -> model; ``crops`` is an array or a callable ``crops(positions)``
    returning those crops (so large selections are read a chunk at a time). Returns the maps
    and the explainer's ``info``: ``*_maps`` counts summed over chunks, other entries kept.
    """
    import torch

    n = len(folds)
    read = crops if callable(crops) else (lambda positions: np.asarray(crops)[positions])
    maps: np.ndarray | None = None
    info: dict[str, Any] = {}
    for fold in sorted(set(int(f) for f in folds)):
        if fold not in models:
            raise DataError(f"no model for fold {fold}: model/ and cells.parquet disagree; re-run training")
        positions = np.flatnonzero(folds == fold)
        for start in range(0, len(positions), chunk):
            part = positions[start : start + chunk]
            batch = torch.as_tensor(np.asarray(read(part), dtype=np.float32))
            result = explainer.explain(models[fold], batch, torch.as_tensor(targets[part]))
            if maps is None:
                maps = np.empty((n, *result.shape[1:]), dtype=np.float32)
            maps[part] = result.detach().cpu().numpy()
            merge_info(info, optional_attribute(explainer, "explainer", "info", {}))
            if progress is not None:
                progress.update(len(part))
    assert maps is not None
    return maps, info


def merge_info(info: dict[str, Any], chunk_info: dict[str, Any]) -> None:
    """Fold one chunk's explainer ``info`` into ``info``: ``*_maps`` counts add up, the rest is kept."""
    for key, value in chunk_info.items():
        if key.endswith("_maps"):
            info[key] = info.get(key, 0) + int(value)
        else:
            info[key] = value
