"""The contracts every segmenter, classifier and explainer plugin fulfils.

These are structural types (``typing.Protocol``): a plugin needs no epikit base class, only
the methods below. Array conventions used across epikit:

* images are ``float32`` arrays shaped ``(C, Y, X)``, channel first;
* label images are ``int32`` arrays shaped ``(Y, X)``, 0 = background, nuclei 1..n;
* crops are tensors shaped ``(N, C, S, S)``; explanation maps ``(N, S, S)`` in [0, 1].

Besides the required method, a plugin object may carry the optional attributes listed in
:data:`OPTIONAL_ATTRIBUTES` (declared on each protocol below); the host reads them only
through :func:`optional_attribute`, so this module is the whole contract. The contract tests
of :mod:`epikit.testing` check every registered plugin against it.

This module must stay import-light (no torch at import time): plugins import it freely.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

from epikit.errors import PluginError

Kind = Literal["segmenter", "classifier", "explainer"]
KINDS: tuple[Kind, ...] = ("segmenter", "classifier", "explainer")

#: Per kind, the optional attributes the host reads and what each must hold. For a
#: classifier the attribute belongs to the module its factory returns.
OPTIONAL_ATTRIBUTES: dict[Kind, dict[str, str]] = {
    "segmenter": {
        "weights_info": "dict describing the weights in use (e.g. path, sha256, training data); "
                        "recorded in the run's metrics",
    },
    "classifier": {
        "cam_layer": "name of the submodule CAM explainers explain (e.g. 'layer2'); without it a "
                     "CAM explainer needs layer=NAME",
    },
    "explainer": {
        "info": "dict of details of the last explain() call; values of keys ending in '_maps' are "
                "counts the host sums over chunks, the rest is kept as is (recorded in maps.zarr)",
        "params": "dict of the explainer's resolved parameters (recorded in maps.zarr)",
        "layer": "name of the layer the maps were computed at, or None (recorded in maps.zarr)",
    },
}

#: Keyword a classifier factory may accept (``initial_weights: bool = True``): the host passes
#: ``False`` when it rebuilds a saved model, whose state dict replaces the initial weights, so
#: the factory skips whatever its own parameters chose (e.g. ``pretrained=`` ImageNet weights).
INITIAL_WEIGHTS_KEYWORD = "initial_weights"


def accepts_initial_weights(factory: Callable[..., Any]) -> bool:
    """Whether a classifier ``factory`` takes :data:`INITIAL_WEIGHTS_KEYWORD` by name."""
    try:
        return INITIAL_WEIGHTS_KEYWORD in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without an inspectable signature
        return False


def optional_attribute(plugin: Any, kind: Kind, name: str, default: Any = None) -> Any:
    """The optional attribute ``name`` of a ``kind`` plugin object, or ``default`` without it.

    Raises :class:`~epikit.errors.PluginError` for a name the contract does not declare (a
    host bug: every attribute the host reads must be in :data:`OPTIONAL_ATTRIBUTES`).
    """
    if name not in OPTIONAL_ATTRIBUTES[kind]:
        raise PluginError(f"{name!r} is not an optional {kind} attribute of the plugin contract; "
                          f"declared: {', '.join(OPTIONAL_ATTRIBUTES[kind])}")
    value = getattr(plugin, name, None)
    return default if value is None else value


@runtime_checkable
class Segmenter(Protocol):
    """Turns one multi-channel image into a nucleus label image.

    Optional attribute: ``weights_info`` (see :data:`OPTIONAL_ATTRIBUTES`).
    """

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        """Segment ``image`` (C, Y, X) float32 using ``image[nuclear_channel]``.

        Returns an int32 (Y, X) label image with 0 as background and nuclei labelled
        1..n without gaps. An image with no nuclei returns all zeros, not an error.
        """


class ClassifierFactory(Protocol):
    """Builds a classifier network; the module names its CAM layer in ``cam_layer``.

    The parameters are the user's ``-p key=value`` options. To rebuild a saved model the
    host calls the factory with the parameters recorded at training time, plus
    ``initial_weights=False`` when the factory accepts :data:`INITIAL_WEIGHTS_KEYWORD`, then
    loads the saved state dict. A factory whose parameters load initial weights (a file, a
    download) should accept it and skip loading them then, so a saved model is rebuilt
    without those weights; the factory alone knows which of its parameters choose them.
    """

    def __call__(
        self, in_channels: int, num_classes: int, crop_size: int, **params: Any
    ) -> torch.nn.Module:
        """Return a module mapping (N, in_channels, S, S) crops to (N, num_classes) logits."""


@runtime_checkable
class Explainer(Protocol):
    """Computes one saliency map per crop for a trained classifier.

    Optional attributes: ``info``, ``params``, ``layer`` (see :data:`OPTIONAL_ATTRIBUTES`).
    """

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
