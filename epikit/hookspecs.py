"""Hook specifications: the three ways a plugin adds components to epikit.

A plugin is any module or object with functions marked ``@epikit.hookimpl`` whose names
match the specs below. Built-in components use exactly the same hooks as third-party
packages, which are found through the ``epikit`` entry-point group::

    # pyproject.toml of a plugin package
    [project.entry-points.epikit]
    my_plugin = "my_package.plugin"

Each hook receives a ``register`` callable owned by epikit. The host validates the name,
rejects duplicates and records which plugin (and distribution version) provided it, so the
plugin only states what it offers. Factories are called only when the component is used:
import heavy dependencies (torch, cellpose, segment-anything) inside the factory, never at
module level, so that ``epikit plugins`` stays fast and works without optional packages.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

PROJECT_NAME = "epikit"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class Register(Protocol):
    """The callable passed to every registration hook."""

    def __call__(self, name: str, factory: object, *, summary: str = "") -> None:
        """Register ``factory`` under ``name`` with a one-line ``summary``."""


@hookspec
def epikit_register_segmenters(register: Register) -> None:
    """Register nucleus segmenters.

    ``factory(**params)`` returns an object with
    ``segment(image: ndarray[C, Y, X] float32, nuclear_channel: int) -> ndarray[Y, X] int32``
    (0 = background, nuclei labelled 1..n). See :class:`epikit.interfaces.Segmenter`.

    Example::

        import epikit

        class ThresholdSegmenter:
            def __init__(self, threshold: float = 0.5):
                self.threshold = threshold

            def segment(self, image, nuclear_channel=0):
                from scipy import ndimage
                labels, _ = ndimage.label(image[nuclear_channel] > self.threshold)
                return labels.astype("int32")

        @epikit.hookimpl
        def epikit_register_segmenters(register):
            register("threshold", ThresholdSegmenter, summary="Global threshold + labelling")
    """


@hookspec
def epikit_register_classifiers(register: Register) -> None:
    """Register single-cell classifiers.

    ``factory(in_channels, num_classes, crop_size, **params)`` returns a ``torch.nn.Module``
    mapping ``(N, in_channels, crop_size, crop_size)`` crops to ``(N, num_classes)`` logits.
    The module's ``cam_layer`` attribute names the sub-module whose spatial output CAM
    explainers use (``model.get_submodule(model.cam_layer)``). Every classifier is trained
    by the same loop (:mod:`epikit.training`). See :class:`epikit.interfaces.ClassifierFactory`.

    Example::

        import epikit

        def tiny_cnn(in_channels, num_classes, crop_size, width=16):
            import torch.nn as nn

            model = nn.Sequential()
            model.add_module("features", nn.Sequential(
                nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()))
            model.add_module("pool", nn.AdaptiveAvgPool2d(1))
            model.add_module("flatten", nn.Flatten())
            model.add_module("head", nn.Linear(width, num_classes))
            model.cam_layer = "features"
            return model

        @epikit.hookimpl
        def epikit_register_classifiers(register):
            register("tiny-cnn", tiny_cnn, summary="One conv layer, for demos")
    """


@hookspec
def epikit_register_explainers(register: Register) -> None:
    """Register explanation methods.

    ``factory(**params)`` returns an object with
    ``explain(model, crops: Tensor[N, C, S, S], targets: Tensor[N]) -> Tensor[N, S, S]``
    giving maps scaled to [0, 1], computed in batches. See :class:`epikit.interfaces.Explainer`.

    Example::

        import epikit

        class InputMagnitude:
            def explain(self, model, crops, targets):
                maps = crops.abs().sum(dim=1)
                peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
                return maps / peak[:, None, None]

        @epikit.hookimpl
        def epikit_register_explainers(register):
            register("input-magnitude", InputMagnitude, summary="Summed |input|, a baseline")
    """
