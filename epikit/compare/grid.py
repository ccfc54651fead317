"""The grid of ``epikit compare``: analysis choices, the specifications they span, the shared work.

Each :class:`Axis` is one analysis choice, an option of one pipeline stage: the plugins
(segmenter, classifier, explainer) and the analysis choices beyond them (crop size, crop
scaling, explanation target policy, shell definition). A specification is one value per axis.

Work is shared wherever a choice cannot affect it: the stages before the first stage whose
choice varies run once (folder ``shared/base``); then, at each stage where a choice varies,
one folder per distinct combination of the choices made so far runs up to the stage before
the next varying stage, and the final run folders (``runs/<name>``) start from those (see
:func:`epikit.compare.compare_methods`) and run the rest. The pipeline's stage fingerprints make this safe: a folder started from another
redoes every stage whose settings differ.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epikit.config import STAGES, merge_config
from epikit.errors import ConfigError


@dataclass(frozen=True)
class Axis:
    """One analysis choice: the comparison-table column ``name`` sets option ``stage.key``.

    ``label`` prefixes its value in folder names (plugin names stand alone).
    """

    name: str
    stage: str
    key: str
    label: str = ""

    @property
    def position(self) -> int:
        """Index of the axis's stage in the pipeline."""
        return STAGES.index(self.stage)


#: Every axis, in pipeline order (the order of folder names and of the choice panel).
AXES: tuple[Axis, ...] = (
    Axis("segmenter", "segment", "segmenter"),
    Axis("crop_size", "extract", "crop_size", "crop"),
    Axis("scale", "extract", "scale", "scale-"),
    Axis("classifier", "train", "classifier"),
    Axis("target", "explain", "target", "target-"),
    Axis("explainer", "explain", "explainer"),
    Axis("shell", "biomarkers", "shell_method", "shell-"),
)
PLUGIN_AXES: tuple[str, ...] = ("segmenter", "classifier", "explainer")


@dataclass(frozen=True)
class Level:
    """A shared folder level: runs the stages up to ``stop_after``, fixing the choices of ``axes``."""

    stop_after: str
    axes: tuple[Axis, ...]


def split_values(values: Any, what: str) -> tuple[Any, ...]:
    """A comma-separated string or a sequence as a tuple of distinct, non-empty values."""
    items = [v.strip() if isinstance(v, str) else v
             for v in (values.split(",") if isinstance(values, str) else values)]
    items = [v for v in items if v != ""]
    if not items:
        raise ConfigError(f"compare needs at least one {what}")
    if len(set(map(str, items))) != len(items):
        raise ConfigError(f"{what} values listed twice: {', '.join(map(str, items))}")
    return tuple(items)


class Grid:
    """The values of every axis; ``None`` or missing lists keep the configuration's value."""

    def __init__(self, config: dict[str, Any], choices: dict[str, Any]) -> None:
        unknown = sorted(set(choices) - {a.name for a in AXES})
        if unknown:
            raise ConfigError(f"unknown comparison axis {', '.join(unknown)}; axes: "
                              f"{', '.join(a.name for a in AXES)}")
        self.config = config
        self.values: dict[str, tuple[Any, ...]] = {}
        for axis in AXES:
            given = choices.get(axis.name)
            values = split_values(given, axis.name) if given not in (None, "", ()) else (config[axis.stage][axis.key],)
            if axis.name == "crop_size":
                values = tuple(_whole_number(v, "crop size") for v in values)
            self.values[axis.name] = values
        self.check()

    def check(self) -> None:
        """Fail before any work on an unknown plugin, crop scaling or shell definition."""
        from epikit.analysis.biomarkers import SHELL_COLUMN_PREFIX
        from epikit.nuclei.crops import SCALE_MODES
        from epikit.registry import get_entry

        for name in PLUGIN_AXES:
            for value in self.values[name]:
                get_entry(name, value)  # one line with a suggestion
        for name, allowed in (("scale", SCALE_MODES), ("shell", tuple(SHELL_COLUMN_PREFIX))):
            bad = [v for v in self.values[name] if v not in allowed]
            if bad:
                raise ConfigError(f"{name} {bad[0]!r} is not one of: {', '.join(allowed)}")

    def varying(self) -> list[Axis]:
        """Axes with more than one value."""
        return [a for a in AXES if len(self.values[a.name]) > 1]

    def __len__(self) -> int:
        count = 1
        for values in self.values.values():
            count *= len(values)
        return count

    def specifications(self) -> Iterator[dict[str, Any]]:
        """Every specification (axis name -> value), in pipeline order."""
        for combination in itertools.product(*(self.values[a.name] for a in AXES)):
            yield dict(zip((a.name for a in AXES), combination))

    def levels(self) -> list[Level]:
        """The shared-folder levels (see the module docstring); empty when nothing varies."""
        starts = sorted({a.position for a in self.varying()})
        if not starts:
            return []
        cuts = ([starts[0]] if starts[0] > 0 else []) + starts[1:]
        return [Level(STAGES[cut - 1], tuple(a for a in AXES if a.position < cut)) for cut in cuts]

    def name(self, spec: dict[str, Any], axes: tuple[Axis, ...] = AXES) -> str:
        """Folder name of ``spec`` restricted to ``axes``: plugin names, then varying analysis choices."""
        parts = [f"{a.label}{spec[a.name]}" for a in axes
                 if a.name in PLUGIN_AXES or len(self.values[a.name]) > 1]
        return "__".join(parts) or "base"

    def spec_config(self, spec: dict[str, Any], axes: tuple[Axis, ...] = AXES) -> dict[str, Any]:
        """The run configuration of ``spec``'s choices on ``axes``."""
        update: dict[str, dict[str, Any]] = {}
        for axis in axes:
            update.setdefault(axis.stage, {})[axis.key] = spec[axis.name]
        return merge_config(self.config, update)

    def folders(self, out: Path, spec: dict[str, Any]) -> list[tuple[Path, Level]]:
        """The shared folders ``spec`` passes through, in order, each with its level."""
        return [(out / "shared" / self.name(spec, level.axes), level) for level in self.levels()]


def _whole_number(value: Any, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 8:
        raise ConfigError(f"{what} {value!r} must be a whole number of pixels >= 8, like 48,64,96")
    return number
