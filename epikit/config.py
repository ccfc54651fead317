"""Run configuration: defaults, TOML files, ``-p stage.key=value`` overrides.

A configuration is a nested dict with one table per stage. Keys a stage knows are its
options; any other key given for a stage goes to its plugin (for ``train``, keys naming a
:class:`epikit.options.TrainingOptions` field, such as ``patience``, go to the training loop) (``segment.min_area=30`` reaches
the segmenter as ``min_area=30``), so every option of every stage and plugin is reachable
from the command line and from ``config.toml``. The resolved configuration is written into
the run folder, and ``epikit run --config RUN/config.toml`` reproduces the run.
:data:`DEFAULTS` is generated from the stage options of :mod:`epikit.options`, the one place
each default is defined.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from epikit.errors import ConfigError
from epikit.options import STAGE_OPTIONS, DemoOptions, ReadOptions, option_values

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: Where a stage's plugin parameters live inside its table.
PARAMS_KEY = "params"


def _defaults() -> dict[str, Any]:
    """The default configuration, generated from the options dataclasses of :mod:`epikit.options`."""
    config: dict[str, Any] = {"seed": 0, "input": "", "channels": [], "skip_bad": False,
                              "demo": option_values(DemoOptions()), "read": option_values(ReadOptions())}
    for stage, options in STAGE_OPTIONS.items():
        config[stage] = option_values(options())  # a plugin stage's includes PARAMS_KEY
    return config


#: Stages in the order they run; each stage's table is a key of :data:`DEFAULTS`.
STAGES: tuple[str, ...] = tuple(STAGE_OPTIONS)
PLUGIN_STAGES: dict[str, str] = {"segment": "segmenter", "train": "classifier", "explain": "explainer"}
#: The default configuration: one table per stage (see :mod:`epikit.options`).
DEFAULTS: dict[str, Any] = _defaults()


def default_config() -> dict[str, Any]:
    """A fresh copy of the default configuration."""
    return copy.deepcopy(DEFAULTS)


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> None:
    for key, value in update.items():
        if key not in base:
            if where in PLUGIN_STAGES or where.endswith(f".{PARAMS_KEY}") or where == f"{PARAMS_KEY}":
                base.setdefault(PARAMS_KEY, {})[key] = value
                continue
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown option {where + '.' if where else ''}{key}; "
                              f"known here: {known}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"option {where + '.' if where else ''}{key} must be a table")
            target = base[key]
            if key == PARAMS_KEY:
                target.update(value)
            else:
                _merge(target, value, f"{where}.{key}" if where else key)
        else:
            base[key] = value


def merge_config(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``update`` (unknown plugin-stage keys become plugin params)."""
    merged = copy.deepcopy(base)
    _merge(merged, update, "")
    return merged


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML configuration file and merge it over the defaults."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: configuration file not found") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML ({error})") from error
    return merge_config(default_config(), data)


def overrides_from_params(params: dict[str, Any]) -> dict[str, Any]:
    """Turn ``{"train.epochs": 5, "segment.min_area": 30}`` into a nested update dict."""
    nested: dict[str, Any] = {}
    for dotted, value in params.items():
        parts = dotted.split(".")
        if parts[0] not in DEFAULTS:
            raise ConfigError(f"parameter {dotted!r} must start with a stage or option name: "
                              f"{', '.join(DEFAULTS)} (e.g. -p train.epochs=20)")
        cursor = nested
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
    return nested


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and value != value:
            raise ConfigError("NaN cannot be stored in a configuration")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def dump_config(config: dict[str, Any]) -> str:
    """Serialise a configuration (nested dicts of scalars and lists) as TOML text."""
    lines: list[str] = []

    def table(data: dict[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in data.items() if isinstance(v, dict)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        for key, value in tables.items():
            table(value, f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key))

    table(config, "")
    return "# epikit run configuration (epikit run --config this-file reproduces the run)\n" + \
        "\n".join(lines).lstrip("\n") + "\n"


def _rows(value: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of an array (NumPy, Zarr, or a torch tensor on any device) as a C-ordered NumPy array."""
    import numpy as np

    part = value[start:stop]
    if hasattr(part, "detach"):  # a torch tensor: to the CPU, one slice at a time
        part = part.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(part)


def array_digest(value: Any, chunk_bytes: int = 1 << 24) -> dict[str, Any]:
    """Shape, dtype and sha256 of an array's bytes (C order), hashed a slice of rows at a time.

    No copy of the whole array is made (a contiguous NumPy array is not copied at all; a
    tensor or Zarr array is read ``chunk_bytes`` at a time), and the digest equals the sha256
    of the whole array's bytes.
    """
    import numpy as np

    shape = tuple(int(n) for n in value.shape)
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * int(value.element_size() if hasattr(
        value, "element_size") else np.dtype(value.dtype).itemsize))
    step = max(1, chunk_bytes // row_bytes)
    hasher = hashlib.sha256()
    dtype = None
    for start in range(0, shape[0], step):
        part = _rows(value, start, start + step)
        dtype = part.dtype
        hasher.update(part.reshape(-1).view(np.uint8))
    dtype = dtype if dtype is not None else _rows(value, 0, 0).dtype
    return {"shape": list(shape), "dtype": str(dtype), "sha256": hasher.hexdigest()}


def _hashable(value: Any) -> Any:
    """JSON stand-in for a value JSON cannot hold: an array by its shape, dtype and bytes, else its str."""
    array_like = hasattr(value, "tobytes") or hasattr(value, "detach") or type(value).__module__.startswith("zarr")
    if array_like and getattr(value, "ndim", 0) > 0 and hasattr(value, "dtype"):
        return array_digest(value)
    return str(value)


def section_hash(*parts: Any) -> str:
    """The one settings hash: a stable short hash of JSON-serialisable parts and arrays.

    Stage fingerprints (options + upstream hashes), the demo input's and every resume
    scratch key (:mod:`epikit.runfolder.scratch`, finished folds) are made by it. Arrays
    (NumPy, Zarr, torch tensors) count by content, hashed in slices (:func:`array_digest`).
    """
    text = json.dumps(parts, sort_keys=True, default=_hashable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
