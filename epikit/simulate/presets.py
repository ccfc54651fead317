"""Named sets of simulation parameters: the field geometry and optics of a kind of microscope.

A preset fills the parameters of :func:`epikit.simulate.simulate_dataset` that the caller
does not set; anything given explicitly wins. ``"default"`` is the simulator's own
(512 x 512 fields with 10-25 nuclei 28-52 px across, as a widefield 20-40x objective sees
them); ``"sora"`` is a super-resolution spinning-disk (SoRa) field as in the study:

* 2048 x 2048 pixels, 16-bit, three channels (Hoechst, CTCF, H3K27ac);
* 14-20 nuclei (about 17) of equivalent radius 125-200 px, i.e. 250-400 px across;
* few clumps (the study's fields are sparse), a wider PSF in pixels (sigma 2 px: the pixel
  is small) and a brighter exposure (2,000 photons at a typical Hoechst nucleus).

Example::

    from epikit.simulate import simulate_dataset
    simulate_dataset("sora_data", preset="sora", n_fields=200)   # the study's 400 fields

or ``epikit simulate sora_data --preset sora --fields 200``.
"""

from __future__ import annotations

from typing import Any

from epikit.errors import ConfigError

#: Field size, nuclei per field and nucleus radius when neither the caller nor a preset sets them.
DEFAULT_SIZE = (512, 512)
DEFAULT_NUCLEI = (10, 25)
DEFAULT_RADIUS = (14.0, 26.0)

#: Parameters of each preset (``simulate_dataset`` keyword arguments).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"size": DEFAULT_SIZE, "n_nuclei": DEFAULT_NUCLEI, "radius": DEFAULT_RADIUS},
    "sora": {"size": (2048, 2048), "n_nuclei": (14, 20), "radius": (125.0, 200.0),
             "psf_sigma": 2.0, "photons": 2000.0, "clump": 0.1},
}


def preset_params(name: str | None) -> dict[str, Any]:
    """The parameters of preset ``name`` (None: ``"default"``); an unknown name raises ConfigError."""
    name = "default" if name is None else name
    if name not in PRESETS:
        raise ConfigError(f"unknown simulation preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
