"""epikit-sam: a Segment Anything (SAM) nucleus segmenter, installed as an epikit plugin.

epikit finds this package through the ``epikit`` entry point declared in its
``pyproject.toml`` (``sam = "epikit_sam.plugin"``). Importing the package is cheap: torch and
segment-anything are imported only when a :class:`epikit_sam.segmenter.SAMSegmenter` is built.
"""
