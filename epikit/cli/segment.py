"""``epikit segment`` and ``epikit eval-segmentation``: label images and score them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command, parse_params
from epikit.cli.cluster import SCHEDULER, WORKERS
from epikit.cli.reading import CHANNELS, LAYOUT, PATTERN, PIXEL_SIZE, Z, discover
from epikit.options import SegmentOptions


@command("segment")
def segment_command(
    input: Path = typer.Argument(..., help="Folder with one sub-folder per condition, or a manifest CSV."),
    segmenter: str = typer.Option(..., "--segmenter", "-s", help="Registered segmenter name (see `epikit plugins`)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Segmenter parameter key=value (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: masks/<condition>/<stem>.tif and segmentation.csv."),
    nuclear_channel: str = typer.Option(str(SegmentOptions.nuclear_channel), "--nuclear-channel", help="Index or name of the DNA channel."),
    channels: Optional[str] = CHANNELS,
    z: Optional[str] = Z,
    pixel_size: Optional[float] = PIXEL_SIZE,
    pattern: Optional[str] = PATTERN,
    layout: Optional[Path] = LAYOUT,
    overwrite: bool = typer.Option(False, "--overwrite", help="Segment again even where a mask exists."),
    workers: int = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
) -> None:
    """Segment nuclei in every image and write one int32 label TIFF per image.

    Existing masks in OUT are reused (an interrupted run resumes) only when they were made
    with the same segmenter and parameters; OUT/segmentation.json records those.
    """
    from epikit.distributed import get_executor
    from epikit.segmentation import run

    records = discover(input, channels, z, pixel_size, pattern, layout, nuclear_channel)
    options = SegmentOptions(segmenter=segmenter, nuclear_channel=nuclear_channel, params=parse_params(param),
                             images=tuple(records), overwrite=overwrite)
    with get_executor(workers, scheduler) as executor:
        summary = run(out, options, executor=executor)
    typer.echo(f"{summary['nuclei']} nuclei in {summary['images']} image(s) "
               f"({summary['images_without_nuclei']} without nuclei); masks in {out / 'masks'}")
    for condition, counts in summary["per_condition"].items():
        typer.echo(f"  {condition}: {counts['nuclei']} nuclei in {counts['images']} image(s), "
                   f"{counts['nuclei_per_image']:.1f} per image")
    typer.echo(f"per-image counts: {out / 'segmentation.csv'}")


@command("eval-segmentation")
def eval_segmentation_command(
    pred: Path = typer.Argument(
        ..., help="Predicted label images (a folder, or a run folder with masks/); with --segmenter, where to write them."
    ),
    gt: Path = typer.Argument(
        ..., help="Ground truth: label images paired with PRED by relative path, or a DSB2018 folder (<id>/masks/*.png)."
    ),
    segmenter: Optional[str] = typer.Option(
        None, "--segmenter", "-s", help="Segment GT's images (DSB2018 folder) with this segmenter into PRED first."
    ),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Segmenter parameter key=value (repeatable)."),
    json_file: Optional[Path] = typer.Option(None, "--json", help="Also write overall + per-image scores as JSON."),
    table_file: Optional[Path] = typer.Option(None, "--table", help="Also write the per-image table as CSV."),
) -> None:
    """Score predicted masks against ground truth: DSB2018 AP at IoU 0.5-0.95, F1, TP/FP/FN."""
    from epikit.analysis.segmentation_metrics import evaluate_folders
    from epikit.io import write_csv, write_json

    timing = None
    if segmenter is not None:
        from epikit.registry import get_segmenter
        from epikit.segmentation import segment_annotated

        timing = segment_annotated(get_segmenter(segmenter, **parse_params(param)), gt, pred)
    table, overall = evaluate_folders(pred, gt)
    if timing is not None:
        table = table.merge(timing[["image", "seconds"]], on="image", how="left")
        overall["seconds_per_image"] = float(timing["seconds"].mean())
    shown = ["image", "n_true", "n_pred", "tp", "fp", "fn", "ap_50", "ap_75", "mean_ap", "f1"]
    typer.echo(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(
        f"overall ({overall['n_images']} images): AP@0.5 {overall['ap_50']:.3f}  "
        f"AP@0.75 {overall['ap_75']:.3f}  mean AP {overall['mean_ap']:.3f}  "
        f"F1 {overall['f1']:.3f}  TP {overall['tp']} FP {overall['fp']} FN {overall['fn']}"
        + (f"  {overall['seconds_per_image']:.2f} s/image" if timing is not None else "")
    )
    if table_file is not None:
        write_csv(table, table_file)
    if json_file is not None:
        write_json(json_file, {"overall": overall, "per_image": table.to_dict(orient="records")})
