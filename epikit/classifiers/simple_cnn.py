"""A small plain CNN: the baseline every deeper classifier should beat.

Blocks of 3x3 convolution + BatchNorm + ReLU + 2x2 max-pool, doubling the width each block,
then global average pooling and one Linear layer. CAM layer: ``features`` (the last block's
output map).
"""

from __future__ import annotations

from torch import nn

from epikit.errors import ConfigError


def simple_cnn(
    in_channels: int,
    num_classes: int,
    crop_size: int,
    width: int = 16,
    depth: int = 4,
    dropout: float = 0.0,
) -> nn.Module:
    """A ``depth``-block plain CNN starting at ``width`` channels (halving the map each block).

    Blocks are capped so the last map is at least 4 x 4 pixels for ``crop_size``.
    """
    if in_channels < 1 or num_classes < 2 or width < 1 or depth < 1:
        raise ConfigError(
            f"cnn needs in_channels >= 1, num_classes >= 2, width >= 1, depth >= 1 "
            f"(got {in_channels}, {num_classes}, {width}, {depth})"
        )
    blocks = max(1, min(depth, (crop_size // 2).bit_length() - 1))
    layers: list[nn.Module] = []
    channels = in_channels
    for block in range(blocks):
        out = width * 2**block
        layers += [
            nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        if block < blocks - 1:
            layers.append(nn.MaxPool2d(2))
        channels = out
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*layers))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("dropout", nn.Dropout(dropout))
    model.add_module("fc", nn.Linear(channels, num_classes))
    model.cam_layer = "features"
    return model
