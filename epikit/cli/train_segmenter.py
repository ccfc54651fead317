"""``epikit train-segmenter maskrcnn``: train the nuclei Mask R-CNN (simulator or user data)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command
from epikit.errors import ConfigError

TRAINABLE = ("maskrcnn",)


@command("train-segmenter")
def train_segmenter_command(
    name: str = typer.Argument(..., help="Segmenter to train: maskrcnn."),
    out: Path = typer.Option(..., "--out", help="Checkpoint file to write (.pt); a .json sidecar goes beside it."),
    data: str = typer.Option(
        "simulate", "--data",
        help="'simulate' (fresh diverse simulated fields) or a folder: DSB2018 layout "
        "(<id>/images/<id>.png, <id>/masks/*.png) or images/ + masks/ label-TIFF pairs.",
    ),
    steps: int = typer.Option(3000, "--steps", help="Optimiser steps."),
    batch: int = typer.Option(2, "--batch", help="Fields per step."),
    size: int = typer.Option(256, "--size", help="Training field / crop side in pixels (multiple of 32)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, warm-up + cosine decay)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights, data, augmentation)."),
    nuclear_channel: int = typer.Option(0, "--nuclear-channel", help="Channel of the DNA stain in user images."),
    workers: int = typer.Option(1, "--workers", help="Background processes building training fields (0 = none)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0 = torch's default)."),
    checkpoint_every: int = typer.Option(250, "--checkpoint-every", help="Write a usable checkpoint every N steps."),
    max_minutes: float = typer.Option(
        0.0, "--max-minutes",
        help="Time budget (0 = none): the schedule follows steps or time, whichever is further; stops when up.",
    ),
    val_fields: int = typer.Option(10, "--val-fields", help="Held-out simulated fields for the validation AP (0 = skip)."),
    val_size: int = typer.Option(512, "--val-size", help="Side of the validation fields in pixels."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Share of annotated images held out (fixed by image id, listed in the sidecar)."
    ),
    simulated_fraction: float = typer.Option(
        0.15, "--simulated-fraction", help="Share of training samples drawn from the simulator (annotated data only)."
    ),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this checkpoint's weights (path or URL)."),
    data_source: Optional[str] = typer.Option(
        None, "--data-source", help="Where the data came from and its licence (recorded in the sidecar)."
    ),
) -> None:
    """Train a segmenter and write its checkpoint and metadata sidecar."""
    if name not in TRAINABLE:
        raise ConfigError(f"segmenter {name!r} cannot be trained here; trainable: {', '.join(TRAINABLE)}")
    import torch

    from epikit.training.maskrcnn import train_maskrcnn

    if threads > 0:
        torch.set_num_threads(threads)
    # The full command with every option spelled out (defaults included) reproduces the run.
    argv = ["epikit", "train-segmenter", name, "--data", data, "--steps", steps, "--batch", batch,
            "--size", size, "--lr", lr, "--seed", seed, "--nuclear-channel", nuclear_channel,
            "--workers", workers, "--threads", threads, "--checkpoint-every", checkpoint_every,
            "--max-minutes", max_minutes,
            "--val-fields", val_fields, "--val-size", val_size, "--val-fraction", val_fraction,
            "--simulated-fraction", simulated_fraction, *(["--init", init] if init else []),
            *(["--data-source", data_source] if data_source else []), "--out", out]
    metadata = train_maskrcnn(
        out, data=data, steps=steps, batch=batch, size=size, lr=lr, seed=seed,
        nuclear_channel=nuclear_channel, workers=workers, checkpoint_every=checkpoint_every,
        max_minutes=max_minutes or None,
        val_fields=val_fields, val_size=val_size, val_fraction=val_fraction,
        simulated_fraction=simulated_fraction, init=init, data_source=data_source, command=shlex.join(str(a) for a in argv), log=typer.echo,
    )
    typer.echo(f"wrote {out} (sha256 {metadata['sha256']}) and {Path(out).with_suffix('.json')}")
