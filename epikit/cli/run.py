"""``epikit run``: raw images (or the built-in demo) to a finished run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from epikit.cli import command, parse_params
from epikit.cli.cluster import SCHEDULER, WORKERS
from epikit.cli.reading import CHANNELS, LAYOUT, PATTERN, PIXEL_SIZE, Z, channel_list, reading_flags


def resolve_settings(
    config: Path | None,
    input: Path | None,
    channels: str | None,
    param: list[str] | None,
    *,
    seed: int | None = None,
    skip_bad: bool = False,
    plugins: dict[str, dict[str, str | None]] | None = None,
    reading: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults, then ``--config``, then command-line flags, then ``-p stage.key=value``.

    ``reading`` holds the flags of the ``read`` table (``--z``, ``--pixel-size``, ...); None
    values are left alone.
    """
    from epikit.config import default_config, load_config, merge_config, overrides_from_params

    settings = load_config(config) if config else default_config()
    flags: dict[str, Any] = {}
    if input is not None:
        flags["input"] = str(input)
    if channel_list(channels):
        flags["channels"] = channel_list(channels)
    if seed is not None:
        flags["seed"] = seed
    if skip_bad:
        flags["skip_bad"] = True
    for stage, options in {**(plugins or {}), "read": reading or {}}.items():
        chosen = {key: value for key, value in options.items() if value not in (None, "")}
        if chosen:
            flags[stage] = chosen
    settings = merge_config(settings, flags)
    return merge_config(settings, overrides_from_params(parse_params(param)))


@command("run")
def run_command(
    input: Optional[Path] = typer.Argument(
        None, help="Folder with one sub-folder per condition, or a manifest CSV. "
                   "Omit to run on the built-in simulated demo."),
    out: Path = typer.Option(Path("epikit-run"), "--out", "-o", help="Run folder to write."),
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="TOML configuration (e.g. a previous RUN/config.toml)."),
    segmenter: Optional[str] = typer.Option(None, help="Segmenter plugin name."),
    classifier: Optional[str] = typer.Option(None, help="Classifier plugin name."),
    explainer: Optional[str] = typer.Option(None, help="Explainer plugin name."),
    channels: Optional[str] = CHANNELS,
    z: Optional[str] = Z,
    pixel_size: Optional[float] = PIXEL_SIZE,
    pattern: Optional[str] = PATTERN,
    layout: Optional[Path] = LAYOUT,
    seed: Optional[int] = typer.Option(None, help="Random seed for every stage."),
    param: Optional[list[str]] = typer.Option(
        None, "--param", "-p", help="stage.key=value, e.g. -p train.epochs=20 -p segment.min_area=30."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unreadable images (listed in the report)."),
    force: bool = typer.Option(False, "--force", help="Redo every stage, ignoring finished work."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    workers: int = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
) -> None:
    """Segment, extract cells, train, explain, find biomarkers and write a report."""
    from epikit.distributed import get_executor
    from epikit.pipeline import run_pipeline

    settings = resolve_settings(config, input, channels, param, seed=seed, skip_bad=skip_bad,
                                plugins={"segment": {"segmenter": segmenter},
                                         "train": {"classifier": classifier},
                                         "explain": {"explainer": explainer}},
                                reading=reading_flags(z, pixel_size, pattern, layout))
    with get_executor(workers, scheduler) as executor:
        manifest = run_pipeline(settings, out, force=force, progress=not quiet, executor=executor)
    typer.echo(f"run folder: {out}")
    for stage, seconds in manifest["stage_seconds"].items():
        typer.echo(f"  {stage:<11} {seconds:8.1f} s")
    if (out / "report.html").exists():
        typer.echo(f"report: {out / 'report.html'}")
