"""Synthetic multi-channel nuclei with exact ground truth and a planted, documented effect.

Fields look like the study's (Hoechst, CTCF, H3K27ac; see STUDY.md): nuclei with DNA texture,
dim nucleoli and a brighter rim in Hoechst, punctate CTCF foci, diffuse H3K27ac with foci,
optical blur, shot and read noise, background, and brightness that varies per nucleus,
per field and per channel. Ground-truth labels mark where the *blurred* nucleus is.

The planted effect
------------------
Within each nucleus let ``rho`` be the normalised radius (0 at the centre, 1 on the outline)
and call the outer half of the nucleus area (``rho**2 > 1/2``) the *rim* and the inner half
the *centre*. With ``effect="periphery"`` (the default, as in the study), nuclei of every
condition other than the control (``"ctrl"``; by default that is ``"vpa"``) have the
``effect_channel`` (default H3K27ac) signal redistributed from centre to rim so that its
rim/centre mean-intensity ratio is ``(1 + effect_size)`` times that of control nuclei
(default ``effect_size=0.5``: 1.5 times). The redistribution is a smooth step in
``rho**2`` and keeps each nucleus's total signal of that channel unchanged, so the effect
is one of shape (where the signal is), not of brightness. ``effect="interior"`` moves the
signal towards the centre instead (centre/rim ratio ``1 + effect_size`` times control's);
``effect="none"`` plants nothing. The ratio is exact for the noise-free signal before blur;
measured on the final images inside the ground-truth masks with a distance-transform split
it is somewhat diluted by blur (about 1.4 for 1.5). Per-field and per-channel brightness
factors multiply whole images, so they leave every ratio unchanged.

Public API: :func:`simulate_field`, :class:`SimulatedField`, :func:`simulate_dataset`,
:func:`sample_diverse_field_params`, and the named parameter sets of
:mod:`epikit.simulate.presets` (:data:`PRESETS`, e.g. ``"sora"``: the study's 2048 x 2048
super-resolution fields).
"""

from __future__ import annotations

from epikit.simulate.dataset import simulate_dataset
from epikit.simulate.diversity import sample_diverse_field_params
from epikit.simulate.effect import EFFECTS
from epikit.simulate.field import CHANNEL_NAMES, CONTROL, SimulatedField, simulate_field
from epikit.simulate.presets import PRESETS, preset_params

__all__ = [
    "CHANNEL_NAMES",
    "CONTROL",
    "EFFECTS",
    "PRESETS",
    "SimulatedField",
    "sample_diverse_field_params",
    "simulate_dataset",
    "simulate_field",
    "preset_params",
]
