"""The run folder: the only code that knows artefact names, paths and formats.

* :mod:`~epikit.runfolder.layout`: every artefact's name (``crops.zarr``, ``model/``, ...).
* :mod:`~epikit.runfolder.rows`: row reads of Zarr arrays and ``cell_id`` -> row lookups.
* :mod:`~epikit.runfolder.cells`: ``cells.parquet`` + ``crops.zarr`` as a
  :class:`~epikit.runfolder.cells.CellDataset`, and the nucleus masks.
* :mod:`~epikit.runfolder.crop_writer`: the resumable writer of ``crops.zarr`` + ``cells.parquet``.
* :mod:`~epikit.runfolder.models`: the fold checkpoints under ``model/`` (load, sha256).
* :mod:`~epikit.runfolder.maps`: ``maps.zarr`` (write, read back as ``StoredMaps``).
* :mod:`~epikit.runfolder.metrics`: the sections of ``metrics.json``.
* :mod:`~epikit.runfolder.scratch`: the resumable work scratch of every stage (:class:`Scratch`).
* :mod:`~epikit.runfolder.reader`: the lazy, read-only view of a run folder the report uses.

Stages, the report and the pipeline import this package; it imports no stage. Atomic file
writing itself is :mod:`epikit.io.store` (also used outside run folders).
"""
