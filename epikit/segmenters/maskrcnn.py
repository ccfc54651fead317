"""The ``maskrcnn`` segmenter: the study's Mask R-CNN, at its trained nucleus size, tile by tile.

    >>> from epikit.segmenters.maskrcnn import MaskRCNNSegmenter
    >>> seg = MaskRCNNSegmenter()                     # shipped weights, offline  # doctest: +SKIP
    >>> labels = seg.segment(image, nuclear_channel=0)                         # doctest: +SKIP
    >>> labels = MaskRCNNSegmenter(diameter=300).segment(sora_field)           # doctest: +SKIP

The nuclear channel is normalised over the whole field (percentiles) and resampled so its
nuclei measure the diameter the network was trained at (``nucleus_diameter`` of the
checkpoint): the field's nucleus diameter is ``diameter`` when given, else estimated
(:func:`epikit.segmenters.scale.estimate_diameter`) and then checked against the median size
of what the network found - when the two differ by more than a quarter the field is run again
at the measured size, as cellpose refines its size model. An estimate of a quarter of the field or
more that yields fewer than three objects (an embryo or a tissue measured as one nucleus) is
checked by a pass at the network's own scale instead. The resampled field is cut into overlapping
square tiles (``tile_size``, ``overlap`` >= the largest nucleus diameter) that run through
the network in batches. Every tile owns a *core* region - the tiles' overlaps are split down
the middle - and keeps only the detections whose box centre lies in its core, so an object
cut by one tile's border is taken from the tile that sees it whole, exactly once. Masks are
pasted into the label image in order of decreasing score: a pixel goes to the
highest-scoring object, and an object that keeps less than half its pixels is a duplicate
and dropped. Boxes are mapped back to the field's own pixels first, so masks are pasted at full
resolution. Labels are renumbered 1..n. ``augment=True`` runs every pass on four mirrored
copies of the field and votes (:mod:`epikit.segmenters.detections`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from epikit.device import default_device
from epikit.errors import ConfigError, InputError
from epikit.segmenters.detections import FLIPS, Detections, flip, fuse, paste_labels, unflip
from epikit.segmenters.maskrcnn_model import load_model, normalise_nuclear
from epikit.segmenters.scale import estimate_diameter, resample, scaled_shape

#: Magnifications applied to a field are kept within these bounds.
SCALE_LIMITS = (1 / 32, 4.0)
#: The network's own size measurement triggers a second pass when it differs more than this.
REFINE_TOLERANCE = 1.25
#: With ``augment``, detections of the mirrored passes overlapping this much are one object.
VOTE_IOU = 0.55
#: With ``augment``, each pass keeps detections down to this score before the vote.
PASS_SCORE = 0.3
#: Default ``score_threshold``: of the voted score with ``augment``, of the network's without
#: (both chosen on the held-out DSB2018 split, bench/README.md "Segmentation of real images").
VOTED_SCORE, ONE_PASS_SCORE = 0.6, 0.4
#: An estimate over this fraction of the field's shorter side that yields fewer than
#: :data:`MIN_REFINE_OBJECTS` objects is checked by a pass at the network's own scale.
FIELD_SIZED = 0.25
MIN_REFINE_OBJECTS = 3


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of equal tiles covering ``[0, length)`` with at least ``overlap`` overlap."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = int(np.ceil((length - tile) / stride)) + 1
    # Spread the tiles evenly so every overlap is >= the requested one.
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def core_bounds(starts: list[int], tile: int, length: int) -> list[tuple[float, float]]:
    """The region ``[lo, hi)`` each tile owns: neighbouring overlaps split at their middle."""
    size = min(tile, length)
    cuts = [0.0] + [(starts[i] + size + starts[i + 1]) / 2 for i in range(len(starts) - 1)] + [float(length)]
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


class MaskRCNNSegmenter:
    """Nuclei instance segmentation with epikit's compact Mask R-CNN.

    Parameters: ``weights`` (None = shipped weights, a ``.pt`` path or an http(s) URL),
    ``sha256`` (checked when given), ``tile_size`` and ``overlap`` in pixels (overlap must
    exceed the largest nucleus diameter), ``batch_size`` tiles per forward pass,
    ``score_threshold`` (minimum detection score; default :data:`VOTED_SCORE` with ``augment``,
    :data:`ONE_PASS_SCORE` without), ``mask_threshold`` (mask probability cut),
    ``nms`` (box IoU above which the weaker detection in a tile is suppressed), ``min_area``
    (pixels; smaller objects are dropped), ``max_detections`` per tile (crowded fields of
    tiny nuclei may need a smaller ``tile_size``), ``device`` (default: GPU when available),
    ``diameter`` (typical nucleus diameter of the fields in pixels; ``None`` estimates it per
    field), ``refine`` (check the estimate against the network's own objects and rerun once),
    ``augment`` (also run the field mirrored three ways and vote, as cellpose's ``augment``:
    4x the time, masks that follow the outline more closely; see
    :mod:`epikit.segmenters.detections`). With ``augment`` ``score_threshold`` applies to the
    voted score.
    ``tile_size``, ``overlap`` and ``max_detections`` apply to the resampled field.
    ``model`` uses an already built network instead of loading ``weights`` (training uses
    it to validate).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        sha256: str | None = None,
        tile_size: int = 512,
        overlap: int = 128,
        batch_size: int = 4,
        score_threshold: float | None = None,
        mask_threshold: float = 0.5,
        nms: float = 0.4,
        min_area: int = 10,
        max_detections: int = 500,
        device: str | None = None,
        model: torch.nn.Module | None = None,
        diameter: float | None = None,
        refine: bool = True,
        augment: bool = True,
    ) -> None:
        if tile_size < 64 or tile_size % 32:
            raise ConfigError(f"tile_size must be a multiple of 32 and >= 64, got {tile_size}")
        if not 0 <= overlap < tile_size // 2 + 1:
            raise ConfigError(f"overlap must be in [0, tile_size/2], got {overlap} for tile_size {tile_size}")
        if batch_size < 1 or max_detections < 1:
            raise ConfigError(f"batch_size and max_detections must be >= 1, got {batch_size}, {max_detections}")
        if score_threshold is None:
            score_threshold = VOTED_SCORE if augment else ONE_PASS_SCORE
        for name, value in (("score_threshold", score_threshold), ("mask_threshold", mask_threshold), ("nms", nms)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if diameter is not None and not diameter > 0:
            raise ConfigError(f"diameter must be a positive number of pixels, got {diameter}")
        if model is not None:
            self.model, self.weights_path = model.eval(), None
            self.device = next(model.parameters()).device
        else:
            self.device = torch.device(device) if device else default_device()
            self.model, _, self.weights_path = load_model(weights, sha256=sha256, device=self.device)
        # Checkpoints trained at the images' own scale (epikit 0.1) have no nucleus size.
        self.trained_diameter: float | None = getattr(self.model, "nucleus_diameter", None)
        if diameter is not None and self.trained_diameter is None:
            raise ConfigError(
                f"diameter={diameter} needs weights trained at one nucleus size (epikit >= 0.2); "
                f"{self.weights_path or 'this model'} was trained at the images' own scale - drop diameter"
            )
        self.diameter, self.refine, self.augment = diameter, refine, augment
        self.tile_size, self.overlap, self.batch_size = tile_size, overlap, batch_size
        self.score_threshold, self.mask_threshold, self.min_area = score_threshold, mask_threshold, min_area
        self.model.roi_heads.score_thresh = min(score_threshold, PASS_SCORE) if augment else score_threshold
        self.model.roi_heads.nms_thresh = nms
        self.model.roi_heads.detections_per_img = max_detections
        self.model.rpn._post_nms_top_n["testing"] = 2 * max_detections

    def segment(self, image: np.ndarray, nuclear_channel: int = 0) -> np.ndarray:
        """Label the nuclei of ``image`` (C, Y, X) from ``image[nuclear_channel]``; int32 (Y, X)."""
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise InputError(f"image must be (C, Y, X), got shape {array.shape}")
        if not -array.shape[0] <= nuclear_channel < array.shape[0]:
            raise InputError(
                f"nuclear_channel {nuclear_channel} is out of range for an image with {array.shape[0]} channels"
            )
        channel = normalise_nuclear(array[nuclear_channel])
        shape = channel.shape
        if not channel.any():
            return np.zeros(shape, dtype=np.int32)
        if self.trained_diameter is None:
            return paste_labels(self.detect(channel), shape, self.mask_threshold, self.min_area)
        diameter = self.diameter or estimate_diameter(channel) or self.trained_diameter
        detections = self.detect_at(channel, diameter)
        if self.diameter is None and self.refine:
            detections = self._refined(channel, diameter, detections)
        return paste_labels(detections, shape, self.mask_threshold, self.min_area)

    def _refined(self, channel: np.ndarray, diameter: float, detections: Detections) -> Detections:
        """Check the estimated ``diameter`` against what the network found; rerun once if it disagrees.

        Enough objects: their median size is the measurement. Too few after a field-sized
        estimate (a tissue, an embryo or a clump measured as one nucleus): a pass at the
        network's own scale measures instead, and is kept only if it finds enough objects.
        """
        if len(detections.scores) < MIN_REFINE_OBJECTS:
            if diameter <= FIELD_SIZED * min(channel.shape):
                return detections
            native = self.detect(channel)
            if len(native.scores) < MIN_REFINE_OBJECTS:
                return detections
            detections, diameter = native, self.trained_diameter
        measured = detections.median_diameter(self.mask_threshold)
        if measured and abs(math.log(measured / diameter)) > math.log(REFINE_TOLERANCE):
            return self.detect_at(channel, measured)
        return detections

    def detect_at(self, channel: np.ndarray, diameter: float) -> Detections:
        """Detections of a normalised channel whose nuclei measure ``diameter`` px, in its own pixels.

        The channel is resampled so nuclei have the network's trained size; boxes come back
        in the channel's pixel grid.
        """
        factor = min(max(self.trained_diameter / diameter, SCALE_LIMITS[0]), SCALE_LIMITS[1])
        shape = scaled_shape(channel.shape, factor)
        if shape == channel.shape:
            return self.detect(channel)
        found = self.detect(resample(channel, shape))
        return found.scaled(channel.shape[1] / shape[1], channel.shape[0] / shape[0])

    def detect(self, channel: np.ndarray) -> Detections:
        """Detections of a normalised (Y, X) channel: one pass, or four mirrored passes fused (``augment``)."""
        if not self.augment:
            return self.detect_tiles(channel)
        passes = [unflip(self.detect_tiles(flip(channel, lr, tb)), lr, tb, channel.shape) for lr, tb in FLIPS]
        return fuse(passes, VOTE_IOU, self.score_threshold)

    @torch.inference_mode()
    def detect_tiles(self, channel: np.ndarray) -> Detections:
        """Detections of one pass over a normalised (Y, X) channel, de-duplicated across tiles."""
        height, width = channel.shape
        ys, xs = tile_starts(height, self.tile_size, self.overlap), tile_starts(width, self.tile_size, self.overlap)
        y_cores = core_bounds(ys, self.tile_size, height)
        x_cores = core_bounds(xs, self.tile_size, width)
        th, tw = min(self.tile_size, height), min(self.tile_size, width)
        field = torch.from_numpy(channel).to(self.device)
        jobs = [(y, x, yc, xc) for y, yc in zip(ys, y_cores) for x, xc in zip(xs, x_cores)]
        boxes, scores, masks = [], [], []
        for first in range(0, len(jobs), self.batch_size):
            batch = jobs[first : first + self.batch_size]
            tiles = [field[None, y : y + th, x : x + tw] for y, x, _, _ in batch]
            for (y, x, (ylo, yhi), (xlo, xhi)), found in zip(batch, self._forward(tiles)):
                offset = torch.tensor([x, y, x, y], dtype=torch.float32, device=found["boxes"].device)
                tile_boxes = found["boxes"] + offset
                cx = (tile_boxes[:, 0] + tile_boxes[:, 2]) / 2
                cy = (tile_boxes[:, 1] + tile_boxes[:, 3]) / 2
                own = (cx >= xlo) & (cx < xhi) & (cy >= ylo) & (cy < yhi)
                boxes.append(tile_boxes[own].cpu())
                scores.append(found["scores"][own].cpu())
                masks.append(found["masks"][own, 0].cpu())
        return Detections(torch.cat(boxes), torch.cat(scores), torch.cat(masks))

    def _forward(self, tiles: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Run the network on tiles; masks stay as per-box probability grids (no full paste)."""
        model = self.model
        images, _ = model.transform(tiles)
        features = model.backbone(images.tensors)
        proposals, _ = model.rpn(images, features)
        detections, _ = model.roi_heads(features, proposals, images.image_sizes)
        return detections
