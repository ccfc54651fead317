"""``epikit compare``: run a grid of segmenters x classifiers x explainers on one input."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command, parse_params


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
) -> None:
    """Compare methods on equal footing: shared segmentation, identical splits and seeds."""
    from epikit.compare import COMPARISON_FILE, compare_methods
    from epikit.config import default_config, load_config, merge_config, overrides_from_params

    settings = load_config(config) if config else default_config()
    flags: dict[str, object] = {}
    if input is not None:
        flags["input"] = str(input)
    if channels:
        flags["channels"] = [c.strip() for c in channels.split(",") if c.strip()]
    settings = merge_config(merge_config(settings, flags), overrides_from_params(parse_params(param)))
    table = compare_methods(settings, out, segmenters, classifiers, explainers,
                            ground_truth=ground_truth, progress=not quiet)
    shown = [c for c in ("segmenter", "classifier", "explainer", "balanced_accuracy", "agrees") if c in table]
    typer.echo(table[shown].to_string(index=False))
    typer.echo(f"comparison: {out / COMPARISON_FILE} and {out / 'comparison.html'}")
