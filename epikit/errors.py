"""Typed errors raised by epikit.

Every error carries a one-line message that names the offending thing (a file, a plugin,
a parameter) and, where there is one, the fix. The CLI prints ``str(error)`` and exits
with a non-zero status; library users can catch the specific class.
"""

from __future__ import annotations


class EpikitError(Exception):
    """Base class of every error epikit raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # Keep messages on one line: they end up in terminals and log files.
        super().__init__(" ".join(str(message).split()))


class InputError(EpikitError):
    """Input data is missing, unreadable or inconsistent (names the file and the fix)."""

    exit_code = 2


class ConfigError(EpikitError):
    """A parameter, option or configuration file is invalid."""

    exit_code = 2


class PluginError(EpikitError):
    """A plugin could not be loaded, registered or built."""


class UnknownPluginError(PluginError):
    """A segmenter, classifier or explainer name is not registered.

    Deliberately not a ``KeyError``: its ``str()`` would wrap the message in quotes.
    """

    exit_code = 2


class DuplicatePluginError(PluginError):
    """Two plugins registered the same name for the same kind."""


class DataError(EpikitError):
    """Data produced by an earlier stage cannot support the requested step.

    Examples: no nuclei were found, only one condition is present, a class has fewer
    groups than cross-validation folds.
    """

    exit_code = 2


class ModelError(EpikitError):
    """A model is unusable for the request (bad weights, missing CAM layer, wrong shape)."""

    exit_code = 2
