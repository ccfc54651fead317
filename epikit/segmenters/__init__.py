"""Built-in segmenter plugin: registers the segmenters shipped with epikit.

Factories are given as lazy ``"module:attribute"`` strings so listing them imports nothing
heavy; the implementation modules sit next to this file, one per segmenter.
"""

from __future__ import annotations

from epikit.hookspecs import Register, hookimpl


@hookimpl
def epikit_register_segmenters(register: Register) -> None:
    """Register the built-in segmenters."""
    register("watershed", "epikit.segmenters.watershed:WatershedSegmenter",
             summary="Threshold + distance-transform watershed; no weights")
    register("cellpose", "epikit.segmenters.cellpose:CellposeSegmenter",
             summary="Cellpose 4 (Cellpose-SAM); optional dependency, wants a GPU")
    register("maskrcnn", "epikit.segmenters.maskrcnn:MaskRCNNSegmenter", summary="Compact Mask R-CNN (the study's method); shipped weights, tiled inference")
