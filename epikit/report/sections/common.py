"""What every report section shares: the context, "not available" notes, JSON helpers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from epikit.report.figures import FigureWriter
from epikit.report.html import Markup, note, table
from epikit.runfolder.reader import RunFolder

SIGNIFICANCE = 0.05


@dataclass
class ReportContext:
    """What sections share: the run folder, the figure writer and collected warnings."""

    run: RunFolder
    figures: FigureWriter
    warnings: list[Markup] = field(default_factory=list)


def unavailable(what: str, needs: str) -> Markup:
    """The note a section shows when its artefact is missing."""
    return note(f"{what} not available: {needs} is missing from this run folder.")


def is_number(value: Any) -> bool:
    """True for ints and floats, not for booleans."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def scalars(mapping: Mapping[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Scalar entries of a mapping, one nesting level flattened as ``outer.inner``."""
    found: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in skip:
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            found[str(key)] = value
        elif isinstance(value, Mapping):
            for inner, inner_value in value.items():
                if isinstance(inner_value, (str, int, float, bool)):
                    found[f"{key}.{inner}"] = inner_value
    return found


def walk(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (key path, value) pair in nested dicts and lists."""
    yield path, value
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield from walk(inner, (*path, str(key)))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from walk(inner, (*path, str(index)))


def records_table(records: Any, first_column: str = "") -> Markup | None:
    """A list of flat dicts, or a dict of flat dicts, as a table (``None`` if neither)."""
    if isinstance(records, Mapping) and records and all(isinstance(v, Mapping) for v in records.values()):
        records = [{first_column: key, **value} for key, value in records.items()]
    if not isinstance(records, list) or not records or not all(isinstance(r, Mapping) for r in records):
        return None
    columns: list[str] = []
    for record in records:
        for key, value in record.items():
            if key not in columns and not isinstance(value, (Mapping, list)):
                columns.append(key)
    return table(columns, ([r.get(c) for c in columns] for r in records))


def findings(run: RunFolder) -> list[Any]:
    """The ranked findings of ``metrics.json`` (strings or dicts)."""
    found = run.metrics.get("findings")
    return list(found) if isinstance(found, list) else []


def finding_text(finding: Any) -> str:
    """The sentence of a finding: its text field, or its scalar fields joined."""
    if isinstance(finding, Mapping):
        for key in ("text", "summary", "finding", "description", "message"):
            if isinstance(finding.get(key), str):
                return finding[key]
        return ", ".join(f"{k}={v}" for k, v in scalars(finding).items())
    return str(finding)
