"""Aligned averages: every nucleus of a block is aligned in one batched crop call."""

from __future__ import annotations

import numpy as np

import epikit.nuclei.averaging as averaging
from epikit.nuclei.averaging import align_crops


def _ellipses(n: int, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    values, masks = [], []
    for _ in range(n):
        theta, a, b = rng.uniform(0, np.pi), rng.uniform(6, 10), rng.uniform(3, 6)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        v = -xx * np.sin(theta) + yy * np.cos(theta)
        mask = (u / a) ** 2 + (v / b) ** 2 <= 1
        values.append(np.stack([rng.random((size, size)), (u > 0) * 1.0]) * mask)
        masks.append(mask)
    masks[2] = np.zeros_like(masks[2])  # an empty mask gives zeros
    return np.array(values, np.float32), np.array(masks)


def test_aligned_crops_of_a_block_come_from_one_batched_call_and_match_one_at_a_time(monkeypatch):
    values, masks = _ellipses(7)
    one_by_one = [align_crops(values[i:i + 1], masks[i:i + 1]) for i in range(len(values))]
    calls = []
    real = averaging.crop_nuclei

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(averaging, "crop_nuclei", counted)
    aligned, inside = align_crops(values, masks)
    assert calls == [6]  # one call for the six non-empty nuclei
    np.testing.assert_allclose(aligned, np.concatenate([a for a, _ in one_by_one]), atol=1e-5)
    np.testing.assert_array_equal(inside, np.concatenate([m for _, m in one_by_one]))
    assert not inside[2].any() and not aligned[2].any()
