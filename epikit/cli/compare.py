"""``epikit compare``: run a grid of segmenters x classifiers x explainers on one input."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command
from epikit.cli.cluster import SCHEDULER, WORKERS


@command("compare")
def compare_command(
    input: Optional[Path] = typer.Argument(
        None, help="Input folder or manifest CSV; omit to compare on the built-in demo."),
    segmenters: str = typer.Option("watershed,maskrcnn", help="Comma-separated segmenter names."),
    classifiers: str = typer.Option("resnet10", help="Comma-separated classifier names."),
    explainers: str = typer.Option("scorecam,gradcam", help="Comma-separated explainer names."),
    out: Path = typer.Option(Path("epikit-compare"), "--out", "-o", help="Comparison folder."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML configuration shared by all runs."),
    ground_truth: Optional[Path] = typer.Option(
        None, "--ground-truth", help="Label images to score segmentation AP against "
                                     "(the demo's own ground truth is used automatically)."),
    channels: Optional[str] = typer.Option(None, help="Comma-separated channel names."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="stage.key=value for every run."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    workers: int = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
) -> None:
    """Compare methods on equal footing: shared segmentation, identical splits and seeds."""
    from epikit.cli.run import resolve_settings
    from epikit.compare import COMPARISON_FILE, compare_methods
    from epikit.distributed import get_executor

    settings = resolve_settings(config, input, channels, param)
    with get_executor(workers, scheduler) as executor:
        table = compare_methods(settings, out, segmenters, classifiers, explainers,
                                ground_truth=ground_truth, progress=not quiet, executor=executor)
    shown = [c for c in ("segmenter", "classifier", "explainer", "balanced_accuracy", "agrees") if c in table]
    typer.echo(table[shown].to_string(index=False))
    typer.echo(f"comparison: {out / COMPARISON_FILE} and {out / 'comparison.html'}")
