"""Contract tests for epikit plugins, shipped as a pytest plugin.

Installing epikit registers this module with pytest (entry point group ``pytest11``), so a
plugin package's tests can use its fixtures and checks without any ``conftest.py``::

    # tests/test_my_plugin.py, in the package providing the "my-explainer" explainer
    import my_package.plugin
    from epikit.testing import check_explainer

    def test_my_explainer_keeps_the_contract(epikit_registry, epikit_tiny_model, epikit_tiny_crops):
        with epikit_registry(my_package.plugin):
            explainer = epikit.get_explainer("my-explainer")
            crops, targets = epikit_tiny_crops
            check_explainer(explainer, epikit_tiny_model, crops, targets)

The checks test what :mod:`epikit.interfaces` promises: the required method's shapes, types
and value ranges, and the types of the optional attributes a plugin declares
(:data:`epikit.interfaces.OPTIONAL_ATTRIBUTES`). Each raises ``AssertionError`` naming the
broken rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest

from epikit.interfaces import INITIAL_WEIGHTS_KEYWORD, OPTIONAL_ATTRIBUTES, Kind, accepts_initial_weights

#: Types each optional attribute must have when present (None is always allowed).
ATTRIBUTE_TYPES: dict[str, type | tuple[type, ...]] = {
    "weights_info": dict, "cam_layer": str, "info": dict, "params": dict, "layer": str,
}


def check_optional_attributes(plugin: Any, kind: Kind) -> None:
    """Every declared optional attribute ``plugin`` has is of its documented type."""
    for name in OPTIONAL_ATTRIBUTES[kind]:
        value = getattr(plugin, name, None)
        if value is not None:
            assert isinstance(value, ATTRIBUTE_TYPES[name]), (
                f"{kind} attribute {name!r} must be {ATTRIBUTE_TYPES[name]}, got {type(value).__name__}")


def check_labels(labels: Any, shape: tuple[int, int]) -> int:
    """A segmenter's output: int32 ndarray of ``shape``, 0 = background, labels 1..n without gaps; returns n."""
    assert isinstance(labels, np.ndarray), f"labels must be a numpy array, got {type(labels).__name__}"
    assert labels.dtype == np.int32, f"labels must be int32, got {labels.dtype}"
    assert labels.shape == shape, f"labels must have the image's shape {shape}, got {labels.shape}"
    values = np.unique(labels)
    n = int(values.max()) if values.size else 0
    assert values.min() >= 0, "labels must not be negative"
    assert set(values.tolist()) | {0} == set(range(n + 1)), "labels must be 1..n without gaps"
    return n


def check_segmenter(segmenter: Any, image: np.ndarray) -> int:
    """``segmenter`` keeps the contract on ``image`` (C, Y, X) and on a blank image; returns the nuclei found."""
    n = check_labels(segmenter.segment(image, nuclear_channel=0), image.shape[1:])
    blank = np.zeros_like(image, dtype=np.float32)
    assert check_labels(segmenter.segment(blank, nuclear_channel=0), image.shape[1:]) == 0, \
        "a blank image must give no nuclei"
    check_optional_attributes(segmenter, "segmenter")
    return n


def check_classifier(factory: Callable[..., Any], in_channels: int = 3, num_classes: int = 2,
                     crop_size: int = 64, **params: Any) -> Any:
    """The module ``factory`` builds maps (N, C, S, S) crops to finite (N, classes) logits; returns it."""
    import torch

    model = factory(in_channels, num_classes, crop_size, **params)
    assert isinstance(model, torch.nn.Module), f"a classifier factory must return a torch.nn.Module, got {type(model).__name__}"
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, in_channels, crop_size, crop_size))
    assert tuple(logits.shape) == (2, num_classes), f"logits must be (N, {num_classes}), got {tuple(logits.shape)}"
    assert bool(torch.isfinite(logits).all()), "logits must be finite"
    check_optional_attributes(model, "classifier")
    layer = getattr(model, "cam_layer", None)
    if layer is not None:
        model.get_submodule(layer)  # raises AttributeError for a name that is not a submodule
    if accepts_initial_weights(factory):
        rebuilt = factory(in_channels, num_classes, crop_size, **{**params, INITIAL_WEIGHTS_KEYWORD: False})
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes, \
            f"{INITIAL_WEIGHTS_KEYWORD}=False must build the same network (a saved state dict loads into it)"
    return model


def check_explainer(explainer: Any, model: Any, crops: Any, targets: Any) -> Any:
    """``explainer`` returns (N, S, S) finite maps in [0, 1] for ``model`` and leaves its mode alone; returns them."""
    import torch

    training = model.training
    maps = explainer.explain(model, crops, targets)
    assert isinstance(maps, torch.Tensor), f"maps must be a torch.Tensor, got {type(maps).__name__}"
    expected = (crops.shape[0], crops.shape[-2], crops.shape[-1])
    assert tuple(maps.shape) == expected, f"maps must be (N, S, S) = {expected}, got {tuple(maps.shape)}"
    assert bool(torch.isfinite(maps).all()), "maps must be finite"
    assert float(maps.min()) >= 0 and float(maps.max()) <= 1, "maps must lie in [0, 1]"
    assert model.training == training, "explain() must leave the model's train/eval mode as it was"
    check_optional_attributes(explainer, "explainer")
    return maps


def tiny_model(in_channels: int = 3, num_classes: int = 2) -> Any:
    """A small CNN classifier whose CAM layer is ``features`` (for explainer tests)."""
    from torch import nn

    class TinyClassifier(nn.Module):
        cam_layer = "features"

        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

        def forward(self, x: Any) -> Any:
            return self.head(self.features(x))

    return TinyClassifier().eval()


@pytest.fixture
def epikit_registry() -> Iterator[Callable[..., Any]]:
    """``epikit_registry(*plugins)``: a context manager making a registry current that holds the
    built-ins, the installed plugins and ``plugins`` (modules with hook implementations)."""
    from epikit.plugins import build_plugin_manager
    from epikit.registry import use_registry

    @contextmanager
    def registry(*plugins: Any, load_entry_points: bool = True) -> Iterator[Any]:
        with use_registry(build_plugin_manager(tuple(plugins), load_entry_points=load_entry_points)) as built:
            yield built

    yield registry


@pytest.fixture
def epikit_tiny_model() -> Any:
    """A small seeded CNN classifier (3 channels, 2 classes) with ``cam_layer = "features"``."""
    import torch

    torch.manual_seed(0)
    return tiny_model()


@pytest.fixture
def epikit_tiny_crops() -> tuple[Any, Any]:
    """Six seeded crops (6, 3, 16, 16) with a bright square inside, and targets (6,)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    crops = torch.zeros(6, 3, 16, 16)
    crops[:, :, 4:12, 4:12] = torch.rand(6, 3, 8, 8, generator=generator) + 0.5
    return crops, torch.tensor([0, 1, 0, 1, 0, 1])


@pytest.fixture
def epikit_tiny_field() -> np.ndarray:
    """A seeded simulated field (3, 96, 96) float32 with a few nuclei in channel 0."""
    from epikit.simulate import simulate_field

    field = simulate_field(np.random.default_rng(0), size=(96, 96), n_nuclei=4, radius=(8.0, 12.0))
    return field.image.astype(np.float32)
