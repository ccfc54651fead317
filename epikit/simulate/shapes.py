"""Nucleus outlines: sampling, placement in a field, and rasterisation.

A nucleus is an ellipse (semi-axes ``a >= b``, rotated by ``angle``) whose outline is
perturbed by low-frequency radial harmonics: in the ellipse's normalised frame
(``u = x'/a, v = y'/b``) the outline is at radius

    R(phi) = 1 + sum_k c_k cos(k phi + psi_k),   k = 2..5,

so shapes are smooth and may be slightly non-convex. A pixel's normalised radius is
``rho = |(u, v)| / R(phi)``: 0 at the centre, 1 on the outline. Placement keeps nuclei from
overlapping by more than a ``squeeze`` fraction; where outlines do overlap, each pixel goes
to the nucleus with the smaller ``rho``, which gives touching nuclei a shared, flat border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HARMONICS = np.arange(2, 6)
ANGLE_BINS = 64
# The outline never comes closer to the centre than this fraction of the ellipse radius.
MIN_OUTLINE = 0.65
MITOTIC_SHRINK = 0.55


@dataclass(frozen=True)
class Nuclei:
    """Shape parameters of ``n`` nuclei (one array entry per nucleus, pixel units)."""

    centre_y: np.ndarray
    centre_x: np.ndarray
    semi_major: np.ndarray
    semi_minor: np.ndarray
    angle: np.ndarray
    coef: np.ndarray  # (n, len(HARMONICS)) outline harmonic amplitudes
    phase: np.ndarray  # (n, len(HARMONICS))
    mitotic: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.centre_y)

    def subset(self, index: np.ndarray) -> Nuclei:
        """The nuclei selected by ``index`` (an integer or boolean array)."""
        return Nuclei(*(getattr(self, name)[index] for name in self.__dataclass_fields__))

    @property
    def radius(self) -> np.ndarray:
        """Equivalent radius ``sqrt(a * b)`` of the underlying ellipse."""
        return np.sqrt(self.semi_major * self.semi_minor)

    def outline(self, index: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """``R(phi)`` of nuclei ``index`` at normalised angles ``phi`` (broadcasting)."""
        index = np.asarray(index)
        angles = HARMONICS * np.asarray(phi)[..., None] + self.phase[index]
        return 1.0 + np.sum(self.coef[index] * np.cos(angles), axis=-1)

    def to_pixels(self, index: np.ndarray, rho: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates (y, x) of points at normalised radius/angle inside nuclei ``index``."""
        r = rho * self.outline(index, phi)
        along = r * np.cos(phi) * self.semi_major[index]
        across = r * np.sin(phi) * self.semi_minor[index]
        cos, sin = np.cos(self.angle[index]), np.sin(self.angle[index])
        return self.centre_y[index] + along * sin + across * cos, self.centre_x[index] + along * cos - across * sin


def sample_shapes(
    rng: np.random.Generator,
    count: int,
    radius: tuple[float, float],
    aspect: tuple[float, float],
    irregularity: float,
    mitotic_fraction: float,
) -> Nuclei:
    """Draw ``count`` outlines (centres left at 0); mitotic ones are smaller and lumpier."""
    mitotic = rng.random(count) < mitotic_fraction
    r = rng.uniform(radius[0], radius[1], count) * np.where(mitotic, MITOTIC_SHRINK, 1.0)
    elongation = np.sqrt(rng.uniform(aspect[0], aspect[1], count) * np.where(mitotic, 1.3, 1.0))
    spread = irregularity * np.where(mitotic, 2.0, 1.0)[:, None] / np.sqrt(HARMONICS - 1)
    coef = np.abs(rng.normal(0.0, 1.0, (count, len(HARMONICS)))) * spread
    # Keep the outline star-shaped and away from the centre: scale down where it dips too far.
    worst = np.sum(coef, axis=1)
    coef *= np.minimum(1.0, (1.0 - MIN_OUTLINE) / np.maximum(worst, 1e-9))[:, None]
    zeros = np.zeros(count)
    return Nuclei(
        centre_y=zeros,
        centre_x=zeros.copy(),
        semi_major=np.maximum(r * elongation, 1.0),
        semi_minor=np.maximum(r / elongation, 1.0),
        angle=rng.uniform(0.0, math.pi, count),
        coef=coef,
        phase=rng.uniform(0.0, 2 * math.pi, (count, len(HARMONICS))),
        mitotic=mitotic,
    )


def reach_table(nuclei: Nuclei) -> np.ndarray:
    """Distance (px) from each centre to its outline in :data:`ANGLE_BINS` image directions."""
    beta = np.arange(ANGLE_BINS) * (2 * math.pi / ANGLE_BINS)
    relative = beta[None, :] - nuclei.angle[:, None]
    u = np.cos(relative) / nuclei.semi_major[:, None]
    v = np.sin(relative) / nuclei.semi_minor[:, None]
    index = np.arange(len(nuclei))[:, None]
    return nuclei.outline(index, np.arctan2(v, u)) / np.hypot(u, v)


def _direction_bin(beta: np.ndarray | float) -> np.ndarray:
    return np.rint(np.asarray(beta) * (ANGLE_BINS / (2 * math.pi))).astype(np.int64) % ANGLE_BINS


def place_nuclei(
    rng: np.random.Generator,
    shapes: Nuclei,
    size: tuple[int, int],
    clump: float,
    squeeze: float,
    attempts: int = 30,
) -> Nuclei:
    """Give ``shapes`` centres inside the field; those that find no room are dropped.

    With probability ``clump`` a nucleus is put against an already placed one (clusters of
    touching nuclei); otherwise anywhere. Two nuclei may overlap by at most ``squeeze`` of the
    sum of their reaches along the line joining their centres.
    """
    height, width = size
    reach = reach_table(shapes)
    centres = np.zeros((len(shapes), 2))
    kept: list[int] = []
    half_turn = ANGLE_BINS // 2
    for i in range(len(shapes)):
        for _ in range(attempts):
            if kept and rng.random() < clump:
                j = kept[int(rng.integers(len(kept)))]
                beta = rng.uniform(0.0, 2 * math.pi)
                b = int(_direction_bin(beta))
                distance = (reach[j, b] + reach[i, (b + half_turn) % ANGLE_BINS]) * (1.0 - squeeze * rng.random())
                y = centres[j, 0] + distance * math.sin(beta)
                x = centres[j, 1] + distance * math.cos(beta)
                if not (0 <= y < height and 0 <= x < width):
                    continue
            else:
                y, x = rng.uniform(0, height), rng.uniform(0, width)
            if kept:
                others = np.asarray(kept)
                dy, dx = centres[others, 0] - y, centres[others, 1] - x
                toward = _direction_bin(np.arctan2(dy, dx))
                needed = reach[i, toward] + reach[others, (toward + half_turn) % ANGLE_BINS]
                if np.any(np.hypot(dy, dx) < needed * (1.0 - squeeze)):
                    continue
            centres[i] = y, x
            kept.append(i)
            break
    index = np.asarray(kept, dtype=np.int64)
    placed = shapes.subset(index)
    return Nuclei(
        centre_y=centres[index, 0],
        centre_x=centres[index, 1],
        **{name: getattr(placed, name) for name in Nuclei.__dataclass_fields__ if not name.startswith("centre")},
    )


def rasterise(nuclei: Nuclei, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Paint the outlines: ``owner`` (int32, nucleus index + 1, 0 = background) and ``rho``.

    Each nucleus is computed in its own bounding box; overlapping pixels go to the nucleus
    with the smaller normalised radius. ``rho`` is 1 outside every nucleus.
    """
    height, width = size
    owner = np.zeros(size, dtype=np.int32)
    rho = np.ones(size, dtype=np.float32)
    extent = nuclei.semi_major * (1.0 + np.sum(nuclei.coef, axis=1)) + 1.0
    weights = (nuclei.coef * np.exp(1j * nuclei.phase)).astype(np.complex64)
    for i in range(len(nuclei)):
        cy, cx, e = nuclei.centre_y[i], nuclei.centre_x[i], extent[i]
        y0, y1 = max(int(cy - e), 0), min(int(cy + e) + 2, height)
        x0, x1 = max(int(cx - e), 0), min(int(cx + e) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
        dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
        cos, sin = math.cos(nuclei.angle[i]), math.sin(nuclei.angle[i])
        u = (dx * cos + dy * sin) / nuclei.semi_major[i]
        v = (dy * cos - dx * sin) / nuclei.semi_minor[i]
        radius = np.hypot(u, v)
        # R(phi) = 1 + Re(sum_k c_k e^{i psi_k} e^{i k phi}), with e^{i phi} = (u + iv) / r.
        turn = (u + 1j * v) / np.maximum(radius, 1e-6)
        power = turn ** int(HARMONICS[0])
        wave = np.zeros(turn.shape, dtype=turn.dtype)
        for weight in weights[i]:
            wave += weight * power
            power *= turn
        own_rho = radius / (1.0 + wave.real)
        box_rho = rho[y0:y1, x0:x1]
        take = own_rho < box_rho
        box_rho[take] = own_rho[take]
        owner[y0:y1, x0:x1][take] = i + 1
    return owner, rho
