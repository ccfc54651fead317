"""``epikit power RUN``: how many images and replicates, planned from a pilot run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command
from epikit.errors import ConfigError
from epikit.options import PowerOptions


def _integers(option: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values:
        raise ConfigError(f"{option} {text!r} is not a comma-separated list of whole numbers like 2,4,8")
    return values


@command("power")
def power_command(
    run_dir: Path = typer.Argument(..., help="Pilot run folder (after `epikit extract` or `epikit run`)."),
    feature: str = typer.Option(PowerOptions.feature, "--feature",
                                help="CHANNEL:REGION (shell_<k>, rim_vs_centre) or a cells.parquet column."),
    effect: Optional[float] = typer.Option(PowerOptions.effect, "--effect",
                                           help="Difference to detect, in the feature's units; "
                                                "omit for the effect detectable at --power."),
    replicates: str = typer.Option(",".join(map(str, PowerOptions.replicates)), "--replicates",
                                   help="Replicates per condition to consider."),
    images: str = typer.Option(",".join(map(str, PowerOptions.images)), "--images",
                               help="Images per replicate and condition to consider."),
    alpha: float = typer.Option(PowerOptions.alpha, "--alpha", help="Significance level of the test."),
    power: float = typer.Option(PowerOptions.power, "--power", help="Target power."),
    simulations: int = typer.Option(PowerOptions.simulations, "--simulations", help="Simulated experiments per grid point."),
    min_units: int = typer.Option(PowerOptions.min_units, "--min-units",
                                  help="Replicates per condition that make the replicate the unit of the test "
                                       "(as -p biomarkers.min_units)."),
    seed: int = typer.Option(PowerOptions.seed, "--seed", help="Seed of the simulations."),
) -> None:
    """Estimate variance components from a pilot and simulate the power of the design-unit test."""
    from epikit.power_plan import plan_power

    options = PowerOptions(feature=feature, effect=effect, replicates=_integers("--replicates", replicates),
                           images=_integers("--images", images), alpha=alpha, power=power,
                           simulations=simulations, min_units=min_units, seed=seed)
    plan = plan_power(run_dir, options)
    c = plan["components"]
    replicate = "not estimable (assumed 0)" if c["replicate"] is None else f"{c['replicate']:.3g}"
    typer.echo(f"{feature}: variance between replicates {replicate}, between images {c['image']:.3g}, "
               f"between cells {c['cell']:.3g} ({c['cells_per_image']:.1f} cells per image; "
               f"pilot: {c['n_images']} images, {c['n_cells']} cells)")
    typer.echo(plan["table"].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    best = plan["recommendation"]
    if best is not None:
        typer.echo(f"fewest images reaching {power:.0%} power: {best['replicates']} replicate(s) x "
                   f"{best['images_per_replicate']} image(s) per condition ({best['unit']} unit)")
    elif effect is not None:
        typer.echo(f"no grid point reaches {power:.0%} power at a false-positive rate <= 10%; widen the grid")
    for note in plan["assumptions"]:
        typer.echo(f"note: {note}")
    typer.echo(f"wrote {', '.join(plan['paths'])}")
