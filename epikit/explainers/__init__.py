"""Built-in explainer plugin: registers the explanation methods shipped with epikit.

Factories are given as lazy ``"module:attribute"`` strings so listing them does not import
torch; the implementation modules sit next to this file.
"""

from __future__ import annotations

from epikit.hookspecs import Register, hookimpl


@hookimpl
def epikit_register_explainers(register: Register) -> None:
    """Register the built-in explainers."""
    register(
        "scorecam",
        "epikit.explainers.scorecam:ScoreCAM",
        summary="Score-CAM (the study's explainer), batched, exact speed-ups",
    )
    register(
        "gradcam",
        "epikit.explainers.gradcam:GradCAM",
        summary="Grad-CAM: gradient-weighted activations, one forward + backward",
    )
    register(
        "gradcampp",
        "epikit.explainers.gradcam:GradCAMPlusPlus",
        summary="Grad-CAM++: positive gradients weighted by closed-form alphas",
    )
