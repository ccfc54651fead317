"""``epikit report RUN_DIR``: rebuild a run folder's HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from epikit.cli import command


@command("report")
def report(
    run_dir: Path = typer.Argument(..., help="Run folder written by `epikit run`."),
) -> None:
    """Rebuild RUN_DIR/report.html and RUN_DIR/figures/ from the run folder's artefacts."""
    from epikit.options import ReportOptions
    from epikit.report import run

    typer.echo(run(run_dir, ReportOptions())["path"])
