"""The hook implementation epikit loads through the ``epikit`` entry point.

This module is imported by ``epikit plugins`` and at every registry build, so it imports
only epikit's light plugin API. The factory is a lazy ``"module:attribute"`` string: epikit
imports :mod:`epikit_sam.segmenter` (and with it torch and segment-anything) only when
someone asks for the ``sam`` segmenter.
"""

from __future__ import annotations

from epikit.hookspecs import Register, hookimpl


@hookimpl
def epikit_register_segmenters(register: Register) -> None:
    """Register the ``sam`` segmenter."""
    register(
        "sam",
        "epikit_sam.segmenter:SAMSegmenter",
        summary="Segment Anything automatic masks, filtered to nuclei (needs -p checkpoint=PATH)",
    )
