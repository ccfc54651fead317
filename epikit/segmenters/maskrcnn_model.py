"""The compact nuclei Mask R-CNN: architecture, input normalisation and checkpoint files.

The network is torchvision's :class:`~torchvision.models.detection.MaskRCNN` around a small
four-stage CNN with GroupNorm (batch-size independent, so training with batches of two and
inference on one tile behave the same), a feature pyramid P2-P6 and light heads. It reads one
channel - the nuclear stain - normalised per image by percentiles (:func:`normalise_nuclear`).

A checkpoint is a ``torch.save`` dict loadable with ``weights_only=True``::

    {"format": "epikit-maskrcnn", "version": 1, "config": {...ModelConfig fields...},
     "state_dict": {name: tensor (fp16 for floating point)}}

next to a metadata sidecar ``<checkpoint stem>.json`` (architecture, training data, steps,
metrics, sha256, command line).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from epikit.errors import InputError, ModelError
from epikit.io.store import sha256_file

CHECKPOINT_FORMAT = "epikit-maskrcnn"
CHECKPOINT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "maskrcnn_nuclei.pt"
NORMALISATION_PERCENTILES = (1.0, 99.8)
URL_SCHEMES = ("https://", "http://", "file://")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters of the nuclei Mask R-CNN (saved in every checkpoint).

    ``stage_channels`` are the widths of the four backbone stages (strides 4, 8, 16, 32),
    ``fpn_channels`` the pyramid width, ``anchor_sizes`` the base anchor side per pyramid
    level P2-P6 (each also used at x sqrt(2)), ``box_head_dim`` the width of the two-layer
    box head, ``mask_head_layers`` the widths of the mask head's 3x3 convolutions.
    """

    stage_channels: tuple[int, int, int, int] = (32, 64, 112, 160)
    stem_channels: int = 24
    fpn_channels: int = 64
    anchor_sizes: tuple[int, int, int, int, int] = (8, 16, 32, 64, 128)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_head_dim: int = 128
    mask_head_layers: tuple[int, ...] = (64, 64, 64)
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 128
    max_detections: int = 500
    nucleus_diameter: float | None = 20.0
    inference_diameter: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from a checkpoint's ``config`` dict (lists become tuples).

        Checkpoints without ``nucleus_diameter`` (epikit 0.1) were trained at the images' own
        scale: they get ``None``, which turns rescaling off.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"checkpoint config has unknown fields {unknown}; upgrade epikit")
        data = {"nucleus_diameter": None, **data}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and ``weights_only``-safe dict of the fields."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _conv_gn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, GroupNorm, ReLU."""
    groups = 8 if out_ch % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 conv-GroupNorm layers with an identity shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        groups = 8 if channels % 8 == 0 else 1
        self.conv1 = _conv_gn(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual update of ``x``."""
        return self.relu(x + self.norm2(self.conv2(self.conv1(x))))


class NucleiBackbone(nn.Module):
    """Four-stage CNN (strides 4-32) with a feature pyramid; ``out_channels`` for MaskRCNN."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        stem = config.stem_channels
        self.stem = nn.Sequential(_conv_gn(1, stem, stride=2), _conv_gn(stem, stem))
        stages = []
        previous = stem
        for width in config.stage_channels:
            stages.append(nn.Sequential(_conv_gn(previous, width, stride=2), ResidualBlock(width)))
            previous = width
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(
            list(config.stage_channels), config.fpn_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = config.fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """Pyramid features ``"0"``-``"3"`` (strides 4-32) and ``"pool"`` (stride 64)."""
        x = self.stem(x)
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for index, stage in enumerate(self.stages):
            x = stage(x)
            features[str(index)] = x
        return self.fpn(features)


class TileTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without resizing: tiles keep their pixel scale.

    Nuclei sizes are physical; the model is trained and applied at the image's own scale
    (tiles are padded to a multiple of 32 by the parent's batching).
    """

    def resize(self, image, target=None):  # type: ignore[override]
        """Return ``image`` and ``target`` unchanged."""
        return image, target


def build_model(config: ModelConfig | None = None) -> MaskRCNN:
    """A randomly initialised nuclei Mask R-CNN for ``config`` (default: the shipped one)."""
    config = config or ModelConfig()
    backbone = NucleiBackbone(config)
    sizes = tuple((s, round(s * 2**0.5)) for s in config.anchor_sizes)
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=(tuple(config.aspect_ratios),) * len(sizes))
    channels = config.fpn_channels
    featmap_names = ["0", "1", "2", "3"]
    box_pool = MultiScaleRoIAlign(featmap_names, output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(featmap_names, output_size=14, sampling_ratio=2)
    mask_width = config.mask_head_layers[-1]
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(channels, anchors.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=1000,
        rpn_post_nms_top_n_train=500,
        rpn_pre_nms_top_n_test=1000,
        rpn_post_nms_top_n_test=1000,
        rpn_batch_size_per_image=config.rpn_batch_size_per_image,
        box_roi_pool=box_pool,
        box_head=TwoMLPHead(channels * 7 * 7, config.box_head_dim),
        box_predictor=FastRCNNPredictor(config.box_head_dim, 2),
        box_batch_size_per_image=config.box_batch_size_per_image,
        box_detections_per_img=config.max_detections,
        box_score_thresh=0.05,
        box_nms_thresh=0.5,
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(channels, list(config.mask_head_layers), 1),
        mask_predictor=MaskRCNNPredictor(mask_width, mask_width, 2),
    )
    model.transform = TileTransform(
        min_size=256, max_size=4096, image_mean=[0.0], image_std=[1.0], size_divisible=32
    )
    # Inference resamples fields to this nucleus size (see epikit.segmenters.maskrcnn).
    model.nucleus_diameter = config.inference_diameter or config.nucleus_diameter
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def normalise_nuclear(channel: np.ndarray, percentiles: tuple[float, float] = NORMALISATION_PERCENTILES) -> np.ndarray:
    """Scale a nuclear-stain image so its low/high percentiles map to 0/1 (float32).

    Raises :class:`InputError` for non-finite values. A constant image becomes all zeros.
    """
    data = np.asarray(channel, dtype=np.float32)
    if data.ndim != 2:
        raise InputError(f"nuclear channel must be 2-D (Y, X), got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError("image contains NaN or infinite values; clean or mask them before segmenting")
    low, high = np.percentile(data, percentiles)
    if high - low <= 1e-6 * max(1.0, abs(float(high))):
        return np.zeros_like(data)
    return ((data - low) / (high - low)).astype(np.float32)


def sidecar_path(checkpoint: Path) -> Path:
    """The metadata JSON that accompanies ``checkpoint`` (same stem, ``.json``)."""
    return Path(checkpoint).with_suffix(".json")


def checkpoint_dict(model: MaskRCNN, config: ModelConfig, half: bool = True) -> dict[str, Any]:
    """The saveable checkpoint of ``model`` (floating tensors cast to fp16 when ``half``)."""
    state = OrderedDict()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu")
        state[name] = tensor.half() if half and tensor.is_floating_point() else tensor.clone()
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "state_dict": state,
    }


def _read_checkpoint_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelError(
            f"cannot read Mask R-CNN weights {path}: {type(error).__name__}: {error}; "
            "re-download or retrain it (epikit train-segmenter maskrcnn --out FILE)"
        ) from None


def _fetch_url(url: str) -> Path:
    """Download ``url`` into the torch hub cache (once) and return the cached file."""
    from urllib.parse import urlparse

    from torch.hub import download_url_to_file, get_dir

    filename = Path(urlparse(url).path).name
    cached = Path(get_dir()) / "checkpoints" / filename
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            # torchvision naming: "<name>-<sha256 prefix>.pth" lets the hub verify the prefix.
            download_url_to_file(url, str(cached), hash_prefix=_hub_hash_prefix(filename))
        except Exception as error:  # noqa: BLE001 - urllib, OSError, hash mismatch (RuntimeError)
            raise ModelError(
                f"cannot download Mask R-CNN weights {url}: {error}; "
                "download the file elsewhere and pass weights=<path>"
            ) from None
    return cached


def _hub_hash_prefix(filename: str) -> str | None:
    stem = filename.split(".")[0]
    tail = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return tail if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail) else None


def resolve_weights(weights: str | Path | None) -> Path:
    """The local file for ``weights``: ``None`` = shipped weights, a path, or a URL.

    URLs (``https://``, ``http://``, ``file://``) are downloaded once into the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``); torchvision-style names ``<name>-<sha256 prefix>.pt``
    have their hash prefix verified by the download.
    """
    if weights is None:
        path = DEFAULT_WEIGHTS
    elif str(weights).startswith(URL_SCHEMES):
        return _fetch_url(str(weights))
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(
            f"Mask R-CNN weights file {path} does not exist; pass weights=<existing .pt file> "
            "or train one with 'epikit train-segmenter maskrcnn --out FILE'"
        )
    return path


def expected_sha256(path: Path, sha256: str | None) -> str | None:
    """The sha256 to verify ``path`` against: the given one, else the sidecar's, else None."""
    if sha256:
        return sha256.lower()
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            return json.loads(sidecar.read_text()).get("sha256")
        except (OSError, ValueError) as error:
            raise ModelError(f"cannot read weights metadata {sidecar}: {error}; fix or delete it") from None
    return None


def load_model(
    weights: str | Path | None = None,
    sha256: str | None = None,
    device: torch.device | str = "cpu",
) -> tuple[MaskRCNN, ModelConfig, Path]:
    """Load a nuclei Mask R-CNN in eval mode on ``device`` (float32).

    ``weights``: ``None`` (the weights shipped in ``epikit/segmenters/weights``), a file path
    or a URL (cached by ``torch.hub``, see :func:`resolve_weights`). ``sha256`` is checked when given; without it
    a sidecar JSON next to the file supplies it. Bare torchvision-style state dicts are loaded
    into the default architecture. Raises :class:`ModelError` naming the file on any problem.
    """
    path = resolve_weights(weights)
    expected = expected_sha256(path, sha256)
    if expected is not None:
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(
                f"sha256 of Mask R-CNN weights {path} is {actual}, expected {expected}; "
                "the file is corrupt or not the one intended - replace it"
            )
    payload = _read_checkpoint_file(path)
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        config = ModelConfig.from_dict(payload["config"])
        state = payload["state_dict"]
    elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        config, state = ModelConfig(), payload
    else:
        raise ModelError(f"{path} is not an epikit Mask R-CNN checkpoint or a state dict")
    model = build_model(config)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(f"weights {path} do not fit the Mask R-CNN architecture: {first}") from None
    model.eval().to(device)
    return model, config, path
