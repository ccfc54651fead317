"""Geometry of one nucleus, pure functions on arrays (no run folder, no stage).

* :mod:`~epikit.nuclei.crops`: find nuclei in a label image and cut them out as crops.
* :mod:`~epikit.nuclei.features`: morphology, intensity, texture and shell features.
* :mod:`~epikit.nuclei.shells`: the concentric shells of a nucleus mask and their means.
* :mod:`~epikit.nuclei.averaging`: aligned average crops and maps.
"""
