"""The ``epikit`` command line: a thin typer app over the library.

Each area has its own module here that adds commands to :data:`app` with :func:`command`.
Modules import the library inside the command functions so that ``epikit --help`` and
``epikit plugins`` start quickly and never import torch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from epikit.errors import ConfigError, EpikitError

app = typer.Typer(
    name="epikit",
    help="Image-based epigenetic profiling of cell nuclei.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """Register a command on :data:`app`; an :class:`EpikitError` becomes one line + exit code."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*f_args: Any, **f_kwargs: Any) -> Any:
            try:
                return function(*f_args, **f_kwargs)
            except EpikitError as error:
                typer.echo(f"error: {error}", err=True)
                raise typer.Exit(error.exit_code) from None

        app.command(*args, **kwargs)(wrapper)
        return function

    return decorate


def parse_value(text: str) -> Any:
    """Turn a ``-p`` value into int, float, bool, None (``null``), a JSON list/dict, or keep the string.

    ``none`` stays a string: it is a value of several options (``demo.effect=none``,
    ``extract.align=none``, ``extract.normalise=none``); write ``null`` for "no value".
    """
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered == "null":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse repeated ``-p key=value`` options into a dict (values via :func:`parse_value`)."""
    params: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"parameter {item!r} is not of the form key=value (e.g. -p min_area=30)")
        params[key.strip()] = parse_value(value)
    return params


@app.callback(invoke_without_command=True)
def root(
    version: bool = typer.Option(False, "--version", help="Print the epikit version and exit."),
) -> None:
    """Image-based epigenetic profiling of cell nuclei."""
    if version:
        from epikit.plugins import epikit_version

        typer.echo(epikit_version())
        raise typer.Exit()


def main() -> None:
    """Console-script entry point."""
    app()


def _load_command_modules() -> None:
    """Import every module in this package: each adds its commands to :data:`app`."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_command_modules()
