"""What an instance network found in a field, before it becomes a label image.

:class:`Detections` holds boxes, scores and per-box mask probabilities in a field's pixels.
:func:`paste_labels` turns them into labels (higher scores first, duplicates dropped).

Flip test-time augmentation (cellpose's ``augment``): the field is also run mirrored
left-right, top-bottom and both; :func:`unflip` maps each pass's detections back, and
:func:`fuse` votes. Detections of different passes whose boxes overlap by at least
``iou`` form one object (at most one detection per pass); its score is the sum of its members'
scores divided by the number of passes (a pass that missed it adds 0), its box and mask are
the score-weighted means of the members' (each member's mask resampled onto the fused box).
An object seen by one pass only rarely keeps a high score, and the averaged mask follows the
outline better than any single pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Rows of the pairwise box-IoU matrix computed at once (bounds memory on crowded fields).
IOU_ROWS = 1024


@dataclass
class Detections:
    """Objects found in a field: boxes (N, 4) x0,y0,x1,y1 in field pixels, scores, mask probs."""

    boxes: torch.Tensor
    scores: torch.Tensor
    masks: torch.Tensor  # (N, M, M) probabilities over each box

    def scaled(self, sx: float, sy: float) -> Detections:
        """The same objects with box coordinates multiplied by ``sx`` (x) and ``sy`` (y)."""
        factors = torch.tensor([sx, sy, sx, sy], dtype=self.boxes.dtype)
        return Detections(self.boxes * factors, self.scores, self.masks)

    def median_diameter(self, mask_threshold: float) -> float | None:
        """Median equivalent diameter of the objects (box area x mask fraction); None if none."""
        if len(self.scores) == 0:
            return None
        sides = (self.boxes[:, 2:] - self.boxes[:, :2]).clamp(min=0)
        areas = (self.masks > mask_threshold).float().mean(dim=(1, 2)) * sides[:, 0] * sides[:, 1]
        return float(torch.median(2.0 * torch.sqrt(areas / math.pi)))


#: The passes of flip augmentation: (mirror left-right, mirror top-bottom).
FLIPS = ((False, False), (True, False), (False, True), (True, True))


def flip(channel: np.ndarray, left_right: bool, top_bottom: bool) -> np.ndarray:
    """``channel`` (Y, X) mirrored as asked (a contiguous copy when mirrored)."""
    if left_right:
        channel = channel[:, ::-1]
    if top_bottom:
        channel = channel[::-1]
    return np.ascontiguousarray(channel)


def unflip(found: Detections, left_right: bool, top_bottom: bool, shape: tuple[int, int]) -> Detections:
    """Detections made on a mirrored field, in the original field's pixels."""
    height, width = shape
    boxes, masks = found.boxes.clone(), found.masks
    if left_right:
        boxes[:, [0, 2]] = width - found.boxes[:, [2, 0]]
        masks = masks.flip(-1)
    if top_bottom:
        boxes[:, [1, 3]] = height - found.boxes[:, [3, 1]]
        masks = masks.flip(-2)
    return Detections(boxes, found.scores, masks)


def _overlapping(boxes: torch.Tensor, iou: float) -> list[torch.Tensor]:
    """For each box, the indices of the boxes overlapping it by at least ``iou`` (itself included)."""
    from torchvision.ops import box_iou

    neighbours: list[torch.Tensor] = []
    for start in range(0, len(boxes), IOU_ROWS):
        block = box_iou(boxes[start:start + IOU_ROWS], boxes) >= iou
        neighbours.extend(torch.nonzero(row).flatten() for row in block)
    return neighbours


def _resampled(masks: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Masks (K, M, M) over boxes ``source`` (K, 4), sampled over boxes ``target`` (K, 4)."""
    size = masks.shape[-1]
    steps = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    spans = (source[:, 2:] - source[:, :2]).clamp(min=1e-3)
    # Pixel centres of the target grid, in the source box's [-1, 1] coordinates.
    gx = ((target[:, None, 0] + steps * (target[:, None, 2] - target[:, None, 0]) - source[:, None, 0])
          / spans[:, None, 0]) * 2 - 1
    gy = ((target[:, None, 1] + steps * (target[:, None, 3] - target[:, None, 1]) - source[:, None, 1])
          / spans[:, None, 1]) * 2 - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0]


def fuse(passes: list[Detections], iou: float, min_score: float) -> Detections:
    """One object per group of overlapping detections of different passes (module docstring).

    Groups form greedily from the highest score down; fused objects scoring under
    ``min_score`` are dropped.
    """
    boxes = torch.cat([p.boxes for p in passes])
    scores = torch.cat([p.scores for p in passes])
    masks = torch.cat([p.masks for p in passes])
    origin = torch.cat([torch.full((len(p.scores),), k) for k, p in enumerate(passes)])
    if len(scores) == 0:
        return Detections(boxes, scores, masks)
    neighbours = _overlapping(boxes, iou)
    group = torch.full((len(scores),), -1, dtype=torch.long)
    leaders: list[int] = []
    for leader in torch.argsort(scores, descending=True).tolist():
        if group[leader] >= 0:
            continue
        taken = {int(origin[leader])}
        group[leader] = len(leaders)
        candidates = neighbours[leader]
        for other in candidates[torch.argsort(scores[candidates], descending=True)].tolist():
            if group[other] < 0 and int(origin[other]) not in taken:
                taken.add(int(origin[other]))
                group[other] = len(leaders)
        leaders.append(leader)
    count = len(leaders)
    total = torch.zeros(count).index_add_(0, group, scores)
    fused_boxes = torch.zeros(count, 4).index_add_(0, group, boxes * scores[:, None]) / total[:, None]
    weighted = _resampled(masks, boxes, fused_boxes[group]) * scores[:, None, None]
    fused_masks = torch.zeros(count, *masks.shape[1:]).index_add_(0, group, weighted) / total[:, None, None]
    fused_scores = total / len(passes)
    keep = fused_scores >= min_score
    return Detections(fused_boxes[keep], fused_scores[keep], fused_masks[keep])


def paste_labels(detections: Detections, shape: tuple[int, int], mask_threshold: float, min_area: int) -> np.ndarray:
    """Paste masks into an int32 label image, higher scores first, labels 1..n without gaps."""
    height, width = shape
    labels = torch.zeros(shape, dtype=torch.int32)
    order = torch.argsort(detections.scores, descending=True)
    next_label = 1
    for index in order.tolist():
        x0, y0, x1, y1 = detections.boxes[index].tolist()
        if x1 - x0 < 1 or y1 - y0 < 1:
            continue
        px0, py0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        px1, py1 = min(int(np.ceil(x1)), width), min(int(np.ceil(y1)), height)
        if px1 <= px0 or py1 <= py0:
            continue
        # Sample the box's mask at pixel centres (grid_sample, align_corners=False convention).
        gx = (torch.arange(px0, px1, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
        gy = (torch.arange(py0, py1, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        prob = F.grid_sample(detections.masks[index][None, None].float(), grid, align_corners=False)[0, 0]
        mask = prob > mask_threshold
        area = int(mask.sum())
        if area < max(min_area, 1):
            continue
        region = labels[py0:py1, px0:px1]
        free = mask & (region == 0)
        kept = int(free.sum())
        if kept < max(min_area, 1) or kept < 0.5 * area:
            continue
        region[free] = next_label
        next_label += 1
    return _relabel_sequential(labels.numpy())


def _relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..n without gaps (objects may vanish when overlaps are resolved)."""
    present = np.unique(labels)
    present = present[present > 0]
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lookup[present] = np.arange(1, len(present) + 1, dtype=np.int32)
    return lookup[labels]
