"""The trained fold models of a run folder: ``model/training.json`` and ``model/[<view>/]fold_<k>.pt``.

Checkpoints are read with ``torch.load(..., weights_only=True)`` and rebuilt through the
classifier registry from the name and parameters stored in them; :func:`models_sha256`
identifies the models that made a result (``maps.zarr`` records it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epikit.errors import ModelError
from epikit.io.store import read_json
from epikit.runfolder.layout import MODEL, TRAINING_INFO

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def trained_views(run_dir: str | Path) -> dict[str, Any]:
    """``model/training.json``: per view its channels, classes, classifier, folds and curves."""
    info = read_json(Path(run_dir) / MODEL / TRAINING_INFO)
    if not info:
        raise ModelError(f"{Path(run_dir) / MODEL} has no trained model; run `epikit train` first")
    return info


def load_checkpoint(path: str | Path, device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a checkpoint's network through the registry; return (model in eval mode, info).

    ``info`` is the checkpoint without its weights (classifier, params, channels, classes...).
    """
    import torch

    from epikit.device import default_device
    from epikit.registry import rebuild_classifier

    device = torch.device(device) if device is not None else default_device()
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ModelError(f"cannot read checkpoint {path}: {error}") from error
    model = rebuild_classifier(checkpoint["classifier"], checkpoint["in_channels"],
                               checkpoint["num_classes"], checkpoint["crop_size"], **checkpoint["params"])
    model.load_state_dict(checkpoint["state_dict"])
    info = {k: v for k, v in checkpoint.items() if k != "state_dict"}
    return model.to(device).eval(), info


def load_fold_models(
    run_dir: str | Path, view: str | None = None, device: torch.device | str | None = None
) -> dict[int, nn.Module]:
    """The trained fold models ``{fold: model}`` (eval mode) of ``view`` (default: the first).

    Checkpoints are read with ``weights_only=True`` and rebuilt from the registered
    classifier name and parameters stored in them.
    """
    return {fold: load_checkpoint(path, device)[0] for fold, path in checkpoint_paths(run_dir, view).items()}


def checkpoint_paths(run_dir: str | Path, view: str | None = None) -> dict[int, Path]:
    """``{fold: checkpoint path}`` of ``view`` (default: the first trained view)."""
    info = trained_views(run_dir)
    view = view or info["primary_view"]
    if view not in info["views"]:
        raise ModelError(
            f"no model trained for view {view!r} in {run_dir}; trained: {', '.join(info['views'])}"
        )
    directory = Path(run_dir) / MODEL / info["views"][view]["directory"]
    return {entry["fold"]: directory / f"fold_{entry['fold']}.pt" for entry in info["views"][view]["folds"]}


def models_sha256(run_dir: str | Path, view: str | None = None) -> str:
    """One sha256 over the fold checkpoints of ``view``: identifies the models that made a result."""
    digest = hashlib.sha256()
    for fold, path in sorted(checkpoint_paths(run_dir, view).items()):
        digest.update(f"{fold}:".encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
