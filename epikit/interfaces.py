"""The contracts every segmenter, classifier and explainer plugin fulfils.

These are structural types (``typing.Protocol``): a plugin needs no epikit base class, only
the methods below. Array conventions used across epikit:

* images are ``float32`` arrays shaped ``(C, Y, X)``, channel first;
* label images are ``int32`` arrays shaped ``(Y, X)``, 0 = background, nuclei 1..n;
* crops are tensors shaped ``(N, C, S, S)``; explanation maps ``(N, S, S)`` in [0, 1].

This module must stay import-light (no torch at import time): plugins import it freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

Kind = Literal["segmenter", "classifier", "explainer"]
KINDS: tuple[Kind, ...] = ("segmenter", "classifier", "explainer")


@runtime_checkable
class Segmenter(Protocol):
    """Turns one multi-channel image into a nucleus label image."""

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        """Segment ``image`` (C, Y, X) float32 using ``image[nuclear_channel]``.

        Returns an int32 (Y, X) label image with 0 as background and nuclei labelled
        1..n without gaps. An image with no nuclei returns all zeros, not an error.
        """


class ClassifierFactory(Protocol):
    """Builds a classifier network; the module names its CAM layer in ``cam_layer``."""

    def __call__(
        self, in_channels: int, num_classes: int, crop_size: int, **params: Any
    ) -> torch.nn.Module:
        """Return a module mapping (N, in_channels, S, S) crops to (N, num_classes) logits."""


@runtime_checkable
class Explainer(Protocol):
    """Computes one saliency map per crop for a trained classifier."""

    def explain(
        self, model: torch.nn.Module, crops: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Return maps (N, S, S) in [0, 1] explaining ``targets`` (N,) class indices."""


@dataclass(frozen=True)
class PluginEntry:
    """One registered component and where it came from.

    ``plugin`` is the pluggy name of the module/object that registered it, ``distribution``
    and ``version`` the installed package providing it (``epikit`` for built-ins).
    """

    kind: Kind
    name: str
    factory: Callable[..., Any]
    summary: str
    plugin: str
    distribution: str
    version: str

    def provenance(self) -> dict[str, str]:
        """The fields a run manifest records for this entry."""
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }
