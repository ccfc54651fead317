"""Finished folds of one cross-validation on disk, so an interrupted one resumes (:class:`FoldStore`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epikit.config import section_hash
from epikit.io.store import atomic_path
from epikit.training.fit import TrainedModel
from epikit.options import TrainingOptions

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

log = logging.getLogger(__name__)


def training_settings(classifier: str, params: dict[str, Any] | None, split: str, folds: int,
                      options: TrainingOptions) -> dict[str, Any]:
    """The settings a trained fold depends on (the progress display left out)."""
    return {"classifier": classifier, "params": params, "split": split, "folds": folds,
            "options": {k: v for k, v in dataclasses.asdict(options).items() if k != "progress"}}


class FoldStore:
    """Finished folds of one cross-validation on disk, so an interrupted one resumes.

    Each fold is saved as ``fold_<k>.pt`` (weights, curves, out-of-fold probabilities; read
    back with ``weights_only=True``) together with a key: a hash of the crops, labels,
    groups, classifier, parameters, split and training options. A file whose key differs
    (other data or settings) is ignored and overwritten. Fold ``k`` is trained from its own
    seed, so a resumed cross-validation equals an uninterrupted one.
    """

    def __init__(self, directory: Path, key: str, build: Callable[[], nn.Module], device: torch.device) -> None:
        self.directory = directory
        self.key = key
        self.build = build
        self.device = device

    @staticmethod
    def fingerprint(crops: Any, labels: np.ndarray, groups: np.ndarray, classifier: str,
            params: dict[str, Any], split: str, folds: int, options: TrainingOptions) -> str:
        """Hash of everything a fold's result depends on: the data and :func:`training_settings`."""
        return section_hash(crops, np.asarray(labels), np.asarray(groups).astype(str),
                            training_settings(classifier, params, split, folds, options))

    def path(self, fold: int) -> Path:
        """The file of fold ``fold``."""
        return self.directory / f"fold_{fold}.pt"

    def load(self, fold: int) -> tuple[TrainedModel, np.ndarray] | None:
        """The saved (model, out-of-fold probabilities) of ``fold``, or None if absent or stale."""
        import torch

        path = self.path(fold)
        if not path.is_file():
            return None
        try:
            saved = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:  # a torn or foreign file: train the fold again
            log.warning("ignoring unreadable saved fold %s (%s)", path, error)
            return None
        if saved.get("key") != self.key:
            return None
        model = self.build()
        model.load_state_dict(saved["state_dict"])
        trained = TrainedModel(model.to(self.device).eval(), saved["best_epoch"], saved["history"],
                               saved["samples_seen"], saved["seconds"])
        log.info("fold %d: reusing the model saved in %s", fold, path)
        return trained, saved["test_proba"].numpy()

    def save(self, fold: int, trained: TrainedModel, test_proba: np.ndarray) -> None:
        """Write fold ``fold`` atomically."""
        import torch

        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path(fold)) as temporary:
            torch.save({
                "key": self.key,
                "state_dict": {k: v.detach().cpu() for k, v in trained.model.state_dict().items()},
                "best_epoch": int(trained.best_epoch),
                "history": [{k: v.item() if isinstance(v, np.generic) else v for k, v in record.items()}
                            for record in trained.history],
                "samples_seen": int(trained.samples_seen),
                "seconds": float(trained.seconds),
                "test_proba": torch.as_tensor(test_proba),
            }, temporary)
