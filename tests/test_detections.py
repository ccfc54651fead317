"""Detections of an instance network: flips map back, votes fuse passes, masks resample exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epikit.segmenters.detections import FLIPS, Detections, flip, fuse, paste_labels, unflip


def disk_detections(centres: list[tuple[float, float]], radius: float, scores: list[float]) -> Detections:
    """Boxes around disks at ``centres`` (y, x) with 28 x 28 disk masks."""
    yy, xx = np.mgrid[:28, :28] + 0.5
    disk = torch.from_numpy(((yy - 14) ** 2 + (xx - 14) ** 2 < 14**2).astype(np.float32))
    boxes = torch.tensor([[x - radius, y - radius, x + radius, y + radius] for y, x in centres],
                         dtype=torch.float32).reshape(-1, 4)
    return Detections(boxes, torch.tensor(scores), disk.repeat(len(centres), 1, 1))


def test_unflip_undoes_a_flip_of_the_field() -> None:
    field = np.zeros((40, 60), dtype=np.float32)
    field[5:15, 40:52] = 1  # an off-centre object
    truth = disk_detections([(10.0, 46.0)], 5.0, [0.9])
    for left_right, top_bottom in FLIPS:
        mirrored = flip(field, left_right, top_bottom)
        ys, xs = np.nonzero(mirrored)
        seen = disk_detections([(ys.mean() + 0.5, xs.mean() + 0.5)], 5.0, [0.9])  # found on the mirror
        back = unflip(seen, left_right, top_bottom, field.shape)
        assert torch.allclose(back.boxes, truth.boxes, atol=1e-4), (left_right, top_bottom)


def test_identical_passes_fuse_to_themselves() -> None:
    found = disk_detections([(20.0, 20.0), (20.0, 50.0), (60.0, 30.0)], 8.0, [0.95, 0.8, 0.6])
    fused = fuse([found] * 4, iou=0.55, min_score=0.4)
    order = torch.argsort(fused.scores, descending=True)
    assert torch.allclose(fused.boxes[order], found.boxes, atol=1e-4)
    assert torch.allclose(fused.scores[order], found.scores)
    assert torch.allclose(fused.masks[order], found.masks, atol=1e-4)
    labels = paste_labels(fused, (80, 80), 0.5, 5)
    assert labels.max() == 3


def test_an_object_seen_by_one_pass_of_four_is_voted_out() -> None:
    everywhere = disk_detections([(20.0, 20.0)], 8.0, [0.9])
    once = disk_detections([(20.0, 20.0), (60.0, 60.0)], 8.0, [0.9, 0.95])
    fused = fuse([once, everywhere, everywhere, everywhere], iou=0.55, min_score=0.4)
    assert len(fused.scores) == 1 and fused.scores[0] == pytest.approx(0.9)
    assert fused.boxes[0].tolist() == pytest.approx([12.0, 12.0, 28.0, 28.0])
    shifted = disk_detections([(22.0, 20.0)], 8.0, [0.9])  # the passes disagree by 2 px
    merged = fuse([everywhere, shifted, everywhere, shifted], iou=0.55, min_score=0.4)
    assert len(merged.scores) == 1 and merged.boxes[0, 1] == pytest.approx(13.0)


def test_no_detections_fuse_to_none() -> None:
    empty = disk_detections([], 8.0, [])
    assert len(fuse([empty] * 4, iou=0.55, min_score=0.4).scores) == 0
