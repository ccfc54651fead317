"""Building HTML safely: every value is escaped unless it is already :class:`Markup`.

Report text mixes trusted markup (tags written here) with user data (condition, channel
and file names, parameters). Everything that is not :class:`Markup` goes through
:func:`html.escape` on its way in, so a condition folder named
``<script>alert(1)</script>`` shows as text and never as a tag.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

_TAG_NAME = re.compile(r"^[a-z][a-z0-9]*$")
_ATTR_NAME = re.compile(r"^[a-z][a-z0-9_:-]*$")

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       margin: 0; background: #f4f6f8; }
header { background: #1f3a5f; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 24px; }
header p { margin: 0; opacity: 0.85; }
nav { padding: 8px 32px; background: #e3e8ee; font-size: 13px; }
nav a { margin-right: 14px; color: #1f3a5f; text-decoration: none; }
main { padding: 8px 32px 40px 32px; max-width: 1280px; }
section { background: #fff; border: 1px solid #d8dee5; border-radius: 6px; padding: 6px 20px 16px;
          margin: 18px 0; }
h2 { font-size: 19px; border-bottom: 1px solid #e3e8ee; padding-bottom: 6px; }
h3 { font-size: 15px; margin: 18px 0 6px 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 12.5px; display: block; overflow-x: auto;
        max-width: 100%; }
th, td { border: 1px solid #d8dee5; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef2f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.significant td { background: #fff6d9; }
tr.disagrees td { background: #fff1e6; }
figure { display: inline-block; margin: 8px 16px 8px 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #e3e8ee; }
figcaption { font-size: 12px; color: #4a5562; max-width: 640px; }
.note { color: #5b6672; font-style: italic; }
.warning { background: #fff1e6; border-left: 4px solid #e8762b; padding: 6px 10px; margin: 6px 0; }
.finding { background: #eef7ee; border-left: 4px solid #3a8f3a; padding: 6px 10px; margin: 6px 0; }
.finding.flagged { background: #fff1e6; border-left-color: #e8762b; }
pre { background: #f4f6f8; padding: 8px; overflow-x: auto; font-size: 12px; }
details summary { cursor: pointer; color: #1f3a5f; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #d8dee5; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 20px; }
"""


class Markup(str):
    """A string of trusted HTML: :func:`escape` passes it through unchanged."""

    __slots__ = ()


def escape(value: Any) -> Markup:
    """HTML-escape ``value`` (quotes included) unless it already is :class:`Markup`."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[Any], separator: str = "\n") -> Markup:
    """Concatenate parts, escaping each that is not :class:`Markup`."""
    return Markup(separator.join(escape(part) for part in parts))


def element(tag: str, *children: Any, **attrs: Any) -> Markup:
    """``<tag attrs>children</tag>``; attribute values and non-Markup children are escaped.

    Attribute names use ``_`` for ``-`` and a trailing ``_`` for Python keywords
    (``class_="x"``, ``data_state="y"``); ``None`` / ``False`` values are left out.
    """
    if not _TAG_NAME.match(tag):
        raise ValueError(f"invalid tag name {tag!r}")
    rendered = []
    for name, value in attrs.items():
        name = name.rstrip("_").replace("_", "-")
        if not _ATTR_NAME.match(name):
            raise ValueError(f"invalid attribute name {name!r}")
        if value is None or value is False:
            continue
        rendered.append(name if value is True else f'{name}="{escape(value)}"')
    opening = " ".join([tag, *rendered])
    if tag in {"img", "br", "hr", "meta", "col"}:
        return Markup(f"<{opening}>")
    return Markup(f"<{opening}>{join(children, '')}</{tag}>")


def paragraph(*children: Any) -> Markup:
    """A ``<p>`` element."""
    return element("p", *children)


def note(text: Any) -> Markup:
    """A short grey note, e.g. why a section has nothing to show."""
    return element("p", text, class_="note")


def warning(text: Any) -> Markup:
    """A highlighted warning line."""
    return element("div", text, class_="warning")


def image(src: str, alt: Any, caption: Any = None) -> Markup:
    """A figure with a relative PNG link (``src`` is URL-quoted) and an optional caption."""
    img = element("img", src=quote(src), alt=alt, title=alt)
    return element("figure", img, element("figcaption", caption) if caption is not None else "")


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers to short strings (small p-values in scientific notation), others to ``str``."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and abs(value) < 10 ** -(digits - 1):
            return f"{value:.2e}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3e}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v, digits) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={format_value(v, digits)}" for k, v in value.items())
    return str(value)


def _is_number(value: Any) -> bool:
    if isinstance(value, np.generic):
        value = value.item()
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(columns: Sequence[Any], rows: Iterable[Sequence[Any]],
          row_classes: Sequence[str | None] | None = None, digits: int = 3) -> Markup:
    """A table; numbers are formatted with :func:`format_value` and right-aligned."""
    head = element("tr", *(element("th", c) for c in columns))
    body = []
    for index, row in enumerate(rows):
        cells = [element("td", v if isinstance(v, Markup) else format_value(v, digits),
                         class_="num" if _is_number(v) else None) for v in row]
        row_class = row_classes[index] if row_classes is not None else None
        body.append(element("tr", *cells, class_=row_class))
    return element("table", element("thead", head), element("tbody", *body))


def mapping_table(mapping: Mapping[str, Any], key: str = "name", value: str = "value",
                  digits: int = 3) -> Markup:
    """A two-column table of a mapping's items."""
    return table([key, value], ([k, v] for k, v in mapping.items()), digits=digits)


def section(anchor: str, title: Any, *children: Any) -> Markup:
    """A report section with an anchor id (trusted, ASCII) and an escaped title."""
    return element("section", element("h2", title), *children, id=anchor)


def document(title: Any, subtitle: Any, sections: Sequence[tuple[str, str, Markup]]) -> str:
    """A complete, self-contained HTML page: inline CSS, no scripts, no external resources.

    ``sections`` holds (anchor, navigation label, section markup). A Content-Security-Policy
    forbids every script, so even a bug in escaping could not run code from user data.
    """
    nav = element("nav", *(element("a", label, href=f"#{anchor}") for anchor, label, _ in sections))
    policy = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'"
    head = join([
        Markup('<meta charset="utf-8">'),
        element("meta", http_equiv="Content-Security-Policy", content=policy),
        element("meta", name="viewport", content="width=device-width, initial-scale=1"),
        element("title", title),
        element("style", Markup(STYLE)),
    ])
    body = join([
        element("header", element("h1", title), element("p", subtitle)),
        nav,
        element("main", *(markup for _, _, markup in sections)),
    ])
    return f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n{head}\n</head>\n<body>\n{body}\n</body>\n</html>\n"
