"""The input-reading options shared by ``epikit run``, ``segment`` and ``extract``.

``--z``, ``--pixel-size``, ``--pattern`` and ``--layout`` fill the ``read`` table of the
configuration (:class:`epikit.options.ReadOptions`); ``--channels`` names the channels, or
with ``--pattern`` lists the channel values.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

if TYPE_CHECKING:  # pragma: no cover
    from epikit.io import ImageRecord

CHANNELS: Optional[str] = typer.Option(
    None, "--channels", help="Comma-separated channel names, in file order (with --pattern: the channel "
                             "values, optionally named, e.g. 1=Hoechst,2=CTCF).")
Z: Optional[str] = typer.Option(
    None, "--z", help="Z-stacks: max | mean | best (sharpest plane of the nuclear channel) | a plane "
                      "index from 0. Default max.")
PIXEL_SIZE: Optional[float] = typer.Option(
    None, "--pixel-size", help="Micrometres per pixel for every field (default: from the files' metadata).")
PATTERN: Optional[str] = typer.Option(
    None, "--pattern", help="Names of per-channel files, e.g. '{well}_{field}_w{channel}.tif'.")
LAYOUT: Optional[Path] = typer.Option(
    None, "--layout", help="CSV well,condition[,dose] mapping plate wells to conditions.")


def reading_flags(z: str | None, pixel_size: float | None, pattern: str | None,
                  layout: Path | None) -> dict[str, Any]:
    """The ``read`` table entries the flags set (None: not given)."""
    return {"z": z, "pixel_size_um": pixel_size, "pattern": pattern,
            "layout": str(layout) if layout else None}


def channel_list(channels: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; None or empty -> None."""
    names = [c.strip() for c in (channels or "").split(",") if c.strip()]
    return names or None


def discover(input: Path, channels: str | None, z: str | None, pixel_size: float | None,
             pattern: str | None, layout: Path | None, nuclear_channel: int | str = 0) -> list[ImageRecord]:
    """The records of ``input`` read with these flags (one condition is enough)."""
    from epikit.io import find_images
    from epikit.options import ReadOptions

    given = {k: v for k, v in reading_flags(z, pixel_size, pattern, layout).items() if v is not None}
    return find_images(input, channel_list(channels), min_conditions=1, reading=ReadOptions(**given),
                       nuclear_channel=nuclear_channel)[0]
