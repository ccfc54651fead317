"""One synthetic microscope field: three-channel nuclei image plus exact ground-truth labels.

Image formation, in order:

1. Outlines are sampled, placed (some clumped and touching) and rasterised
   (:mod:`epikit.simulate.shapes`).
2. Noise-free signal inside each nucleus, per channel:
   Hoechst = DNA texture x brighter rim x mild dome shading x dim nucleoli;
   CTCF = weak diffuse signal + many small punctate foci;
   H3K27ac = diffuse, slightly textured signal (depleted in nucleoli) + fewer, larger foci.
   Each nucleus has its own brightness; mitotic nuclei are small, condensed and very bright
   in Hoechst. The planted effect (:mod:`epikit.simulate.effect`) multiplies the affected
   channel of nuclei outside the control condition.
3. Optical blur (Gaussian PSF), uneven illumination, background, per-field and per-channel
   brightness, then Poisson shot noise, camera gain, offset and read noise -> uint16.

Ground truth is where the *blurred* nucleus is: the union of outlines is blurred with the
same PSF, and a pixel gets the label of its nearest nucleus where that blurred footprint
reaches half of the nucleus's own maximum (full width at half maximum). Labels drawn before
blur would not match what the image shows (a previous simulator's were 20% too large).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected

from epikit.errors import ConfigError
from epikit.simulate.effect import EFFECTS, effect_weight
from epikit.simulate.shapes import Nuclei, place_nuclei, rasterise, sample_shapes

CHANNEL_NAMES = ("Hoechst", "CTCF", "H3K27ac")
CONTROL = "ctrl"
# Relative signal and background of the channels (Hoechst = 1).
CHANNEL_LEVELS = np.array([1.0, 0.55, 0.7])
BACKGROUND_LEVELS = np.array([1.0, 0.8, 0.9])
# Brightness of mitotic figures relative to interphase nuclei, per channel.
MITOTIC_BRIGHTNESS = np.array([3.0, 0.6, 0.5])
CAMERA_OFFSET = 100.0
# Below this many expected photons shot noise is drawn exactly (Poisson), above as a Gaussian.
EXACT_POISSON_BELOW = 5.0
UINT16_MAX = 65535


@dataclass
class SimulatedField:
    """A simulated field: ``image`` uint16 (C, Y, X), ``labels`` int32 (Y, X), and per-nucleus truth.

    ``channel_names`` name the image's channels (all three, Hoechst, CTCF, H3K27ac, unless
    ``simulate_field`` was asked for fewer). Each label is one 4-connected region.

    Nucleus ``k`` (0-based) has label ``k + 1``; ``centres`` (n, 2) are (y, x) in pixels,
    ``radii`` the equivalent radius ``sqrt(a*b)`` of its ellipse, ``semi_axes`` (n, 2) = (a, b),
    ``angles`` the major-axis orientation (radians), ``mitotic`` and ``brightness`` (the
    nucleus's Hoechst brightness factor). ``affected`` says whether the planted effect was
    applied; ``params`` holds the per-field values drawn (brightness factors, PSF, ...).
    """

    image: np.ndarray
    labels: np.ndarray
    condition: str
    affected: bool
    centres: np.ndarray
    radii: np.ndarray
    semi_axes: np.ndarray
    angles: np.ndarray
    mitotic: np.ndarray
    brightness: np.ndarray
    channel_names: tuple[str, ...] = CHANNEL_NAMES
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_nuclei(self) -> int:
        """Number of nuclei (= the largest label)."""
        return len(self.radii)


def as_range(name: str, value: float | tuple[float, float], low: float, high: float = math.inf) -> tuple[float, float]:
    """``value`` (a number or a (min, max) pair) as a checked ``(min, max)`` tuple."""
    pair = (value, value) if np.isscalar(value) else tuple(value)
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number or a (min, max) pair, got {value!r}") from None
    if not (low <= lo <= hi <= high):
        raise ConfigError(f"{name} = {value!r} must satisfy {low:g} <= min <= max <= {high:g}")
    return lo, hi


def check_number(name: str, value: float, low: float, high: float = math.inf) -> float:
    """``value`` as a float in ``[low, high]``, else a :class:`ConfigError` naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not (low <= number <= high):
        raise ConfigError(f"{name} = {value!r} is out of range [{low:g}, {high:g}]")
    return number


def check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    """A field size ``(Y, X)`` of at least 16 x 16 pixels."""
    pair = (size, size) if np.isscalar(size) else tuple(size)
    if len(pair) != 2 or any(int(s) != s or not 16 <= s <= 16384 for s in pair):
        raise ConfigError(f"size = {size!r} must be an int or a (Y, X) pair between 16 and 16384 pixels")
    return int(pair[0]), int(pair[1])


def check_effect(effect: str, effect_channel: str, effect_size: float) -> float:
    """Validate the planted-effect settings; returns ``effect_size`` as a float."""
    if effect not in EFFECTS:
        raise ConfigError(f"effect {effect!r} is unknown; choose one of {', '.join(EFFECTS)}")
    if effect_channel not in CHANNEL_NAMES:
        raise ConfigError(f"effect channel {effect_channel!r} is unknown; choose one of {', '.join(CHANNEL_NAMES)}")
    return check_number("effect_size", effect_size, 0.0, 10.0)


def check_channels(channels: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A non-empty tuple of distinct known channel names."""
    channels = (channels,) if isinstance(channels, str) else tuple(channels)
    unknown = [name for name in channels if name not in CHANNEL_NAMES]
    if not channels or unknown or len(set(channels)) != len(channels):
        raise ConfigError(f"channels {channels!r} must be distinct names from {', '.join(CHANNEL_NAMES)}")
    return channels


def _textures(rng: np.random.Generator, size: tuple[int, int], sigmas: list[float]) -> list[np.ndarray]:
    """Smooth random textures (unit standard deviation, periodic), one per ``sigma``.

    All are filtered from one white-noise draw; shifted copies (``np.roll`` by a good part of
    the field) serve as further independent-looking textures at no extra cost.
    """
    white = rng.standard_normal(size, dtype=np.float32)
    maps = []
    for sigma in sigmas:
        texture = ndi.gaussian_filter(white, sigma, mode="wrap", truncate=3.0)
        maps.append(texture / max(float(texture.std()), 1e-6))
    return maps


def _shifted(texture: np.ndarray, turn: int) -> np.ndarray:
    """``texture`` rolled by ``turn`` fixed offsets (a texture independent of it at nucleus scale)."""
    return np.roll(texture, (turn * texture.shape[0] * 3 // 7, turn * texture.shape[1] * 2 // 5), axis=(0, 1))


def _spots(
    rng: np.random.Generator,
    nuclei: Nuclei,
    owner: np.ndarray,
    counts: np.ndarray,
    rho_max: float,
    amplitude: np.ndarray,
    sigma: float,
) -> np.ndarray:
    """Blurred point sources inside nuclei: ``counts[i]`` per nucleus, peak height ``amplitude``."""
    index = np.repeat(np.arange(len(nuclei)), counts)
    if index.size == 0:
        return np.zeros(owner.shape, dtype=np.float32)
    rho = rho_max * np.sqrt(rng.random(index.size))
    phi = rng.uniform(0.0, 2 * math.pi, index.size)
    y, x = nuclei.to_pixels(index, rho, phi)
    peak = rng.lognormal(0.0, 0.35, index.size) * amplitude[index]
    py, px = np.rint(y).astype(np.int64), np.rint(x).astype(np.int64)
    ok = (py >= 0) & (py < owner.shape[0]) & (px >= 0) & (px < owner.shape[1])
    py, px, index, peak = py[ok], px[ok], index[ok], peak[ok]
    own = owner[py, px] == index + 1  # drop points that fell to a touching neighbour
    flat = py[own] * owner.shape[1] + px[own]
    impulses = np.bincount(flat, weights=peak[own] * (2 * math.pi * sigma**2), minlength=owner.size)
    return ndi.gaussian_filter(impulses.reshape(owner.shape).astype(np.float32), sigma, mode="constant", truncate=3.0)


def _illumination(rng: np.random.Generator, size: tuple[int, int], strength: float) -> np.ndarray:
    """A smooth multiplicative illumination field with mean 1: random tilt plus off-centre vignette."""
    if strength == 0:
        return np.ones(size, dtype=np.float32)
    yy = np.linspace(-1.0, 1.0, size[0], dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, size[1], dtype=np.float32)[None, :]
    tilt = rng.uniform(0.0, 2 * math.pi)
    cy, cx = rng.uniform(-0.6, 0.6, 2)
    log_field = strength * (0.6 * (math.sin(tilt) * yy + math.cos(tilt) * xx) - 0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2))
    illumination = np.exp(log_field)
    return (illumination / illumination.mean()).astype(np.float32)


def _out_of_focus_glow(signal: np.ndarray, scale: float) -> np.ndarray:
    """The signal spread over about three nucleus radii (same total): out-of-focus haze.

    Computed on a grid decimated by about half a radius and resized back, so it is cheap.
    """
    from skimage.transform import resize

    step = max(1, int(scale // 2))
    coarse = ndi.gaussian_filter(signal[:, ::step, ::step], (0.0, 3 * scale / step, 3 * scale / step), mode="nearest")
    return resize(coarse, signal.shape, order=1, mode="edge", anti_aliasing=False).astype(np.float32)


def _camera_counts(rng: np.random.Generator, expected: np.ndarray, read_noise: float) -> np.ndarray:
    """Photon counts with shot noise plus Gaussian read noise (electrons), as float32.

    Shot noise is exact Poisson where fewer than :data:`EXACT_POISSON_BELOW` photons are
    expected and its Gaussian approximation (same mean and variance) elsewhere: as accurate
    for images and several times faster than drawing Poisson for every pixel.
    """
    gauss = rng.standard_normal(expected.shape, dtype=np.float32)
    counts = expected + np.sqrt(expected + np.float32(read_noise**2)) * gauss
    dim = expected < EXACT_POISSON_BELOW
    if dim.any():
        counts[dim] = rng.poisson(expected[dim]) + read_noise * gauss[dim]
    return counts


def ground_truth(owner: np.ndarray, centres: np.ndarray, psf_sigma: float) -> np.ndarray:
    """Labels of the blurred nuclei: each nucleus's footprint above half of its own peak.

    The union of outlines is blurred with the PSF; a pixel belongs to its nearest nucleus when
    the blurred footprint there reaches half that nucleus's maximum, taken at its centre (full
    width at half maximum: a small nucleus under strong blur never reaches the plateau of a
    large one). ``centres`` (n, 2) are the (y, x) centres of the nuclei owning labels 1..n.
    """
    if psf_sigma == 0 or not len(centres):
        return owner.astype(np.int32)
    inside = owner > 0
    footprint = ndi.gaussian_filter(inside.astype(np.float32), psf_sigma, mode="nearest")
    cy = np.clip(np.rint(centres[:, 0]).astype(np.int64), 0, owner.shape[0] - 1)
    cx = np.clip(np.rint(centres[:, 1]).astype(np.int64), 0, owner.shape[1] - 1)
    half = np.concatenate([[np.inf], 0.5 * footprint[cy, cx]]).astype(np.float32)
    _, (iy, ix) = ndi.distance_transform_edt(~inside, return_indices=True)
    nearest = owner[iy, ix]
    return np.where(footprint >= half[nearest], nearest, 0).astype(np.int32)


def _keep_largest_piece(labels: np.ndarray) -> np.ndarray:
    """Drop all but the largest 4-connected piece of each label (rare slivers cut off by a neighbour)."""
    pieces, count = connected(labels, background=0, connectivity=1, return_num=True)
    if count == len(np.unique(labels)) - 1:
        return labels
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)
    owner_of_piece = np.zeros(count + 1, dtype=np.int64)
    owner_of_piece[pieces.ravel()] = labels.ravel()
    order = np.lexsort((-sizes[1:], owner_of_piece[1:]))  # by label, largest piece first
    keep = np.zeros(count + 1, dtype=bool)
    first = np.ones(len(order), dtype=bool)
    first[1:] = owner_of_piece[1:][order][1:] != owner_of_piece[1:][order][:-1]
    keep[1 + order[first]] = True
    return np.where(keep[pieces], labels, 0).astype(np.int32)


def _compact(labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Relabel to 1..m without gaps (drawing order kept); returns labels and surviving indices."""
    present = np.bincount(labels.ravel(), minlength=count + 1)[1:] > 0
    lookup = np.zeros(count + 1, dtype=np.int32)
    lookup[1:][present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lookup[labels], np.flatnonzero(present)


def _nuclear_signal(
    rng: np.random.Generator,
    nuclei: Nuclei,
    owner: np.ndarray,
    rho: np.ndarray,
    channels: tuple[str, ...],
    nucleus_sd: float,
    dome: float,
    rim: float,
    texture: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free, pre-blur signal (len(channels), Y, X) float32 and brightness (n, 3) per nucleus.

    Only pixels inside nuclei are computed; the three channels' brightness factors are always
    drawn so that a nucleus's brightness does not depend on which channels are simulated.
    """
    n = len(nuclei)
    inside = owner > 0
    index = owner[inside] - 1
    shared = rng.lognormal(0.0, nucleus_sd, n)
    per_channel = shared[:, None] * rng.lognormal(0.0, nucleus_sd / 2, (n, 3))
    per_channel *= np.where(nuclei.mitotic[:, None], MITOTIC_BRIGHTNESS, 1.0)
    scale = float(np.median(nuclei.radius)) if n else 10.0
    relative_size = (nuclei.radius / scale) ** 2
    fine, coarse = _textures(rng, owner.shape, [max(0.7, 0.06 * scale), max(1.5, 0.2 * scale)])
    nucleoli = _spots(rng, nuclei, owner, rng.integers(1, 4, n) * ~nuclei.mitotic, 0.55,
                      np.ones(n), max(1.0, 0.13 * scale))
    nucleolar = np.minimum(nucleoli[inside], 1.0)
    rho_in = rho[inside]
    signal = np.zeros((len(channels), *owner.shape), dtype=np.float32)
    for plane, name in zip(signal, channels):
        if name == "Hoechst":
            contrast = texture * np.where(nuclei.mitotic, 2.5, 1.0).astype(np.float32)[index]
            value = (
                np.clip(1.0 + contrast * (0.22 * fine[inside] + 0.12 * coarse[inside]), 0.15, None)
                * (1.0 + rim * np.exp((rho_in - 1.0) / 0.08))
                * (1.0 - dome * rho_in**2)
                * (1.0 - 0.5 * nucleolar)
            )
        elif name == "CTCF":
            foci = _spots(rng, nuclei, owner, rng.poisson(40 * relative_size), 0.92,
                          np.full(n, 1.2), max(0.6, 0.045 * scale))
            diffuse = np.clip(1.0 + 0.15 * texture * _shifted(coarse, 1)[inside], 0.2, None)
            value = 0.45 * diffuse * (1.0 - 0.2 * nucleolar) + foci[inside]
        else:  # H3K27ac
            foci = _spots(rng, nuclei, owner, rng.poisson(20 * relative_size), 0.92,
                          np.full(n, 0.5), max(0.7, 0.07 * scale))
            diffuse = np.clip(1.0 + 0.15 * texture * _shifted(coarse, 2)[inside], 0.2, None)
            value = 0.6 * diffuse * (1.0 - 0.3 * nucleolar) + foci[inside]
        plane[inside] = value * per_channel[index, CHANNEL_NAMES.index(name)]
    return signal, per_channel


def simulate_field(
    rng: np.random.Generator | int,
    *,
    size: int | tuple[int, int] = (512, 512),
    n_nuclei: int | tuple[int, int] = (10, 25),
    radius: float | tuple[float, float] = (14.0, 26.0),
    condition: str = CONTROL,
    control: str = CONTROL,
    effect: str = "periphery",
    effect_channel: str = "H3K27ac",
    effect_size: float = 0.5,
    ratio_shift: float = 0.0,
    aspect: float | tuple[float, float] = (1.0, 1.6),
    irregularity: float = 0.05,
    clump: float = 0.3,
    squeeze: float = 0.1,
    mitotic_fraction: float = 0.0,
    nucleus_brightness_sd: float = 0.2,
    field_brightness_sd: float = 0.15,
    channel_brightness_sd: float = 0.1,
    photons: float = 400.0,
    background: float = 20.0,
    gain: float = 2.0,
    read_noise: float = 2.0,
    psf_sigma: float = 1.2,
    illumination: float = 0.1,
    dome: float = 0.1,
    rim: float = 0.3,
    texture: float = 1.0,
    haze: float = 0.0,
    noise: bool = True,
    channels: tuple[str, ...] = CHANNEL_NAMES,
) -> SimulatedField:
    """Simulate one field of nuclei in three channels (Hoechst, CTCF, H3K27ac) with exact labels.

    Geometry: ``n_nuclei`` (an int or inclusive (min, max) range; fewer when they do not fit)
    nuclei of equivalent ``radius`` (px, uniform in the range), ``aspect`` ratio a/b, outline
    ``irregularity`` (harmonic amplitude), a ``clump`` probability of being placed against a
    neighbour, ``squeeze`` (how much touching nuclei may press into each other) and a
    ``mitotic_fraction`` of small, condensed, very bright nuclei.

    The planted effect applies when ``condition != control``: ``effect`` ("periphery",
    "interior" or "none") changes the rim/centre ratio of ``effect_channel`` by
    ``1 + effect_size`` at constant total signal (see :mod:`epikit.simulate.effect`).
    ``ratio_shift`` multiplies that channel's rim/centre ratio by ``exp(ratio_shift)`` in every
    condition (a batch effect: the replicate effect of :func:`epikit.simulate.simulate_dataset`).

    Photometry: log-normal brightness spread per nucleus (``nucleus_brightness_sd``), per field
    (``field_brightness_sd``; large values make strong per-field brightness differences) and per
    channel and field (``channel_brightness_sd``); ``photons`` expected at a typical Hoechst
    nucleus, ``background`` photons per pixel, ``illumination`` unevenness (0 = flat),
    ``psf_sigma`` (px), ``gain`` (ADU per photon), ``read_noise`` (electrons), ``dome`` (centre
    to edge shading of Hoechst), ``rim`` (Hoechst rim brightening), ``texture`` (scales all
    texture contrasts), ``haze`` (out-of-focus glow around nuclei, as a fraction of their
    light). ``noise=False`` gives the expected (noise-free) image.

    ``channels`` selects (and orders) the channels simulated, e.g. ``("Hoechst",)`` for fast
    segmentation training; the layout and labels do not depend on it.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    size = check_size(size)
    count_range = as_range("n_nuclei", n_nuclei, 0, 10000)
    radius_range = as_range("radius", radius, 2.0, min(size) / 2)
    aspect_range = as_range("aspect", aspect, 1.0, 4.0)
    effect_size = check_effect(effect, effect_channel, effect_size)
    irregularity = check_number("irregularity", irregularity, 0.0, 0.5)
    clump = check_number("clump", clump, 0.0, 1.0)
    squeeze = check_number("squeeze", squeeze, 0.0, 0.5)
    mitotic_fraction = check_number("mitotic_fraction", mitotic_fraction, 0.0, 1.0)
    spreads = [check_number(name, value, 0.0, 3.0) for name, value in (
        ("nucleus_brightness_sd", nucleus_brightness_sd),
        ("field_brightness_sd", field_brightness_sd),
        ("channel_brightness_sd", channel_brightness_sd),
    )]
    photons = check_number("photons", photons, 1e-3, 1e6)
    background = check_number("background", background, 0.0, 1e6)
    gain = check_number("gain", gain, 1e-3, 1e3)
    read_noise = check_number("read_noise", read_noise, 0.0, 1e4)
    psf_sigma = check_number("psf_sigma", psf_sigma, 0.0, 20.0)
    illumination = check_number("illumination", illumination, 0.0, 3.0)
    dome = check_number("dome", dome, 0.0, 0.9)
    rim = check_number("rim", rim, 0.0, 5.0)
    texture = check_number("texture", texture, 0.0, 5.0)
    haze = check_number("haze", haze, 0.0, 2.0)
    ratio_shift = check_number("ratio_shift", ratio_shift, -1.0, 1.0)
    channels = check_channels(channels)
    affected = condition != control and effect != "none" and effect_size > 0

    # 1. Geometry.
    wanted = int(rng.integers(int(count_range[0]), int(count_range[1]) + 1))
    shapes = sample_shapes(rng, wanted, radius_range, aspect_range, irregularity, mitotic_fraction)
    nuclei = place_nuclei(rng, shapes, size, clump, squeeze)
    owner, rho = rasterise(nuclei, size)
    n = len(nuclei)

    # 2. Noise-free signal per channel (relative units; Hoechst plateau ~ 1).
    nucleus_sd, field_sd, channel_sd = spreads
    signal, per_channel = _nuclear_signal(rng, nuclei, owner, rho, channels, nucleus_sd, dome, rim, texture)
    if (affected or ratio_shift) and effect_channel in channels:
        signal[channels.index(effect_channel)] *= effect_weight(
            rho, effect if affected else "none", effect_size, ratio_shift)

    # 3. Optics, photometry and camera.
    if psf_sigma > 0:
        signal = ndi.gaussian_filter(signal, (0.0, psf_sigma, psf_sigma), mode="nearest")
    if haze > 0:
        signal += haze * _out_of_focus_glow(signal, float(np.median(nuclei.radius)) if n else 10.0)
    field_brightness = float(rng.lognormal(0.0, field_sd))
    channel_index = [CHANNEL_NAMES.index(name) for name in channels]
    channel_brightness = rng.lognormal(0.0, channel_sd, 3)[channel_index]
    light = _illumination(rng, size, illumination)
    levels = (photons * field_brightness * channel_brightness * CHANNEL_LEVELS[channel_index]).astype(np.float32)
    floor = (background * BACKGROUND_LEVELS[channel_index]).astype(np.float32)
    expected = light * (signal * levels[:, None, None] + floor[:, None, None])
    counts = _camera_counts(rng, expected, read_noise) if noise else expected
    image = np.clip(np.rint(CAMERA_OFFSET + gain * counts), 0, UINT16_MAX).astype(np.uint16)

    centres = np.stack([nuclei.centre_y, nuclei.centre_x], axis=1)
    labels, survivors = _compact(_keep_largest_piece(ground_truth(owner, centres, psf_sigma)), n)
    kept = nuclei.subset(survivors)
    return SimulatedField(
        image=image,
        labels=labels,
        condition=condition,
        affected=affected,
        centres=centres[survivors],
        radii=kept.radius,
        semi_axes=np.stack([kept.semi_major, kept.semi_minor], axis=1),
        angles=kept.angle,
        mitotic=kept.mitotic,
        brightness=per_channel[survivors, 0],
        channel_names=channels,
        params={
            "nuclei_requested": wanted,
            "nuclei_placed": n,
            "field_brightness": field_brightness,
            "channel_brightness": dict(zip(channels, channel_brightness.tolist())),
            "psf_sigma": psf_sigma,
            "photons": photons,
            "background": background,
            "illumination": illumination,
            "ratio_shift": ratio_shift,
        },
    )
