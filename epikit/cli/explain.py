"""``epikit explain`` (maps of out-of-fold cells) and ``epikit biomarkers`` (shell statistics)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from epikit.cli import command, parse_params
from epikit.cli.cluster import SCHEDULER, WORKERS
from epikit.options import BiomarkerOptions, ExplainOptions


@command("explain")
def explain_command(
    run_dir: Path = typer.Argument(..., help="Run folder with a trained classifier (model/, cells.parquet)."),
    explainer: str = typer.Option(ExplainOptions.explainer, "--explainer", "-e", help="Explainer plugin (see `epikit plugins`)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Explainer parameter key=value, repeatable (e.g. -p weighting=softmax-over-channels)."),
    cells: str = typer.Option(ExplainOptions.cells, "--cells", help="Which out-of-fold test cells: correct, misclassified or all."),
    max_cells: int = typer.Option(ExplainOptions.max_cells, "--max-cells", help="At most this many cells per condition (seeded random choice; 0: all)."),
    target: str = typer.Option(ExplainOptions.target, "--target", help="Class to explain: contrast (every cell for the non-reference condition), own (each cell for its own condition; the study's), predicted, or a class name."),
    reference: str = typer.Option(ExplainOptions.reference, "--reference", help="Reference condition of the contrast target (default: the lowest dose when cells have doses, else ctrl/control/untreated/mock/dmso if present, else the first)."),
    view: Optional[list[str]] = typer.Option(None, "--view", help="Trained view(s) to explain (default: all trained views)."),
    seed: int = typer.Option(ExplainOptions.seed, "--seed", help="Seed of the cell choice."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    workers: int = WORKERS,
    scheduler: Optional[str] = SCHEDULER,
) -> None:
    """Explain out-of-fold test cells with the fold model that did not train on them; write maps.zarr."""
    from epikit.distributed import get_executor
    from epikit.explanation import run

    options = ExplainOptions(explainer=explainer, cells=cells, max_cells=max_cells, target=target,
                             reference=reference, params=parse_params(param), seed=seed, views=tuple(view) if view else None)
    with get_executor(workers, scheduler) as executor:
        summary = run(run_dir, options, executor=executor, progress=not quiet)
    for name, info in summary["views"].items():
        counts = ", ".join(f"{c}: {n}" for c, n in info["per_condition"].items())
        typer.echo(f"view {name}: {info['n_cells']} cells explained ({counts})")
    approximate = " (approximate: top_k channels or bfloat16 scoring)" if summary["approximate"] else ""
    typer.echo(f"{summary['explainer']} at layer {summary['layer']}{approximate}: "
               f"{summary['seconds_per_cell']:.3f} s/cell; maps in {run_dir / 'maps.zarr'}")


@command("biomarkers")
def biomarkers_command(
    run_dir: Path = typer.Argument(..., help="Run folder with maps.zarr (run `epikit explain` first)."),
    reference: str = typer.Option(BiomarkerOptions.reference, "--reference", help="Reference condition (default: the maps' reference, else the lowest dose, else ctrl/control/untreated/mock/dmso if present, else the first)."),
    alpha: float = typer.Option(BiomarkerOptions.alpha, "--alpha", help="q-value threshold of a finding."),
    image_test: str = typer.Option(BiomarkerOptions.image_test, "--image-test", help="Image-level test: permutation, mannwhitney or ttest."),
    shell_method: str = typer.Option(BiomarkerOptions.shell_method, "--shells", help="Shell definition: scaled (the study's) or distance."),
    target_swap: bool = typer.Option(BiomarkerOptions.target_swap, "--target-swap/--no-target-swap", help="Explain the cells of each map finding for the other class too and flag findings the target alone explains."),
    trust: bool = typer.Option(BiomarkerOptions.trust, "--trust/--no-trust", help="Run the trust checks (attribution, mask-edge control, faithfulness, sanity)."),
    trust_cells: int = typer.Option(BiomarkerOptions.trust_cells, "--trust-cells", help="Cells per condition for faithfulness and sanity checks."),
    control_epochs: int = typer.Option(BiomarkerOptions.control_epochs, "--control-epochs", help="Epochs of the mask-only control model (0: as many as the run's classifier)."),
    profile_bins: int = typer.Option(BiomarkerOptions.profile_bins, "--profile-bins", help="Radial profile bins from the nuclear outline to the centre."),
    profile_bin_um: float = typer.Option(BiomarkerOptions.profile_bin_um, "--profile-bin-um", help="Width of the micrometre profile bins (used when cells.parquet has pixel_size_um)."),
    profile_resamples: int = typer.Option(BiomarkerOptions.profile_resamples, "--profile-resamples", help="Bootstrap replicates and permutations of the radial profile statistics."),
    seed: int = typer.Option(BiomarkerOptions.seed, "--seed", help="Seed of permutations, bootstrap and subsets."),
    min_units: int = typer.Option(BiomarkerOptions.min_units, "--min-units", help="Units per condition a design level needs to be the unit of the tests."),
    unit_test: str = typer.Option(BiomarkerOptions.unit_test, "--unit-test", help="Test at a design unit above the image: ttest, permutation or mannwhitney."),
    overall_test: str = typer.Option(BiomarkerOptions.overall_test, "--overall-test", help="Permuted statistic across 3+ conditions: kruskal or f."),
    model: str = typer.Option(BiomarkerOptions.model, "--model", help="means, or mixed: add a linear mixed model per quantity (statsmodels)."),
) -> None:
    """Shell statistics of maps and images at the design unit -> biomarkers.csv, findings in metrics.json."""
    from epikit.biomarker_stage import run

    options = BiomarkerOptions(reference=reference, trust=trust, trust_cells=trust_cells,
                               control_epochs=control_epochs, seed=seed, alpha=alpha,
                               image_test=image_test, shell_method=shell_method, target_swap=target_swap,
                               profile_bins=profile_bins, profile_bin_um=profile_bin_um,
                               profile_resamples=profile_resamples, min_units=min_units,
                               unit_test=unit_test, overall_test=overall_test, model=model)
    summary = run(run_dir, options)
    design = summary["design"]
    typer.echo(f"{summary['n_rows']} rows in {run_dir / 'biomarkers.csv'} (reference {summary['reference']}); "
               f"unit: {design['unit']} ({design['reason']}); {design['n_significant']} {design['unit']}-level "
               f"rows with q < {alpha}")
    for number, text in enumerate(summary["findings"], start=1):
        typer.echo(f"{number}. {text}")
    if not summary["findings"]:
        typer.echo(f"no finding passes the {design['unit']}-level threshold")
