"""The trust checks of the biomarkers stage, with their expensive part kept for reuse.

:func:`trust_checks` runs the checks of :mod:`epikit.analysis.trust` for one view's stored
maps: channel attribution, faithfulness (deletion / insertion) for several explainers, the
randomisation sanity check, and a mask-edge control (the run's classifier trained on the
nucleus masks alone by :func:`train_mask_control`, explained for the same targets).

Everything but the last step (testing the control maps' shell shares) depends only on the
maps, the models, the crops and the trust settings, not on the shell definition, image-level
test or reference. That part (:func:`measure_trust`) is kept in the stage's scratch
(``RUN/.epikit/scratch/biomarkers/<key>/``, :mod:`epikit.runfolder.scratch`) keyed on exactly
those inputs, so a biomarkers stage re-run with another shell definition (as ``epikit
compare`` does for each shell specification) or resumed after an interruption reuses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epikit.analysis.biomarkers import KEYS, compare_maps, map_shell_shares, shares_table
from epikit.analysis.fold_maps import explain_cells
from epikit.analysis.stats import adjust_within_units, compare_conditions
from epikit.analysis.trust import (
    channel_attribution,
    faithfulness_curves,
    randomised_copy,
    rank_correlation,
    summarise_curves,
    summarise_sanity,
)
from epikit.config import section_hash
from epikit.errors import DataError
from epikit.io.store import atomic_path, write_json
from epikit.options import BiomarkerOptions, TrainingOptions
from epikit.registry import get_explainer
from epikit.runfolder.cells import CellDataset
from epikit.runfolder.crop_sources import mask_source
from epikit.runfolder.crops import read_masks
from epikit.runfolder.layout import MAPS, METRICS
from epikit.runfolder.maps import StoredMaps
from epikit.runfolder.metrics import read_metrics
from epikit.runfolder.models import load_fold_models
from epikit.runfolder.rows import cell_rows
from epikit.runfolder.scratch import Scratch
from epikit.training.cross_validation import cross_validate

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

#: Scratch stage name of the kept trust measurements.
SCRATCH_STAGE = "biomarkers"


@dataclass
class MaskControl:
    """Classifiers trained on the nucleus masks alone, one per fold, and their scores."""

    models: dict[int, nn.Module]
    fold: np.ndarray
    accuracy: float
    metrics: dict[str, Any]


def train_mask_control(run_dir: str | Path, epochs: int | None = None, seed: int | None = None) -> MaskControl:
    """Cross-validate the run's classifier recipe on mask-only crops (1 channel: inside = 1).

    Uses the classifier, parameters, split, folds and training options recorded in
    ``metrics.json["classification"]`` (``epochs`` overrides the number of epochs), so the
    control differs from the real model only in its input.
    """
    run_dir = Path(run_dir)
    recipe = read_metrics(run_dir).get("classification")
    if not recipe:
        raise DataError(f"{run_dir / METRICS} has no classification entry; train first")
    options = dict(recipe.get("training") or {})
    options["progress"] = False
    if epochs is not None:
        options["epochs"] = epochs
    if seed is not None:
        options["seed"] = seed
    dataset = CellDataset(run_dir)
    training = TrainingOptions.from_mapping(options)
    cv = cross_validate(
        mask_source(dataset, training.crops_memory_mb), dataset.labels, dataset.groups, dataset.classes,
        recipe.get("classifier", "resnet10"), recipe.get("params") or {},
        split=recipe.get("split", "group"), folds=int(recipe.get("folds_requested", 5)),
        options=training,
        image_ids=dataset.table["image_id"].to_numpy(), description="mask control",
    )
    return MaskControl({k: t.model.eval() for k, t in cv.models.items()}, cv.fold,
                       float(cv.metrics.get("accuracy", float("nan"))), cv.metrics)


def subset_per_condition(conditions: np.ndarray, per_condition: int, seed: int) -> np.ndarray:
    """Up to ``per_condition`` positions per condition (seeded), in order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for condition in sorted(set(conditions)):
        members = np.flatnonzero(conditions == condition)
        if len(members) > per_condition:
            members = rng.choice(members, per_condition, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen))


def explain_by_fold(explainer: Any, models: dict[int, nn.Module], crops: np.ndarray,
                    targets: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Maps of ``crops``, each cell explained by the model of its fold."""
    maps, _ = explain_cells(models, crops, folds, targets, explainer)
    return maps


@dataclass
class TrustMeasurements:
    """The shell-independent results of the trust checks for one view's maps.

    ``control_maps`` explain the cells of ``stored`` where ``tested`` (those the mask control
    held out) with the mask-only models.
    """

    summary: dict[str, Any]
    control_maps: np.ndarray
    tested: np.ndarray


def measure_trust(run_dir: Path, stored: StoredMaps, seed: int, trust_cells: int, control_epochs: int | None,
                  explainers: Any, steps: int) -> TrustMeasurements:
    """Channel attribution, faithfulness, sanity and the mask control's maps (see the module docstring)."""
    dataset = CellDataset(run_dir, channels=stored.attrs["channel_names"])
    rows = cell_rows(dataset.table["cell_id"], stored.cell_ids,
                     f"{run_dir / MAPS} explains cells that cells.parquet lacks; re-run explain")
    conditions = dataset.table.iloc[rows]["condition"].astype(str).to_numpy()
    crops = dataset.load_crops(rows)
    masks = read_masks(dataset.store_path, stored.crop_index)
    models = load_fold_models(run_dir, view=stored.view)
    name, params = str(stored.attrs["explainer"]), dict(stored.attrs.get("params") or {})

    drops = np.empty((len(rows), crops.shape[1]))
    for fold in np.unique(stored.fold):
        at = stored.fold == fold
        drops[at] = channel_attribution(models[int(fold)], crops[at], masks[at], stored.target[at])
    attribution = {
        condition: {channel: float(drops[conditions == condition, c].mean())
                    for c, channel in enumerate(dataset.channel_names)}
        for condition in sorted(set(conditions))
    }

    subset = subset_per_condition(conditions, trust_cells, seed)
    sub_folds, sub_targets = stored.fold[subset], stored.target[subset]
    faithfulness = {}
    for method in dict.fromkeys([name, *(explainers or ("gradcam", "gradcampp"))]):
        if method == name:
            maps = stored.maps[subset]
        else:
            maps = explain_by_fold(get_explainer(method), models, crops[subset], sub_targets, sub_folds)
        parts = [faithfulness_curves(models[int(f)], crops[subset][sub_folds == f], masks[subset][sub_folds == f],
                                     maps[sub_folds == f], sub_targets[sub_folds == f], steps, seed)
                 for f in np.unique(sub_folds)]
        faithfulness[method] = summarise_curves({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    randomised = {int(f): randomised_copy(m, seed + int(f)) for f, m in models.items()}
    random_maps = explain_by_fold(get_explainer(name, **params), randomised, crops[subset], sub_targets, sub_folds)
    sanity = summarise_sanity(rank_correlation(stored.maps[subset], random_maps, masks[subset]))
    sanity["explainer"] = name

    control = train_mask_control(run_dir, epochs=control_epochs or None, seed=seed)
    control_fold = control.fold[rows]
    tested = control_fold >= 0
    control_maps = explain_by_fold(get_explainer(name, **params), control.models,
                                   masks[tested][:, None].astype(np.float32), stored.target[tested],
                                   control_fold[tested])
    summary = {"view": stored.view, "channel_attribution": attribution, "faithfulness": faithfulness,
               "sanity": sanity, "control_accuracy": control.accuracy,
               "cells": {"attribution": int(len(rows)), "faithfulness_and_sanity": int(len(subset))}}
    return TrustMeasurements(summary, np.asarray(control_maps, dtype=np.float32), tested)


def kept_measurements(run_dir: Path, stored: StoredMaps, seed: int, trust_cells: int, control_epochs: int | None,
                      explainers: Any, steps: int) -> TrustMeasurements:
    """:func:`measure_trust`, read from the stage's scratch when the same inputs made it before."""
    key = section_hash("trust", stored.view, stored.attrs.get("models_sha256"), stored.attrs.get("crops_fingerprint"),
                       stored.attrs.get("explainer"), stored.attrs.get("params"), list(stored.cell_ids),
                       stored.target, stored.fold, seed, trust_cells, control_epochs,
                       list(explainers) if explainers else None, steps)
    scratch = Scratch(run_dir, SCRATCH_STAGE, key)
    summary_path, arrays_path = scratch.path / "trust.json", scratch.path / "control_maps.npz"
    if summary_path.is_file() and arrays_path.is_file():
        with np.load(arrays_path) as arrays:
            return TrustMeasurements(json.loads(summary_path.read_text(encoding="utf-8")),
                                     arrays["maps"], arrays["tested"])
    scratch.open()
    measured = measure_trust(run_dir, stored, seed, trust_cells, control_epochs, explainers, steps)
    with atomic_path(arrays_path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, maps=measured.control_maps, tested=measured.tested)
    write_json(summary_path, measured.summary)
    return TrustMeasurements(json.loads(summary_path.read_text(encoding="utf-8")), measured.control_maps,
                             measured.tested)


def trust_checks(
    run_dir: str | Path,
    stored: StoredMaps,
    reference: str,
    seed: int = 0,
    alpha: float = 0.05,
    trust_cells: int = BiomarkerOptions.trust_cells,
    control_epochs: int | None = BiomarkerOptions.control_epochs,
    explainers: Any = None,
    shell_method: str = "scaled",
    image_test: str = "permutation",
    steps: int = 16,
) -> dict[str, Any]:
    """Run every trust check for one view's stored maps.

    Channel attribution uses every explained cell; faithfulness and the sanity check use up
    to ``trust_cells`` per condition; the mask-edge control explains every explained cell
    with mask-only models and compares conditions with the same shell statistic. The
    shell-independent part is kept for reuse (:func:`kept_measurements`).
    """
    run_dir = Path(run_dir)
    measured = kept_measurements(run_dir, stored, seed, trust_cells, control_epochs, explainers, steps)
    dataset = CellDataset(run_dir, channels=stored.attrs["channel_names"])
    rows = cell_rows(dataset.table["cell_id"], stored.cell_ids,
                     f"{run_dir / MAPS} explains cells that cells.parquet lacks; re-run explain")
    cells = dataset.table.iloc[rows]
    masks = read_masks(dataset.store_path, stored.crop_index)
    name, tested = str(stored.attrs["explainer"]), measured.tested
    shares = map_shell_shares(measured.control_maps, masks[tested], int(dataset.attrs.get("n_shells", 5)),
                              shell_method)
    long = shares_table(cells[tested], shares, "map", name, "mask",
                        np.asarray(stored.attrs["classes"], dtype=object)[stored.target[tested]])
    rows_out = adjust_within_units(compare_maps(
        long, str(stored.attrs.get("target", "predicted")), reference,
        lambda rows: compare_conditions(rows, keys=list(KEYS), reference=reference, image_test=image_test,
                                        units=("image",), seed=seed)))
    mask_control = {
        "accuracy": measured.summary["control_accuracy"],
        "explainer": name,
        "n_cells": int(tested.sum()),
        "targets": "the stored maps' (the same class per cell)",
        "rows": [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()}
                 for r in rows_out[["region", "target", "condition", "reference", "effect", "cliffs_delta",
                                    "p_value", "q_value", "n_condition", "n_reference"]].to_dict("records")],
    }
    summary = measured.summary
    return {
        "view": summary["view"],
        "channel_attribution": summary["channel_attribution"],
        "faithfulness": summary["faithfulness"],
        "sanity": summary["sanity"],
        "mask_control": mask_control,
        "alpha": alpha,
        "cells": summary["cells"],
    }
