"""``epikit simulate OUT``: write a synthetic study (conditions, doses, replicates) with ground truth."""

from __future__ import annotations

from pathlib import Path

import typer

from epikit.cli import command, parse_params
from epikit.errors import ConfigError


def parse_range(option: str, text: str, kind: type = float) -> tuple:
    """``"10-25"``, ``"10:25"`` or ``"12"`` as a ``(min, max)`` tuple of ``kind``."""
    parts = text.replace(":", "-").split("-") if text.count("-") <= 1 else []
    try:
        values = tuple(kind(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2):
        raise ConfigError(f"{option} {text!r} is not a number or a range like 10-25")
    return values * 2 if len(values) == 1 else values


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` or ``"512x256"`` (Y x X) as a ``(Y, X)`` tuple."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2):
        raise ConfigError(f"--size {text!r} is not a size like 512 or 512x256")
    return values * 2 if len(values) == 1 else values


def _numbers(option: str, text: str) -> tuple[float, ...]:
    """``"0,1,2.5"`` as a tuple of floats, else a :class:`ConfigError` naming ``option``."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a comma-separated list of numbers like 0,1,2,4") from None


@command("simulate")
def simulate_command(
    out: Path = typer.Argument(..., help="Folder to create (images/, masks/, manifest.csv, simulation.json)."),
    fields: int = typer.Option(8, "--fields", help="Fields per condition."),
    preset: str = typer.Option("default", "--preset",
                               help="Field geometry and optics: default (512² fields, radius 14-26 px) or "
                                    "sora (the study's 2048² super-resolution fields, nuclei 250-400 px "
                                    "across, ~17 per field); the options below override it."),
    size: str = typer.Option(None, "--size", help="Field size in pixels: 512 or YxX, e.g. 512x768 "
                                                  "(default: the preset's)."),
    nuclei: str = typer.Option(None, "--nuclei", help="Nuclei per field: a number or a range like 10-25 "
                                                      "(default: the preset's)."),
    radius: str = typer.Option(None, "--radius", help="Nucleus radius in pixels: a number or a range like "
                                                      "14-26 (default: the preset's)."),
    effect: str = typer.Option("periphery", "--effect", help="Planted effect: periphery, interior or none."),
    effect_channel: str = typer.Option("H3K27ac", "--effect-channel", help="Channel carrying the effect."),
    effect_size: float = typer.Option(0.5, "--effect-size",
                                      help="Rim/centre ratio change in VPA relative to ctrl (0.5 = 1.5x)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives byte-identical files."),
    conditions: str = typer.Option(None, "--conditions",
                                   help="Comma-separated conditions; the first is the control "
                                        "[default: ctrl,vpa; with --doses: ctrl and dose<d>]."),
    doses: str = typer.Option(None, "--doses",
                              help="Comma-separated dose of each condition, e.g. 0,1,2,4: the effect "
                                   "scales with dose / max dose; adds a dose column to the manifest."),
    replicates: int = typer.Option(1, "--replicates",
                                   help="Replicates (plates, days) of every condition, --fields fields each."),
    replicate_sd: float = typer.Option(0.0, "--replicate-sd",
                                       help="Replicate effect: SD of the log rim/centre ratio shift "
                                            "of each replicate of each condition (0-0.5)."),
    fields_per_group: int = typer.Option(1, "--fields-per-group",
                                         help="Group consecutive fields into wells of this many fields."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    workers: int = typer.Option(1, "--workers", help="Processes simulating fields in parallel "
                                                     "(the files are the same for any number)."),
    param: list[str] = typer.Option(None, "--param", "-p",
                                    help="Further simulate_field parameter as key=value (repeatable), "
                                         "e.g. -p field_brightness_sd=0.8 -p mitotic_fraction=0.05."),
) -> None:
    """Simulate multi-channel nuclei fields (Hoechst, CTCF, H3K27ac) with a planted effect and ground truth."""
    from epikit.simulate import simulate_dataset

    from epikit.simulate.dataset import dose_conditions

    dose_values = _numbers("--doses", doses) if doses is not None else None
    if conditions is None:
        names = dose_conditions(dose_values) if dose_values is not None else ("ctrl", "vpa")
    else:
        names = tuple(name.strip() for name in conditions.split(",") if name.strip())
    if not names:
        raise ConfigError(f"--conditions {conditions!r} names no condition; use e.g. ctrl,vpa")
    extra = parse_params(param)
    for key, value in extra.items():
        if isinstance(value, list):
            extra[key] = tuple(value)
    path = simulate_dataset(
        out,
        n_fields=fields,
        conditions=names,
        control=names[0],
        preset=preset,
        size=parse_size(size) if size is not None else None,
        n_nuclei=parse_range("--nuclei", nuclei, int) if nuclei is not None else None,
        radius=parse_range("--radius", radius) if radius is not None else None,
        effect=effect,
        effect_channel=effect_channel,
        effect_size=effect_size,
        seed=seed,
        fields_per_group=fields_per_group,
        doses=dose_values,
        replicates=replicates,
        replicate_sd=replicate_sd,
        overwrite=overwrite,
        workers=workers,
        **extra,
    )
    typer.echo(f"wrote {fields} {preset} field(s) x {replicates} replicate(s) x {len(names)} condition(s) "
               f"({', '.join(names)}) to {path} "
               f"(effect: {effect} in {effect_channel}, size {effect_size:g}; ground truth in {path / 'masks'})")
