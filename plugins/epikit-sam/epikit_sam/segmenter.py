"""The ``sam`` segmenter: Segment Anything's automatic mask generator, filtered to nuclei.

The nuclear channel is percentile-normalised and rendered as an 8-bit RGB image (SAM's
input), SAM proposes masks from a grid of point prompts, and
:func:`epikit_sam.masks.proposals_to_labels` keeps the nucleus-like masks and resolves their
overlaps into an int32 label image. SAM wants a GPU: on one CPU core the ViT-B encoder alone
takes about 35 s per image and the automatic generator about 7 minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam

from epikit.device import default_device
from epikit.errors import ConfigError, InputError
from epikit_sam.masks import MaskProposal, proposals_to_labels
from epikit_sam.models import SamArchitecture, load_sam

NORMALISATION_PERCENTILES = (1.0, 99.8)


def normalise_channel(channel: np.ndarray) -> np.ndarray | None:
    """Scale a 2-D channel to [0, 1] between its 1st and 99.8th percentiles.

    Non-finite pixels become 0. Returns ``None`` when the channel has no contrast
    (constant, or no finite pixels): such a field holds no nuclei.
    """
    values = np.asarray(channel, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return None
    low, high = np.percentile(values[finite], NORMALISATION_PERCENTILES)
    if high <= low:  # a few bright pixels on a flat background
        low, high = float(values[finite].min()), float(values[finite].max())
    if high <= low:
        return None
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    scaled[~finite] = 0.0
    return scaled.astype(np.float32)


def to_rgb8(intensity: np.ndarray) -> np.ndarray:
    """A [0, 1] intensity image as the ``(Y, X, 3)`` uint8 RGB image SAM expects."""
    grey = np.round(np.clip(intensity, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


class SAMSegmenter:
    """Nucleus segmentation with Segment Anything's automatic mask generator.

    Parameters:
        checkpoint: path of SAM weights (a state dict, e.g. ``sam_vit_b_01ec64.pth``).
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` (the published sizes) or ``custom``.
        points_per_side: point prompts per image side (``points_per_side ** 2`` in all).
        pred_iou_thresh, stability_score_thresh: SAM's mask-quality cut-offs (SAM's defaults).
        min_area, max_area: nucleus size range in pixels.
        min_foreground_fraction: share of a mask's pixels that must be above the Otsu
            threshold of the nuclear channel (masks covering background fail).
        min_kept_fraction: share of a mask that must survive overlap resolution.
        points_per_batch: point prompts run through the decoder at once.
        architecture: sizes of a ``custom`` network (see :class:`SamArchitecture`).
        sam_model: a ready ``segment_anything.modeling.Sam`` instead of a checkpoint.
        device: torch device (default: GPU when present, ``EPIKIT_DEVICE`` overrides).
        generator_kwargs: further ``SamAutomaticMaskGenerator`` options
            (e.g. ``box_nms_thresh``, ``crop_n_layers``).
    """

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model_type: str = "vit_b",
        points_per_side: int = 32,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        min_area: int = 30,
        max_area: int = 20_000,
        min_foreground_fraction: float = 0.5,
        min_kept_fraction: float = 0.5,
        points_per_batch: int = 64,
        architecture: SamArchitecture | Mapping[str, Any] | None = None,
        sam_model: Sam | None = None,
        device: str | torch.device | None = None,
        **generator_kwargs: Any,
    ) -> None:
        if not 0 <= min_area <= max_area:
            raise ConfigError(f"sam: need 0 <= min_area <= max_area, got {min_area} and {max_area}")
        for name, value in (("min_foreground_fraction", min_foreground_fraction),
                            ("min_kept_fraction", min_kept_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"sam: {name} must lie in [0, 1], got {value}")
        reserved = sorted({"model", "output_mode", "point_grids"} & set(generator_kwargs))
        if reserved:
            raise ConfigError(f"sam: parameters {', '.join(reserved)} are set by epikit-sam")
        self.min_area = int(min_area)
        self.max_area = int(max_area)
        self.min_foreground_fraction = float(min_foreground_fraction)
        self.min_kept_fraction = float(min_kept_fraction)
        self.device = torch.device(device) if device is not None else default_device()
        model = sam_model if sam_model is not None else load_sam(checkpoint, model_type, architecture)
        self.model = model.to(self.device).eval()
        try:
            self.generator = SamAutomaticMaskGenerator(
                self.model,
                points_per_side=int(points_per_side),
                points_per_batch=int(points_per_batch),
                pred_iou_thresh=float(pred_iou_thresh),
                stability_score_thresh=float(stability_score_thresh),
                output_mode="binary_mask",
                **generator_kwargs,
            )
        except (TypeError, ImportError) as error:
            raise ConfigError(f"sam: invalid mask-generator option: {error}") from error

    def _intensity(self, image: np.ndarray, nuclear_channel: int) -> np.ndarray | None:
        array = np.asarray(image)
        if array.ndim != 3:
            raise InputError(f"sam: expected a (C, Y, X) image, got shape {array.shape}")
        if not 0 <= nuclear_channel < array.shape[0]:
            raise InputError(
                f"sam: nuclear_channel {nuclear_channel} does not exist in an image with "
                f"{array.shape[0]} channel(s)"
            )
        return normalise_channel(array[nuclear_channel])

    def _generate(self, intensity: np.ndarray) -> list[MaskProposal]:
        with torch.inference_mode():
            records = self.generator.generate(to_rgb8(intensity))
        return [
            MaskProposal(
                mask=np.asarray(record["segmentation"], dtype=bool),
                predicted_iou=float(record["predicted_iou"]),
                stability_score=float(record["stability_score"]),
            )
            for record in records
        ]

    def propose(self, image: np.ndarray, nuclear_channel: int = 0) -> list[MaskProposal]:
        """SAM's raw mask proposals for ``image[nuclear_channel]``, before any filtering."""
        intensity = self._intensity(image, nuclear_channel)
        return [] if intensity is None else self._generate(intensity)

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        """Segment ``image`` (C, Y, X): int32 labels (Y, X), 0 = background, nuclei 1..n."""
        intensity = self._intensity(image, nuclear_channel)
        if intensity is None:
            return np.zeros(np.asarray(image).shape[1:], dtype=np.int32)
        return proposals_to_labels(
            self._generate(intensity),
            intensity,
            min_area=self.min_area,
            max_area=self.max_area,
            min_foreground_fraction=self.min_foreground_fraction,
            min_kept_fraction=self.min_kept_fraction,
        )
