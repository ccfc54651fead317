"""Splits, scores, the shared training loop, the run-folder wrapper and the train command."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from epikit.classification_metrics import (
    binary_auc,
    classification_scores,
    image_level_scores,
    roc_auc,
)
from epikit.errors import ConfigError, DataError
from epikit.splits import check_groups_per_class, confounded_columns, grouped_folds
from epikit.runfolder.models import load_fold_models
from epikit.runfolder.scratch import scratch_folders
from epikit.splits import assign_folds, validation_split
from epikit.training.cross_validation import CELL_SPLIT_WARNING, cross_validate
from epikit.options import TrainingOptions
from epikit.training.stage import resolve_views, train_run

FAST = {"epochs": 2, "batch_size": 16, "progress": False}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def field_crops(
    fields_per_class: int, cells_per_field: int, size: int = 24, channels: int = 3,
    effect: float = 0.0, field_sd: float = 0.0, radius: tuple[float, float] = (0.3, 0.45),
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Toy nuclei: textured discs; class 1's last channel is brighter at the rim by ``effect``.

    ``field_sd``: log-normal spread of a per-field, per-channel gain shared by the field's cells;
    ``radius``: range of disc radii as fractions of ``size``.
    Returns crops (N, C, S, S) float32, labels (N,), groups (N,) like "c1/f03".
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    crops, labels, groups = [], [], []
    for label, field in itertools.product((0, 1), range(fields_per_class)):
        gain = np.exp(rng.normal(0, field_sd, channels))
        for _ in range(cells_per_field):
            rho = np.hypot(yy, xx) / (size * rng.uniform(*radius))
            inside = rho < 1
            crop = rng.gamma(8, 1 / 8, (channels, size, size)) * inside
            if label == 1:
                crop[-1] *= 1 + effect * np.clip(2 * rho - 1, 0, 1)
            crops.append(crop * gain[:, None, None] * np.exp(rng.normal(0, 0.05)))
            labels.append(label)
            groups.append(f"c{label}/f{field:02d}")
    return np.asarray(crops, dtype=np.float32), np.asarray(labels), np.asarray(groups)


# ----------------------------------------------------------------------------- splits


def test_grouped_folds_never_share_a_group_and_balance_classes() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat([f"g{i}" for i in range(23)], rng.integers(3, 12, 23))
    group_class = {f"g{i}": i % 2 for i in range(23)}
    labels = np.array([group_class[g] for g in groups])
    fold = grouped_folds(labels, groups, 5, seed=1)
    for group in np.unique(groups):
        assert len(np.unique(fold[groups == group])) == 1
    for k in range(5):
        test = fold == k
        assert not set(groups[test]) & set(groups[~test])
        assert set(labels[test]) == {0, 1}  # every class in every fold
    assert np.array_equal(fold, grouped_folds(labels, groups, 5, seed=1))
    assert not np.array_equal(fold, grouped_folds(labels, groups, 5, seed=2))


def test_cell_split_is_stratified_and_holdout_is_one_group_fold() -> None:
    labels = np.array([0] * 30 + [1] * 20)
    groups = np.repeat(np.arange(10), 5)
    fold, evaluated = assign_folds(labels, groups, ["a", "b"], "cell", 5, seed=0)
    assert evaluated == [0, 1, 2, 3, 4]
    assert all(np.sum((fold == k) & (labels == 0)) == 6 for k in range(5))
    fold, evaluated = assign_folds(labels, groups, ["a", "b"], "holdout", 4, seed=0)
    assert evaluated == [0]
    assert set(fold) == {0, -1}
    assert not set(groups[fold == 0]) & set(groups[fold == -1])


def test_validation_split_takes_whole_groups_from_training() -> None:
    labels = np.repeat([0, 1], 40)
    groups = np.repeat(np.arange(16), 5)
    held = validation_split(labels, groups, 0.15, seed=0)
    assert held.any() and not set(groups[held]) & set(groups[~held])
    assert set(labels[held]) == {0, 1}
    one_group_each = validation_split(np.array([0, 0, 1, 1]), np.array([1, 1, 2, 2]), 0.2, 0)
    assert not one_group_each.any()


def test_too_few_groups_names_the_class_and_a_usable_fold_count() -> None:
    labels = np.array([0] * 8 + [1] * 6)
    groups = np.repeat(list("abcdefg"), 2)
    with pytest.raises(DataError, match=r"'vpa' has only 3 groups.*--folds 3 or fewer"):
        check_groups_per_class(labels, groups, ["ctrl", "vpa"], 5, what="groups")
    with pytest.raises(DataError, match="only one condition"):
        check_groups_per_class(np.zeros(4, int), np.arange(4), ["ctrl", "vpa"], 2)
    with pytest.raises(DataError, match="no cells"):
        check_groups_per_class(np.zeros(0, int), np.zeros(0), ["ctrl"], 2)


def test_confound_check_flags_batches_holding_one_condition() -> None:
    table = pd.DataFrame({
        "condition": ["ctrl"] * 4 + ["vpa"] * 4,
        "group": list("aabbccdd"),
        "plate": ["p1"] * 4 + ["p2"] * 4,
        "date": ["d1", "d2"] * 4,
        "well": list("aabbccdd"),
    })
    warnings = confounded_columns(table)
    assert len(warnings) == 2  # plate and well; date mixes conditions
    assert "'plate'" in warnings[0] and "ctrl: p1" in warnings[0]
    assert confounded_columns(table, group_column="well") == warnings[:1]


# ----------------------------------------------------------------------------- scores


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    scores = np.round(rng.random(40) + 0.3 * y, 1)  # rounding creates ties
    pos, neg = scores[y == 1], scores[y == 0]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert binary_auc(y == 1, scores) == pytest.approx(pairs)
    proba = np.stack([1 - scores / 2, scores / 2], axis=1)
    assert roc_auc(y, proba) == pytest.approx(pairs)
    assert binary_auc(np.ones(3, bool), np.arange(3)) is None


def test_scores_on_a_known_confusion() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    scores = classification_scores(y, np.eye(3)[predicted], ["a", "b", "c"])
    assert scores["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert scores["accuracy"] == pytest.approx(6 / 8)
    assert scores["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert scores["per_class"]["a"]["precision"] == pytest.approx(3 / 4)
    assert scores["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert scores["roc_auc"] is not None


def test_image_level_votes() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    images = np.array(["i", "i", "i", "j", "j", "j"])
    scores = image_level_scores(y, proba, images, ["a", "b"])
    assert scores["n_images"] == 2
    assert scores["majority_vote_accuracy"] == 0.5  # image i: 2 of 3 cells vote b
    assert scores["mean_probability_accuracy"] == 1.0  # image i: mean p(a) = 0.58


# ----------------------------------------------------------------------------- training


def without_timings(metrics: dict) -> str:
    """The metrics as JSON without wall-clock fields (which differ between identical runs)."""
    timing = {"seconds", "training_cells_per_second"}
    folds = [{k: v for k, v in fold.items() if k not in timing} for fold in metrics["folds"]]
    rest = {k: v for k, v in metrics.items() if k not in timing | {"folds"}}
    return json.dumps({**rest, "folds": folds}, sort_keys=True)


def test_training_is_deterministic_and_learns_a_clear_effect() -> None:
    crops, labels, groups = field_crops(6, 8, size=16, effect=1.5, seed=1)
    options = TrainingOptions(epochs=6, lr=1e-3, seed=7, progress=False)
    runs = [cross_validate(crops, labels, groups, ["ctrl", "vpa"], "cnn", {"width": 8},
                           options=options, folds=3) for _ in range(2)]
    assert without_timings(runs[0].metrics) == without_timings(runs[1].metrics)
    assert np.array_equal(runs[0].proba, runs[1].proba)
    assert runs[0].metrics["balanced_accuracy"] >= 0.8
    other_seed = cross_validate(crops, labels, groups, ["ctrl", "vpa"], "cnn", {"width": 8},
                                folds=3, options=TrainingOptions(epochs=6, seed=8, progress=False))
    assert not np.array_equal(other_seed.proba, runs[0].proba)


def test_interrupted_cross_validation_resumes_at_its_first_unfinished_fold(tmp_path, monkeypatch) -> None:
    import epikit.training.cross_validation as training

    crops, labels, groups = field_crops(6, 4, size=16, effect=1.5, seed=2)
    options = TrainingOptions(epochs=2, seed=3, progress=False)
    args = (crops, labels, groups, ["ctrl", "vpa"], "cnn", {"width": 4})
    reference = cross_validate(*args, options=options, folds=3)
    real, calls, interrupt = training.train_classifier, [], [True]

    def interrupted_at_fold_2(*a, **k):
        calls.append(k["description"])
        if interrupt[0] and len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "train_classifier", interrupted_at_fold_2)
    with pytest.raises(KeyboardInterrupt):
        cross_validate(*args, options=options, folds=3, resume_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold_0.pt", "fold_1.pt"]
    calls.clear()
    interrupt[0] = False
    resumed = cross_validate(*args, options=options, folds=3, resume_dir=tmp_path)
    assert calls == ["fold 3/3"]  # folds 1 and 2 came from disk
    assert np.array_equal(resumed.proba, reference.proba)
    assert without_timings(resumed.metrics) == without_timings(reference.metrics)
    calls.clear()
    cross_validate(*args, options=dataclasses.replace(options, lr=5e-4), folds=3, resume_dir=tmp_path)
    assert len(calls) == 3  # other settings: nothing reused


def test_holdout_with_balanced_sampling() -> None:
    crops, labels, groups = field_crops(6, 4, size=16, effect=1.5, seed=2)
    options = TrainingOptions(epochs=2, balance="sampling", progress=False)
    result = cross_validate(crops, labels, groups, ["ctrl", "vpa"], "cnn", {"width": 8},
                            split="holdout", folds=3, options=options)
    assert [row["fold"] for row in result.metrics["folds"]] == [0]
    test = result.fold == 0
    assert set(result.split[test]) == {"test"} and set(result.fold[~test]) == {-1}
    assert {"train", "validation"} == set(result.split[~test])
    assert not set(groups[test]) & set(groups[~test])
    assert np.isnan(result.proba[~test]).all() and not np.isnan(result.proba[test]).any()
    assert result.metrics["n"] == int(test.sum())


def test_grouped_cv_is_honest_where_a_cell_split_leaks() -> None:
    """No condition effect, strong per-field brightness: only a cell split 'learns' it."""
    # 48 fields of 8 cells; each field has its own gain per channel (log-normal, sd 1.2).
    # Over generator seeds 5-14 the cell split beat grouped CV by 0.20-0.34 every time.
    # Grouped CV itself spread over 0.32-0.57 (6 of 10 within 0.5 +/- 0.1): with 48 fields
    # chance associations are large and CV under no effect leans below 0.5 (training and
    # test folds are anti-correlated). Seed 5 is typical: 0.46 grouped vs 0.72 cell.
    crops, labels, groups = field_crops(24, 8, size=16, channels=4, effect=0.0, field_sd=1.2,
                                        radius=(0.38, 0.42), seed=5)
    options = TrainingOptions(epochs=12, batch_size=32, lr=3e-3, intensity_jitter=0.0, seed=0,
                              progress=False)
    grouped = cross_validate(crops, labels, groups, ["ctrl", "vpa"], "cnn", {"width": 8},
                             options=options, folds=4)
    cell = cross_validate(crops, labels, groups, ["ctrl", "vpa"], "cnn", {"width": 8},
                          options=options, folds=4, split="cell")
    assert abs(grouped.metrics["balanced_accuracy"] - 0.5) <= 0.1
    assert cell.metrics["balanced_accuracy"] >= grouped.metrics["balanced_accuracy"] + 0.1
    assert CELL_SPLIT_WARNING in cell.warnings and cell.metrics["split"] == "cell"
    assert not grouped.warnings


def test_bad_training_input() -> None:
    crops, labels, groups = field_crops(3, 2, size=16)
    classes = ["ctrl", "vpa"]
    with pytest.raises(DataError, match="--folds 3"):
        cross_validate(crops, labels, groups, classes, "cnn", folds=5, options=TrainingOptions(**FAST))
    with pytest.raises(DataError, match="only one condition"):
        cross_validate(crops[labels == 0], labels[labels == 0], groups[labels == 0], classes, "cnn")
    with pytest.raises(DataError, match="no cells"):
        cross_validate(crops[:0], labels[:0], groups[:0], classes, "cnn")
    with pytest.raises(ConfigError, match="split"):
        cross_validate(crops, labels, groups, classes, "cnn", split="random", folds=2)
    with pytest.raises(ConfigError, match="available: Hoechst, CTCF, H3K27ac"):
        resolve_views(["all", "H3K9me3"], ["Hoechst", "CTCF", "H3K27ac"])
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainingOptions.from_mapping({"epoch": 3})
    with pytest.raises(ConfigError, match="recipe"):
        TrainingOptions.from_mapping({}, "paper")
    study = TrainingOptions.from_mapping({"epochs": 30}, "study")
    assert (study.optimizer, study.lr, study.lr_decay, study.epochs) == ("adam", 1e-5, 0.99, 30)
    assert resolve_views("all,CTCF+H3K27ac", ["Hoechst", "CTCF", "H3K27ac"]) == {
        "all": [0, 1, 2], "CTCF+H3K27ac": [1, 2]}


# ------------------------------------------------------------------ run folder and CLI


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory):
    """A small run folder: simulated fields with the default planted effect, true masks."""
    from epikit.extraction import extract_cells
    from epikit.io import discover_images
    from epikit.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("train")
    data = simulate_dataset(root / "sim", n_fields=6, size=224, n_nuclei=(10, 14),
                            radius=(10.0, 16.0), seed=3)
    run = root / "run"
    extract_cells(discover_images(data / "images"), data / "masks", run, crop_size=32)
    return run


def test_resnet10_learns_the_planted_effect_on_simulated_data(simulated_run) -> None:
    # ~110 cells of 32 px; simulation seeds 3-5 gave 0.76-0.84 (chance: 0.5).
    metrics = train_run(simulated_run, "resnet10", folds=3, epochs=6, progress=False)
    assert metrics["balanced_accuracy"] >= 0.7
    assert metrics["split"] == "group" and metrics["view"] == "all"
    for key in ("accuracy", "roc_auc", "precision", "recall", "f1", "confusion_matrix",
                "image_level", "mean", "std", "warnings"):
        assert key in metrics
    assert len(metrics["folds"]) == 3
    cells = pd.read_parquet(simulated_run / "cells.parquet")
    assert {"fold", "split", "prediction", "probability", "prob_ctrl", "prob_vpa", "correct"} <= set(cells)
    assert set(cells["fold"]) == {0, 1, 2}
    for group, folds in cells.groupby("group")["fold"]:
        assert folds.nunique() == 1, group
    assert np.allclose(cells["prob_ctrl"] + cells["prob_vpa"], 1, atol=1e-5)
    stored = json.loads((simulated_run / "metrics.json").read_text())["classification"]
    assert stored["balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])

    from epikit.runfolder.cells import CellDataset

    models = load_fold_models(simulated_run, device="cpu")
    assert sorted(models) == [0, 1, 2] and not models[0].training
    test = np.flatnonzero(cells["fold"].to_numpy() == 1)
    crops = torch.from_numpy(CellDataset(simulated_run).load_crops(test))
    with torch.inference_mode():
        proba = torch.softmax(models[1](crops), dim=1)[:, 1].numpy()
    assert np.allclose(proba, cells["prob_vpa"].to_numpy()[test], atol=1e-4)


def test_train_command_views_and_errors(simulated_run) -> None:
    from typer.testing import CliRunner

    from epikit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["train", str(simulated_run), "--views", "all,H3K27ac",
                                 "--classifier", "cnn", "-p", "width=8", "--folds", "2",
                                 "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (simulated_run / "model" / "H3K27ac" / "fold_1.pt").is_file()
    assert not scratch_folders(simulated_run, "train")  # per-fold saves cleared when done
    metrics = json.loads((simulated_run / "metrics.json").read_text())["classification"]
    assert set(metrics["views"]) == {"all", "H3K27ac"}
    assert metrics["views"]["H3K27ac"]["channels"] == ["H3K27ac"]
    assert load_fold_models(simulated_run, view="H3K27ac")[0].get_submodule("features")[0].in_channels == 1
    cells = pd.read_parquet(simulated_run / "cells.parquet")
    assert "H3K27ac:prediction" in cells and "prediction" in cells

    bad_view = runner.invoke(app, ["train", str(simulated_run), "--view", "DAPI"])
    assert bad_view.exit_code == 2 and "available: Hoechst, CTCF, H3K27ac" in bad_view.output
    too_many = runner.invoke(app, ["train", str(simulated_run), "--folds", "9", "--quiet"])
    assert too_many.exit_code == 2 and "--folds" in too_many.output


@pytest.mark.parametrize("amp", [False, True])
def test_amp_option_reaches_training_prediction_and_batch_norm_refresh(monkeypatch, amp) -> None:
    import epikit.training.fit as fit

    real, asked = fit._autocast, []

    def recording(device, enabled):
        asked.append(enabled)
        return real(device, enabled)

    monkeypatch.setattr(fit, "_autocast", recording)
    crops, labels, groups = field_crops(3, 4, size=16, seed=2)
    cross_validate(crops, labels, groups, ["ctrl", "vpa"], "cnn", {"width": 4}, folds=2,
                   options=TrainingOptions(epochs=1, batch_size=8, amp=amp, precise_bn=True, progress=False))
    assert len(asked) > 4 and set(asked) == {amp}


# ----------------------------------------------------------------------------- streamed crops


def test_a_streamed_epoch_yields_every_draw_once_and_reads_each_chunk_once(monkeypatch) -> None:
    import epikit.training.crop_source as crop_source
    from epikit.training.crop_source import StoredCrops

    monkeypatch.setattr(crop_source, "MIN_POOL_CHUNKS", 2)
    data = np.arange(40 * 1 * 2 * 2, dtype=np.float32).reshape(40, 1, 2, 2)
    reads: list[np.ndarray] = []

    def read(rows: np.ndarray) -> np.ndarray:
        reads.append(rows.copy())
        return data[rows]

    source = StoredCrops(read=read, chunk=np.arange(40) // 4, shape=(40, 1, 2, 2), pool_cells=12, key=("toy",))
    generator = torch.Generator().manual_seed(0)
    draws = torch.multinomial(torch.ones(40), 50, replacement=True, generator=generator)  # repeats
    seen_rows, seen_chunks_per_pool = [], []
    for rows, crops in source.batches(draws, 4, generator):
        assert len(rows) <= 4 and torch.equal(crops, torch.from_numpy(data[rows.numpy()]))
        seen_rows.extend(rows.tolist())
    assert sorted(seen_rows) == sorted(draws.tolist())
    assert all(len(r) <= 12 for r in reads) and sum(len(r) for r in reads) == 50
    pools = [set((r // 4).tolist()) for r in reads]
    assert sum(len(p) for p in pools) <= len(set((draws // 4).tolist())) + len(pools) - 1  # a chunk spans <= 2 pools
    again = [rows.tolist() for rows, _ in source.batches(draws, 4, torch.Generator().manual_seed(1))]
    assert sum(again, []) != seen_rows  # the order is reshuffled by the generator
    assert torch.equal(torch.cat(list(source.blocks(torch.tensor([7, 3, 3, 39]), 3))),
                       torch.from_numpy(data[[7, 3, 3, 39]]))


def test_training_and_mask_control_stream_when_crops_exceed_the_budget(simulated_run, monkeypatch) -> None:
    import epikit.runfolder.crops as crops_module
    import epikit.training.crop_source as crop_source
    from epikit.biomarker_trust import train_mask_control
    from epikit.runfolder.cells import CellDataset

    monkeypatch.setattr(crop_source, "MIN_POOL_CHUNKS", 2)
    crop_reads: list[int] = []
    mask_reads: list[int] = []
    real_load, real_masks = CellDataset.load_crops, crops_module.read_masks

    def load(self, indices=None):
        crop_reads.append(len(self) if indices is None else len(indices))
        return real_load(self, indices)

    def masks(path, rows):
        mask_reads.append(len(rows))
        return real_masks(path, rows)

    monkeypatch.setattr(CellDataset, "load_crops", load)
    monkeypatch.setattr("epikit.runfolder.crop_sources.read_masks", masks)
    n = len(CellDataset(simulated_run))
    budget = 0.2  # MiB: 17 crops of 3 x 32 x 32 float32, 51 masks
    streamed = train_run(simulated_run, "resnet10", folds=3, epochs=6, progress=False, crops_memory_mb=budget)
    assert crop_reads and max(crop_reads) <= 32 < n  # pools of two 16-cell chunks
    assert streamed["balanced_accuracy"] >= 0.7 and streamed["training"]["crops_memory_mb"] == budget
    assert train_run(simulated_run, "resnet10", folds=3, epochs=6, progress=False,
                     crops_memory_mb=budget)["balanced_accuracy"] == streamed["balanced_accuracy"]
    control = train_mask_control(simulated_run, epochs=2)
    assert mask_reads and max(mask_reads) <= 51 < n and len(control.models) == 3
