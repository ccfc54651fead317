"""ResNet classifiers built from torchvision's ResNet-18: the study's ``resnet10`` and the full net.

``resnet10`` is the network of the study (see ``STUDY.md``): ResNet-18 cut after ``layer2``
(conv1 7x7/2 + BN + ReLU + max-pool, ``layer1`` and ``layer2``: 9 convolutions), with the
128 x (S/8) x (S/8) feature map flattened into one Linear layer. ``resnet18`` is the whole
ResNet-18 with a new head. Both take any number of input channels; with pretrained weights
the RGB filters of ``conv1`` are averaged and repeated over the input channels.

Weights (``pretrained=``) are either a path to a saved state dict of a torchvision ResNet-18
(loaded with ``weights_only=True``) or the name of a torchvision weights enum member
(``"IMAGENET1K_V1"``, ``"DEFAULT"``), which torchvision downloads (or finds in its cache).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from epikit.errors import ConfigError, ModelError

STEM_POOLS = ("max", "avg")
POOLINGS = ("flatten", "avg")


def _downsampled(size: int, times: int) -> int:
    """Side length after ``times`` stride-2 stages with 'same'-style padding (conv1, pools)."""
    for _ in range(times):
        size = (size - 1) // 2 + 1
    return size


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved at ``path`` (``weights_only=True``; a ``{"state_dict": ...}`` wrapper is unwrapped)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelError(f"cannot load weights from {path}: {error}") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state dict (a mapping of parameter tensors)")
    return state


def _torchvision_state_dict(pretrained: Any) -> dict[str, torch.Tensor]:
    """ResNet-18 weights from a state-dict file or a torchvision weights enum name."""
    from torchvision.models import ResNet18_Weights

    if pretrained is True:
        pretrained = "DEFAULT"
    text = str(pretrained)
    path = Path(text).expanduser()
    if path.is_file():
        return load_state_dict_file(path)
    names = [member.name for member in ResNet18_Weights] + ["DEFAULT"]
    if text not in names:
        raise ConfigError(
            f"pretrained={text!r} is neither an existing file nor a torchvision weights name; "
            f"use a path to a ResNet-18 state dict or one of: {', '.join(names)}"
        )
    weights = ResNet18_Weights[text]
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:
        raise ModelError(
            f"cannot fetch torchvision weights {weights} ({error}); without internet, download "
            f"{weights.url} elsewhere and pass -p pretrained=/path/to/{Path(weights.url).name}"
        ) from error


def _adapt_conv1(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn RGB conv1 filters into ``in_channels`` filters: average and repeat, rescaled.

    Scaling by ``3 / in_channels`` keeps the response to a uniform input the same.
    """
    if weight.shape[1] == in_channels:
        return weight
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def _resnet18_backbone(in_channels: int, pretrained: Any, stem_pool: str) -> nn.Module:
    """A torchvision ResNet-18 with ``in_channels`` inputs, optional weights, chosen stem pool."""
    from torchvision.models import resnet18 as torchvision_resnet18

    if in_channels < 1:
        raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
    if stem_pool not in STEM_POOLS:
        raise ConfigError(f"stem_pool={stem_pool!r} is not one of: {', '.join(STEM_POOLS)}")
    net = torchvision_resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained not in (None, False, "", "none"):
        state = dict(_torchvision_state_dict(pretrained))
        if "conv1.weight" not in state:
            raise ModelError("pretrained weights lack 'conv1.weight': not a torchvision ResNet-18")
        state["conv1.weight"] = _adapt_conv1(state["conv1.weight"], in_channels)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as error:
            raise ModelError(f"pretrained weights do not fit torchvision ResNet-18: {error}") from error
        missing = [key for key in missing if not key.startswith("fc.")]
        if missing or unexpected:
            raise ModelError(
                f"pretrained weights do not fit torchvision ResNet-18 "
                f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
            )
    if stem_pool == "avg":
        net.maxpool = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
    return net


class ResNet10(nn.Module):
    """The study's 9-conv ResNet ("ResNet10"): ResNet-18 up to ``layer2``, then one Linear layer.

    Registered as the ``resnet10`` classifier; the class is its factory.
    ``pooling``: ``"flatten"`` (the study's) flattens the 128 x (S/8) x (S/8) map, so the head
    depends on the crop size; ``"avg"`` averages it to 128 values first.
    ``stem_pool``: ``"max"`` (study) or ``"avg"`` (the stem's max-pool replaced by avg-pool).
    ``pretrained``: None (random init), a path to a ResNet-18 state dict, or a torchvision
    weights name such as ``"IMAGENET1K_V1"``; not loaded with ``initial_weights=False`` (the
    host rebuilding a saved model). ``dropout`` before the Linear layer.
    CAM layer: ``layer2``.
    """

    cam_layer = "layer2"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        crop_size: int,
        pooling: str = "flatten",
        stem_pool: str = "max",
        pretrained: Any = None,
        dropout: float = 0.0,
        initial_weights: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r} is not one of: {', '.join(POOLINGS)}")
        if num_classes < 2 or crop_size < 8:
            raise ConfigError(
                f"resnet10 needs num_classes >= 2 and crop_size >= 8 "
                f"(got {num_classes} and {crop_size})"
            )
        net = _resnet18_backbone(in_channels, pretrained if initial_weights else None, stem_pool)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2 = net.layer1, net.layer2
        side = _downsampled(crop_size, 3)
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.Identity()
        features = 128 if pooling == "avg" else 128 * side * side
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for crops (N, C, S, S)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def resnet18(
    in_channels: int,
    num_classes: int,
    crop_size: int,
    stem_pool: str = "max",
    pretrained: Any = None,
    initial_weights: bool = True,
) -> nn.Module:
    """The full torchvision ResNet-18 with ``in_channels`` inputs and a new ``num_classes`` head.

    ``pretrained``, ``initial_weights`` and ``stem_pool`` as for :class:`ResNet10`. CAM layer: ``layer4``.
    ``crop_size`` is accepted for the common factory signature (global pooling makes the
    network size-agnostic).
    """
    if num_classes < 2:
        raise ConfigError(f"resnet18 needs num_classes >= 2 (got {num_classes})")
    net = _resnet18_backbone(in_channels, pretrained if initial_weights else None, stem_pool)
    net.fc = nn.Linear(net.fc.in_features, num_classes)
    net.cam_layer = "layer4"
    return net
