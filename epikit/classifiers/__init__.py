"""Built-in classifier plugin: registers the networks shipped with epikit.

Factories are given as lazy ``"module:attribute"`` strings so listing them does not import
torch; the implementation modules sit next to this file.
"""

from __future__ import annotations

from epikit.hookspecs import Register, hookimpl


@hookimpl
def epikit_register_classifiers(register: Register) -> None:
    """Register the built-in classifiers."""
