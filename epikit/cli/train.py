"""``epikit train``: cross-validate a classifier on a run folder's cells, per view."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from epikit.cli import command, parse_params
from epikit.options import TrainOptions


def _score(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@command("train")
def train_command(
    run_dir: Path = typer.Argument(..., help="Run folder with cells.parquet and crops.zarr (from `epikit extract`)."),
    classifier: str = typer.Option(TrainOptions.classifier, "--classifier", "-c", help="Registered classifier (see `epikit plugins`)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Classifier parameter key=value (repeatable), e.g. -p pooling=avg."),
    folds: int = typer.Option(TrainOptions.folds, "--folds", "-k", help="Cross-validation folds (hold-out: 1/K of the groups is the test set)."),
    split: str = typer.Option(TrainOptions.split, "--split", help="group (no field in train and test), holdout (one grouped fold), cell (the study's random cell split; leaks)."),
    view: Optional[str] = typer.Option(None, "--view", help="Channels to train on: all, a channel name, or names joined by '+'."),
    views: Optional[str] = typer.Option(None, "--views", help="Several views, comma-separated (e.g. all,H3K27ac,CTCF,Hoechst): one model set each."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Most epochs per fold (early stopping may end sooner)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Crops per training step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate."),
    recipe: str = typer.Option("default", "--recipe", help="default (AdamW, cosine, 16 epochs) or study (Adam 1e-5, x0.99/epoch, 300 epochs, batch 128); options below override it."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="adamw or adam."),
    patience: Optional[int] = typer.Option(None, "--patience", help="Stop after this many epochs without a better validation loss."),
    seed: int = typer.Option(TrainOptions.seed, "--seed", help="Seed of splits, initialisation, batches and augmentation."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: a GPU when present)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train with grouped cross-validation; write model/, predictions in cells.parquet, metrics.json."""
    from epikit.errors import ConfigError
    from epikit.options import TrainingOptions
    from epikit.training.stage import run

    if view and views:
        raise ConfigError("give either --view or --views, not both")
    loop = {key: value for key, value in {"recipe": recipe, "optimizer": optimizer,
                                          "patience": patience}.items() if value is not None}
    recipe_defaults = TrainingOptions.from_mapping({}, recipe)  # what an unset flag means
    chosen = views or view
    options = TrainOptions(
        classifier=classifier, folds=folds, split=split,
        views=tuple(chosen.split(",")) if chosen else TrainOptions.views,
        epochs=recipe_defaults.epochs if epochs is None else epochs,
        batch_size=recipe_defaults.batch_size if batch_size is None else batch_size,
        lr=recipe_defaults.lr if lr is None else lr,
        params={**parse_params(param), **loop}, seed=seed, device=device,
    )
    metrics = run(run_dir, options, progress=not quiet)
    for name, result in (metrics.get("views") or {metrics["view"]: metrics}).items():
        spread = result["std"].get("balanced_accuracy")
        typer.echo(
            f"{name}: balanced accuracy {_score(result['balanced_accuracy'])}"
            f" (folds {_score(result['mean'].get('balanced_accuracy'))} +/- {_score(spread)}), "
            f"ROC AUC {_score(result['roc_auc'])}, image-level (mean probability) "
            f"{_score(result['image_level']['mean_probability_accuracy'])} "
            f"[{result['split']} split, {len(result['folds'])} fold(s), {result['n_cells']} cells]"
        )
    for warning in metrics["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"models in {Path(run_dir) / 'model'}, predictions in {Path(run_dir) / 'cells.parquet'}")
