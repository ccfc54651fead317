"""Look up, list, describe and build registered segmenters, classifiers and explainers.

    >>> import epikit
    >>> epikit.list_segmenters()                      # doctest: +SKIP
    ['cellpose', 'maskrcnn', 'watershed']
    >>> seg = epikit.get_segmenter("watershed", min_area=30)   # doctest: +SKIP

The registry is built once per process from :func:`epikit.plugins.build_plugin_manager`;
:func:`use_registry` swaps it (tests use a fresh one per test).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from epikit.errors import ConfigError, UnknownPluginError
from epikit.interfaces import KINDS, Kind, PluginEntry
from epikit.plugins import PluginRegistry, build_plugin_manager, resolve_factory

_current: PluginRegistry | None = None


def current_registry() -> PluginRegistry:
    """The process-wide registry, built on first use."""
    global _current
    if _current is None:
        _current = build_plugin_manager()
    return _current


@contextmanager
def use_registry(registry: PluginRegistry) -> Iterator[PluginRegistry]:
    """Make ``registry`` the current one inside the ``with`` block."""
    global _current
    previous, _current = _current, registry
    try:
        yield registry
    finally:
        _current = previous


def reset_registry() -> None:
    """Forget the cached registry so the next lookup rebuilds it (e.g. after pip install)."""
    global _current
    _current = None


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ConfigError(f"unknown plugin kind {kind!r}; use one of: {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


def get_entry(kind: str, name: str) -> PluginEntry:
    """The registered entry ``name`` of ``kind``, or :class:`UnknownPluginError` with hints."""
    entries = current_registry().entries[_check_kind(kind)]
    if name in entries:
        return entries[name]
    available = sorted(entries)
    close = difflib.get_close_matches(str(name), available, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(available) if available else "none installed"
    raise UnknownPluginError(f"unknown {kind} {name!r}{hint}; available: {listing}")


def list_entries(kind: str, pattern: str = "*") -> list[PluginEntry]:
    """Entries of ``kind`` whose names match the shell-style ``pattern``, sorted by name."""
    entries = current_registry().entries[_check_kind(kind)]
    return [entries[name] for name in sorted(entries) if fnmatch.fnmatchcase(name, pattern)]


def build(kind: str, name: str, *args: Any, **params: Any) -> Any:
    """Call the factory of ``kind``/``name`` with ``args`` and ``params``.

    Parameters the factory does not accept raise :class:`ConfigError` listing those it does.
    """
    entry = get_entry(kind, name)
    factory = resolve_factory(entry.factory)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(*args, **params)
        except TypeError as error:
            accepted = [p for p in signature.parameters if p not in {"self", "args", "kwargs"}]
            raise ConfigError(
                f"{kind} {name!r}: {error}; accepted parameters: {', '.join(accepted) or 'none'}"
            ) from error
    return factory(*args, **params)


def get_segmenter(name: str, **params: Any) -> Any:
    """Build the segmenter ``name`` with ``params`` (see :class:`epikit.interfaces.Segmenter`)."""
    return build("segmenter", name, **params)


def get_classifier(
    name: str, in_channels: int = 3, num_classes: int = 2, crop_size: int = 64, **params: Any
) -> Any:
    """Build the classifier network ``name`` for the given input shape and class count."""
    return build("classifier", name, in_channels, num_classes, crop_size, **params)


def rebuild_classifier(
    name: str, in_channels: int, num_classes: int, crop_size: int, **params: Any
) -> Any:
    """Build classifier ``name`` to load saved weights into: its initial weights are not loaded.

    ``params`` are those recorded at training time; a factory that accepts
    :data:`epikit.interfaces.INITIAL_WEIGHTS_KEYWORD` gets it as False (see
    :class:`epikit.interfaces.ClassifierFactory`).
    """
    from epikit.interfaces import INITIAL_WEIGHTS_KEYWORD, accepts_initial_weights

    factory = resolve_factory(get_entry("classifier", name).factory)
    rebuild = {INITIAL_WEIGHTS_KEYWORD: False} if accepts_initial_weights(factory) else {}
    return get_classifier(name, in_channels, num_classes, crop_size, **{**params, **rebuild})


def get_explainer(name: str, **params: Any) -> Any:
    """Build the explainer ``name`` with ``params`` (see :class:`epikit.interfaces.Explainer`)."""
    return build("explainer", name, **params)


def list_segmenters(pattern: str = "*") -> list[str]:
    """Names of registered segmenters matching ``pattern``."""
    return [entry.name for entry in list_entries("segmenter", pattern)]


def list_classifiers(pattern: str = "*") -> list[str]:
    """Names of registered classifiers matching ``pattern``."""
    return [entry.name for entry in list_entries("classifier", pattern)]


def list_explainers(pattern: str = "*") -> list[str]:
    """Names of registered explainers matching ``pattern``."""
    return [entry.name for entry in list_entries("explainer", pattern)]


def describe(kind: str, name: str) -> dict[str, Any]:
    """Summary, provenance and parameters (with defaults) of one registered component.

    Resolves a lazy factory, so this may import the component's dependencies.
    """
    entry = get_entry(kind, name)
    info: dict[str, Any] = {**entry.provenance(), "summary": entry.summary}
    factory = resolve_factory(entry.factory)
    parameters: dict[str, Any] = {}
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        for param in signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            default = None if param.default is param.empty else param.default
            parameters[param.name] = default
    info["parameters"] = parameters
    info["doc"] = inspect.getdoc(factory) or ""
    return info
