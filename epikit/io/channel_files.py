"""One file per channel, the way screening microscopes export fields (ImageXpress, Operetta).

Two ways to say which files make one field:

* a manifest with one path column per channel, ``path_<channel>`` (the channel's name)::

      path_Hoechst,path_CTCF,condition
      A01_s1_w1.tif,A01_s1_w2.tif,untreated

* a file-name pattern (``--pattern '{well}_{field}_w{channel}.tif'``) with ``--channels``
  listing the channel values in order (``1,2``, or ``1=Hoechst,2=CTCF`` to name them).
  ``{name}`` matches any text without ``/``; files whose channel value is not listed are
  ignored. A pattern with a ``/`` matches the path below the input folder. The condition
  comes from a ``{condition}`` field, else from the layout CSV through ``{well}``, else
  from the sub-folder holding the files. Fields are the files that agree in every other
  field; the image is named by those values (``A01_s1``), which also become cell columns,
  and with ``{well}`` the well is the group.
"""

from __future__ import annotations

import re
from pathlib import Path

from epikit.errors import ConfigError, InputError
from epikit.io.plates import layout_row, read_layout, well_name
from epikit.io.record import InputEntry

PATH_PREFIX = "path_"


def channel_columns(columns: list[str]) -> list[str]:
    """The ``path_<channel>`` columns of a manifest, in order."""
    return [c for c in columns if c and c.startswith(PATH_PREFIX) and len(c) > len(PATH_PREFIX)]


def channel_names_of(columns: list[str]) -> tuple[str, ...]:
    """Channel names of ``path_<channel>`` columns."""
    return tuple(c[len(PATH_PREFIX):] for c in columns)


def parse_channels(channels: list[str] | tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``["1=Hoechst", "2"]`` -> values ``("1", "2")`` and names ``("Hoechst", "2")``."""
    values, names = [], []
    for item in channels:
        value, _, name = str(item).partition("=")
        values.append(value.strip())
        names.append(name.strip() or value.strip())
    if len(set(values)) != len(values):
        raise ConfigError(f"--channels lists a channel value twice ({', '.join(values)})")
    return tuple(values), tuple(names)


def compile_pattern(pattern: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """A regular expression for ``pattern`` and its field names; ``{channel}`` is required."""
    parts = re.split(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", pattern)
    fields = tuple(parts[1::2])
    if "channel" not in fields or len(set(fields)) != len(fields):
        raise ConfigError(f"--pattern {pattern!r} must hold {{channel}} once and each field once, "
                          "e.g. '{well}_{field}_w{channel}.tif'")
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+?)" for i, p in enumerate(parts))
    return re.compile(regex + "$"), fields


def natural_key(text: str) -> list[object]:
    """Sort key that orders numbers by value: ``field_2`` before ``field_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def pattern_entries(folder: Path, pattern: str, channels: list[str] | tuple[str, ...],
                    layout_path: str | Path | None = None) -> tuple[list[InputEntry], tuple[str, ...]]:
    """Entries of the per-channel files below ``folder`` that match ``pattern``, and the channel names."""
    regex, fields = compile_pattern(pattern)
    layout = read_layout(layout_path) if layout_path else None
    files = sorted((p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    found: dict[tuple[str, ...], dict[str, Path]] = {}
    keys: dict[tuple[str, ...], tuple[str, dict[str, str]]] = {}
    for path in files:
        relative = path.relative_to(folder).as_posix()
        match = regex.match(relative if "/" in pattern else path.name)
        if not match:
            continue
        values = match.groupdict()
        channel = values.pop("channel")
        condition = values.pop("condition", None)
        if "well" in values:
            values["well"] = well_name(values["well"], str(path))
        if condition is None and layout is not None and "well" in values:
            condition = layout_row(layout, layout_path, values["well"], path)["condition"]
        if condition is None:
            parent = relative.split("/")[0] if "/" in relative else ""
            if not parent:
                raise InputError(f"{path}: no condition for this file; put each condition's files into "
                                 "a sub-folder, add {condition} to --pattern or give --layout with {well}")
            condition = parent
        key = (condition, str(path.parent), *values.values())
        keys[key] = (condition, values)
        found.setdefault(key, {})
        if channel in found[key]:
            raise InputError(f"{path}: channel {channel} of this field is also {found[key][channel]}; "
                             "make --pattern tell the files apart")
        found[key][channel] = path
    if not found:
        raise InputError(f"{folder}: no file matches --pattern {pattern!r}; check the pattern against a "
                         "file name, e.g. '{well}_{field}_w{channel}.tif'")
    seen = sorted({c for files_ in found.values() for c in files_}, key=natural_key)
    values_, names = parse_channels(channels) if channels else (tuple(seen), tuple(seen))
    entries = []
    for key, by_channel in found.items():
        condition, values = keys[key]
        missing = [v for v in values_ if v not in by_channel]
        if missing:
            some = next(iter(by_channel.values()))
            raise InputError(f"{some}: the field {'_'.join(values.values()) or some.stem} lacks channel(s) "
                             f"{', '.join(missing)}; add the files or list only present channels in --channels")
        metadata = dict(values)
        paths = tuple(by_channel[v] for v in values_)
        origin = str(paths[0])
        if layout is not None and "well" in values:
            metadata.update({k: v for k, v in layout_row(layout, layout_path, values["well"], folder).items()
                             if k != "condition"})
            origin += f" (layout {layout_path}, well {values['well']})"
        group = "/".join(filter(None, (values.get("plate"), values.get("well")))) or None
        entries.append(InputEntry(paths[0], condition, group, metadata, paths,
                                  name="_".join(values.values()) or paths[0].stem, origin=origin))
    return entries, names
