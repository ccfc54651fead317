"""The plugin manager: loads built-in and third-party plugins and collects their entries.

Built-in components are ordinary plugins listed in :data:`BUILTIN_PLUGINS` and registered
with the same ``pm.register`` call as third-party packages, which are discovered through
the ``epikit`` entry-point group.

Environment switches:

``EPIKIT_LOAD_PLUGINS``
    Comma-separated allow-list of third-party plugins (entry-point or distribution names).
    Unset loads all installed plugins; set to an empty string loads none.
``EPIKIT_STRICT_PLUGINS``
    ``1`` makes a broken third-party plugin fatal instead of skipped with a warning.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from importlib import metadata
from typing import Any, Callable

import pluggy

from epikit import hookspecs
from epikit.errors import DuplicatePluginError, PluginError
from epikit.interfaces import KINDS, Kind, PluginEntry

ENTRY_POINT_GROUP = "epikit"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "epikit.segmenters",
    "epikit.classifiers",
    "epikit.explainers",
)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]*$")
HOOK_FOR_KIND: dict[Kind, str] = {
    "segmenter": "epikit_register_segmenters",
    "classifier": "epikit_register_classifiers",
    "explainer": "epikit_register_explainers",
}


class PluginWarning(UserWarning):
    """Warned when a broken third-party plugin is skipped."""


def epikit_version() -> str:
    """The installed epikit version (``0+unknown`` when running from a bare source tree)."""
    try:
        return metadata.version("epikit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def resolve_factory(factory: Callable[..., Any] | str) -> Callable[..., Any]:
    """Return ``factory`` itself, or import it when given lazily as ``"module:attribute"``."""
    if callable(factory):
        return factory
    module_name, _, attribute = str(factory).partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as error:
        raise PluginError(f"cannot import plugin factory {factory!r}: {error}") from error
    return target


def _strict() -> bool:
    return os.environ.get("EPIKIT_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes"}


def _normalise(name: str) -> str:
    """PEP 503 normalisation: ``Epikit_SAM`` and ``epikit-sam`` are the same distribution."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def _allowed(entry_point: metadata.EntryPoint) -> bool:
    allow = os.environ.get("EPIKIT_LOAD_PLUGINS")
    if allow is None:
        return True
    names = {_normalise(item) for item in allow.split(",") if item.strip()}
    dist = entry_point.dist.name if entry_point.dist else None
    return _normalise(entry_point.name) in names or (dist is not None and _normalise(dist) in names)


def _broken(what: str, error: BaseException) -> None:
    message = f"skipping broken epikit plugin {what}: {type(error).__name__}: {error}"
    if _strict():
        raise PluginError(message + " (EPIKIT_STRICT_PLUGINS=1 makes this fatal)") from error
    warnings.warn(message + " (set EPIKIT_STRICT_PLUGINS=1 to make this an error)",
                  PluginWarning, stacklevel=3)


class PluginRegistry:
    """All entries of all kinds, built from one pluggy ``PluginManager``.

    ``sources`` maps a pluggy plugin name to ``(distribution, version)``.
    """

    def __init__(self, manager: pluggy.PluginManager, sources: dict[str, tuple[str, str]]):
        self.manager = manager
        self.sources = sources
        self.entries: dict[Kind, dict[str, PluginEntry]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            self._collect(kind)

    def _collect(self, kind: Kind) -> None:
        hook = getattr(self.manager.hook, HOOK_FOR_KIND[kind])
        # pluggy calls the most recently registered first; we want registration order.
        for impl in reversed(hook.get_hookimpls()):
            plugin_name = impl.plugin_name
            distribution, version = self.sources.get(plugin_name, ("unknown", "unknown"))

            staged: list[PluginEntry] = []

            def register(name: str, factory: Any, *, summary: str = "",
                         _plugin: str = plugin_name, _dist: str = distribution,
                         _version: str = version, _staged: list[PluginEntry] = staged) -> None:
                entry = PluginEntry(kind, name, factory, summary, _plugin, _dist, _version)
                self._validate(entry)
                _staged.append(entry)

            try:
                impl.function(register=register)
            except Exception as error:  # a plugin's own bug must not take epikit down
                if distribution == "epikit":
                    raise
                _broken(f"{plugin_name!r} ({distribution} {version})", error)
                continue
            # A plugin's entries are added together, only once its hook has succeeded.
            for entry in staged:
                self._add(entry)

    @staticmethod
    def _validate(entry: PluginEntry) -> None:
        if not isinstance(entry.name, str) or not NAME_PATTERN.match(entry.name):
            raise PluginError(
                f"plugin {entry.plugin!r} registered invalid {entry.kind} name {entry.name!r}: "
                f"names must match {NAME_PATTERN.pattern}"
            )
        if not (callable(entry.factory) or (isinstance(entry.factory, str) and ":" in entry.factory)):
            raise PluginError(
                f"plugin {entry.plugin!r} registered {entry.kind} {entry.name!r} with a factory "
                "that is neither callable nor a 'module:attribute' string"
            )

    def _add(self, entry: PluginEntry) -> None:
        existing = self.entries[entry.kind].get(entry.name)
        if existing is not None:
            raise DuplicatePluginError(
                f"{entry.kind} name {entry.name!r} is registered twice: by {existing.plugin!r} "
                f"({existing.distribution} {existing.version}) and by {entry.plugin!r} "
                f"({entry.distribution} {entry.version}); uninstall one or disable it with "
                "EPIKIT_LOAD_PLUGINS"
            )
        self.entries[entry.kind][entry.name] = entry


def build_plugin_manager(
    extra_plugins: tuple[object, ...] = (), *, load_entry_points: bool = True
) -> PluginRegistry:
    """Create a fresh plugin manager with built-ins, entry-point plugins and ``extra_plugins``.

    ``extra_plugins`` (modules or objects with hook implementations) are registered as if
    third-party; tests use them to add a plugin for one test.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    sources: dict[str, tuple[str, str]] = {}
    own = ("epikit", epikit_version())
    for module_name in BUILTIN_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
        sources[module_name] = own

    if load_entry_points:
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if not _allowed(entry_point):
                continue
            dist = entry_point.dist
            source = (dist.name, dist.version) if dist else ("unknown", "unknown")
            label = f"{entry_point.name!r} ({entry_point.value}, {source[0]} {source[1]})"
            try:
                manager.register(entry_point.load(), name=entry_point.name)
                manager.check_pending()
            except Exception as error:
                registered = manager.get_plugin(entry_point.name)
                if registered is not None:
                    manager.unregister(registered)
                _broken(label, error)
                continue
            sources[entry_point.name] = source

    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or repr(plugin)
        manager.register(plugin, name=name)
        manager.check_pending()
        sources[name] = (getattr(plugin, "__distribution__", "local"),
                         getattr(plugin, "__version__", "local"))
    return PluginRegistry(manager, sources)
