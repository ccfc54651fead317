"""``epikit extract``: one masked, resized crop and one feature row per nucleus."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command
from epikit.cli.cluster import SCHEDULER, WORKERS
from epikit.cli.reading import CHANNELS, LAYOUT, PATTERN, PIXEL_SIZE, Z, discover
from epikit.options import ExtractOptions, SegmentOptions


@command("extract")
def extract_command(
    input: Path = typer.Argument(..., help="Folder with one sub-folder per condition, or a manifest CSV."),
    masks: Optional[Path] = typer.Option(
        None, "--masks", help="Label images MASKS/<condition>/<stem>.tif (default: OUT/masks, as `epikit segment` writes)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: crops.zarr, cells.parquet, metrics.json."),
    crop_size: int = typer.Option(ExtractOptions.crop_size, "--crop-size", help="Side S of the square crops (the study used 600)."),
    keep_context: bool = typer.Option(ExtractOptions.keep_context, "--keep-context", help="Keep the pixels around the nucleus instead of zeroing them."),
    scale: str = typer.Option(ExtractOptions.scale, "--scale", help="fit: resize the nucleus to fill S keeping its aspect ratio; native: no resize."),
    min_area: int = typer.Option(ExtractOptions.min_area, "--min-area", help="Skip nuclei smaller than this many pixels."),
    max_area: int = typer.Option(ExtractOptions.max_area, "--max-area", help="Skip nuclei larger than this many pixels (0: no limit)."),
    n_shells: int = typer.Option(ExtractOptions.n_shells, "--n-shells", help="Concentric shells of the shell features (the study: 5)."),
    align: str = typer.Option(ExtractOptions.align, "--align", help="none, or major-axis: rotate each nucleus's major axis to horizontal."),
    normalise: str = typer.Option(ExtractOptions.normalise, "--normalise", help="Intensity scaling: image (percentiles per image), cell, or none."),
    channels: Optional[str] = CHANNELS,
    nuclear_channel: str = typer.Option(str(SegmentOptions.nuclear_channel), "--nuclear-channel", help="Channel --z best focuses on (as given to `epikit segment`)."),
    z: Optional[str] = Z,
    pixel_size: Optional[float] = PIXEL_SIZE,
    pattern: Optional[str] = PATTERN,
    layout: Optional[Path] = LAYOUT,
    ring_width_um: float = typer.Option(ExtractOptions.ring_width_um, "--ring-width-um", help="Also measure rings of this fixed width (µm) from the nuclear edge inwards (0: off)."),
    features: bool = typer.Option(ExtractOptions.features, "--features/--no-features", help="Measure per-cell features (morphology, intensity, texture, shells)."),
    workers: int = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
) -> None:
    """Cut every nucleus out into crops.zarr and measure it into cells.parquet (resumable)."""
    from epikit.distributed import get_executor
    from epikit.extraction import run

    records = discover(input, channels, z, pixel_size, pattern, layout, nuclear_channel)
    options = ExtractOptions(crop_size=crop_size, keep_context=keep_context, scale=scale, align=align,
                             normalise=normalise, min_area=min_area, max_area=max_area, n_shells=n_shells,
                             ring_width_um=ring_width_um,
                             images=tuple(records), masks=None if masks is None else str(masks),
                             features=features)
    with warnings.catch_warnings(record=True) as caught, get_executor(workers, scheduler) as executor:
        warnings.simplefilter("always")
        summary = run(out, options, executor=executor)
    for warning in caught:
        typer.echo(f"warning: {warning.message}", err=True)
    skipped = ", ".join(f"{summary[f'n_skipped_{k}']} {k}" for k in ("border", "small", "large"))
    typer.echo(f"{summary['n_cells']} cells from {summary['n_images']} image(s) "
               f"({summary['n_images_resumed']} already done); skipped nuclei: {skipped}")
    for condition, count in summary["cells_per_condition"].items():
        typer.echo(f"  {condition}: {count} cells")
    if summary.get("cells_per_second"):
        typer.echo(f"{summary['cells_per_second']:.0f} cells/s; crops in {out / 'crops.zarr'}, "
                   f"table in {out / 'cells.parquet'}")
