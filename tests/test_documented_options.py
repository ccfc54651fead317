"""Every option documented in examples/run.toml is a stage option reachable with ``-p stage.key=value``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from epikit.cli import parse_params
from epikit.config import PARAMS_KEY, default_config, merge_config, overrides_from_params
from epikit.options import STAGE_OPTIONS, table_fields
from epikit.pipeline import stage_options

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ANNOTATED = Path(__file__).resolve().parents[1] / "examples" / "run.toml"
#: Keys of a stage's table that the annotated file gives as parameters (of the segmenter
#: plugin, or of the training loop): they land in the stage's ``params``.
PLUGIN_KEYS = {("segment", "min_area"), ("train", "crops_memory_mb")}


def documented() -> list[tuple[str, str, Any]]:
    """(stage, key, documented value) of every stage option in examples/run.toml."""
    config = tomllib.loads(ANNOTATED.read_text(encoding="utf-8"))
    return [(stage, key, value) for stage in STAGE_OPTIONS for key, value in config.get(stage, {}).items()
            if (stage, key) not in PLUGIN_KEYS]


def other_value(value: Any) -> Any:
    """A value of the same type that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if isinstance(value, int) else value / 2
    if isinstance(value, (list, tuple)):
        return [*value, "H3K27ac"]
    return f"{value}x"


def test_every_stage_option_is_documented() -> None:
    keys = {(stage, key) for stage, key, _ in documented()}
    for stage, options in STAGE_OPTIONS.items():
        for field in table_fields(options):
            if field.name != PARAMS_KEY:
                assert (stage, field.name) in keys, f"{stage}.{field.name} is not in {ANNOTATED.name}"


@pytest.mark.parametrize(("stage", "key", "value"), documented())
def test_a_documented_option_is_reachable_with_p(stage: str, key: str, value: Any) -> None:
    options = STAGE_OPTIONS[stage]
    assert key in {f.name for f in dataclasses.fields(options)}, f"{stage}.{key} is no option of the stage"
    changed = other_value(getattr(options(), key))
    text = json.dumps(changed) if isinstance(changed, (list, bool)) else str(changed)  # lists as JSON
    params = parse_params([f"{stage}.{key}={text}"])  # as `epikit run -p stage.key=value` parses it
    got = getattr(stage_options(stage, merge_config(default_config(), overrides_from_params(params)), []), key)
    assert (list(got) if isinstance(got, tuple) else got) == changed


@pytest.mark.parametrize(("stage", "key"), sorted(PLUGIN_KEYS))
def test_a_documented_parameter_reaches_the_stage_params(stage: str, key: str) -> None:
    params = parse_params([f"{stage}.{key}=7"])
    got = stage_options(stage, merge_config(default_config(), overrides_from_params(params)), [])
    assert got.params[key] == 7
