"""``epikit compare``: a specification curve over a grid of plugins and analysis choices on one input."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command
from epikit.cli.cluster import SCHEDULER, WORKERS
from epikit.options import CompareOptions


@command("compare")
def compare_command(
    input: Optional[Path] = typer.Argument(
        None, help="Input folder or manifest CSV; omit to compare on the built-in demo."),
    segmenters: str = typer.Option("watershed,maskrcnn", help="Comma-separated segmenter names."),
    classifiers: str = typer.Option("resnet10", help="Comma-separated classifier names."),
    explainers: str = typer.Option("scorecam,gradcam", help="Comma-separated explainer names."),
    crop_sizes: Optional[str] = typer.Option(None, "--crop-sizes", help="Crop sizes to compare, e.g. 48,64,96."),
    scales: Optional[str] = typer.Option(None, "--scales", help="Crop scalings to compare: fit,native."),
    targets: Optional[str] = typer.Option(None, "--targets",
                                          help="Explanation target policies to compare, e.g. contrast,own."),
    shells: Optional[str] = typer.Option(None, "--shells", help="Shell definitions to compare: scaled,distance."),
    feature: str = typer.Option(CompareOptions.feature, "--feature",
                                help="CHANNEL:REGION every specification estimates (default: rim_vs_centre "
                                     "of the first non-nuclear channel)."),
    condition: str = typer.Option(CompareOptions.condition, "--condition",
                                  help="Condition compared with the reference (default: the first other)."),
    permutations: int = typer.Option(CompareOptions.permutations, "--permutations",
                                     help="Relabellings of the joint test."),
    max_runs: int = typer.Option(CompareOptions.max_runs, "--max-runs", help="Refuse grids with more runs."),
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
    """Compare methods on equal footing: shared stages, identical splits and seeds, specification curves."""
    from epikit.cli.run import resolve_settings
    from epikit.compare import COMPARISON_FILE, compare_methods
    from epikit.distributed import get_executor

    settings = resolve_settings(config, input, channels, param)
    options = CompareOptions(feature=feature, condition=condition, permutations=permutations, max_runs=max_runs)
    choices = {"crop_size": crop_sizes, "scale": scales, "target": targets, "shell": shells}
    with get_executor(workers, scheduler) as executor:
        table = compare_methods(settings, out, segmenters, classifiers, explainers, choices=choices,
                                options=options, ground_truth=ground_truth, progress=not quiet,
                                executor=executor, announce=typer.echo)
    shown = [c for c in ("name", "balanced_accuracy", "intensity_effect", "map_effect", "agrees") if c in table]
    typer.echo(table[shown].to_string(index=False))
    typer.echo(f"comparison: {out / COMPARISON_FILE} and {out / 'comparison.html'}")
