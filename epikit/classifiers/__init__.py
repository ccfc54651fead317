"""Built-in classifier plugin: registers the networks shipped with epikit.

Factories are given as lazy ``"module:attribute"`` strings so listing them does not import
torch; the implementation modules sit next to this file.
"""

from __future__ import annotations

from epikit.hookspecs import Register, hookimpl


@hookimpl
def epikit_register_classifiers(register: Register) -> None:
    """Register the built-in classifiers."""
    register(
        "resnet10",
        "epikit.classifiers.resnet:ResNet10",
        summary="The study's 9-conv ResNet: ResNet-18 cut after layer2 + one Linear layer",
    )
    register(
        "resnet18",
        "epikit.classifiers.resnet:resnet18",
        summary="Full torchvision ResNet-18, any number of input channels",
    )
    register(
        "timm",
        "epikit.classifiers.timm_models:timm_classifier",
        summary="Any timm architecture by name (-p arch=efficientnet_b0), random init offline",
    )
    register(
        "cnn",
        "epikit.classifiers.simple_cnn:simple_cnn",
        summary="Small plain CNN baseline (conv-BN-ReLU-pool blocks, global average pool)",
    )
