"""Z-stacks to one plane per channel: maximum or mean projection, the sharpest plane, or a plane.

Microscopes save Z-stacks; epikit segments and measures 2D fields. ``--z`` (the
``read.z`` option) chooses how a stack ``(C, Z, Y, X)`` becomes ``(C, Y, X)``:

``max`` (default)
    the maximum intensity projection of every channel;
``mean``
    the mean over the planes;
``best``
    the sharpest plane of the nuclear channel (largest variance of its Laplacian, a common
    focus measure), taken in every channel;
``N``
    plane ``N`` (0-based) of every channel; a plane the stack lacks is an error.

A single-plane image passes through every mode unchanged (plane ``0`` included).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from epikit.errors import ConfigError, InputError

Z_MODES: tuple[str, ...] = ("max", "mean", "best")


def parse_z(value: str | int) -> str | int:
    """``value`` as a Z mode (``max``, ``mean``, ``best``) or a non-negative plane index."""
    text = str(value).strip().lower()
    if text in Z_MODES:
        return text
    try:
        plane = int(text)
    except ValueError:
        plane = -1
    if plane < 0:
        raise ConfigError(f"--z {value!r} is neither one of {', '.join(Z_MODES)} nor a plane "
                          "index (0, 1, ...)")
    return plane


def check_plane(z: str | int, n_planes: int, source: str = "image") -> str | int:
    """``z`` parsed (see :func:`parse_z`); a plane index the stack of ``n_planes`` lacks is an error."""
    mode = parse_z(z)
    if isinstance(mode, int) and mode >= n_planes:
        raise InputError(f"{source}: has {n_planes} z-plane(s), so --z {mode} does not exist; "
                         f"give a plane from 0 to {n_planes - 1} or --z max")
    return mode


def sharpest_plane(planes: np.ndarray) -> int:
    """Index of the plane of ``planes (Z, Y, X)`` with the largest variance of the Laplacian."""
    scores = [float(ndi.laplace(plane.astype(np.float32)).var()) for plane in planes]
    return int(np.argmax(scores))


def project(stack: np.ndarray, z: str | int, channel: int = 0, source: str = "image") -> np.ndarray:
    """Project ``stack (C, Z, Y, X)`` to float32 ``(C, Y, X)`` by ``z`` (see the module docstring).

    ``channel`` is the nuclear channel ``best`` focuses on; ``source`` names the file in errors.
    """
    mode = check_plane(z, stack.shape[1], source)
    n_planes = stack.shape[1]
    if isinstance(mode, int):
        return stack[:, mode].astype(np.float32)
    if n_planes == 1:
        return stack[:, 0].astype(np.float32)
    if mode == "max":
        return stack.max(axis=1).astype(np.float32)
    if mode == "mean":
        return stack.mean(axis=1, dtype=np.float64).astype(np.float32)
    if not 0 <= channel < stack.shape[0]:
        raise ConfigError(f"{source}: --z best needs the nuclear channel, index {channel} is out of "
                          f"range for {stack.shape[0]} channel(s)")
    return stack[:, sharpest_plane(stack[channel])].astype(np.float32)
