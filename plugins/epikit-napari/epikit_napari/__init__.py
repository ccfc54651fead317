"""napari reader for epikit run folders (npe2 manifest ``napari.yaml``); see :mod:`epikit_napari.reader`."""

from epikit_napari.reader import layer_data, napari_get_reader

__all__ = ["layer_data", "napari_get_reader"]
