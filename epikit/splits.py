"""Train/test splits that keep every group (field, well, replicate) on one side.

Cells of one field share its illumination, focus and staining: a split that puts cells of
one field in both train and test lets a classifier recognise fields instead of conditions.
:func:`grouped_folds` assigns whole groups to folds, balancing each class over the folds;
the study's random cell-level split is the same function with every cell its own group.
:func:`confounded_columns` finds batch columns (plate, date, ...) that no split can separate
from the condition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from epikit.errors import ConfigError, DataError

SPLITS = ("group", "holdout", "cell")
BATCH_COLUMNS = ("plate", "date", "batch", "well", "replicate", "experiment", "day", "run")


def check_groups_per_class(
    labels: np.ndarray, groups: np.ndarray, classes: Sequence[str], folds: int, what: str = "groups"
) -> None:
    """Raise :class:`DataError` when a class spans fewer ``what`` than ``folds`` (or one class).

    The message names the class and the largest usable ``--folds``.
    """
    present = np.unique(labels)
    if len(labels) == 0:
        raise DataError("the dataset has no cells: nothing to train on")
    if len(present) < 2:
        only = classes[int(present[0])] if len(classes) > int(present[0]) else str(present[0])
        raise DataError(
            f"only one condition ({only!r}) has cells; classification needs at least two "
            f"(one sub-folder or manifest condition per class)"
        )
    counts = {int(c): len(np.unique(groups[labels == c])) for c in present}
    fewest = min(counts, key=lambda c: counts[c])
    if counts[fewest] < folds:
        usable = counts[fewest]
        fix = f"use --folds {usable} or fewer" if usable >= 2 else "add more images of it"
        raise DataError(
            f"class {classes[fewest]!r} has only {usable} {what} but {folds} folds need at "
            f"least {folds}; {fix}"
        )


def grouped_folds(
    labels: np.ndarray, groups: np.ndarray, folds: int, seed: int = 0
) -> np.ndarray:
    """Fold number (0..folds-1) of every sample: stratified grouped K-fold, deterministic.

    Groups are placed largest first (ties in a seeded random order); each goes to the fold
    where it raises the squared per-class fold shares least - i.e. to the fold holding the
    fewest cells of its classes - then the fold with fewest cells. A class with at least
    ``folds`` single-class groups thus appears in every fold.
    """
    labels = np.asarray(labels)
    group_ids, group_index = np.unique(np.asarray(groups), return_inverse=True)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    counts = np.zeros((len(group_ids), n_classes))
    np.add.at(counts, (group_index, labels), 1)
    class_totals = np.maximum(counts.sum(axis=0), 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(group_ids))
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    fold_counts = np.zeros((folds, n_classes))
    group_fold = np.empty(len(group_ids), dtype=np.int64)
    for g in order:
        cost = fold_counts @ (counts[g] / class_totals**2)
        size = fold_counts.sum(axis=1)
        best = np.lexsort((np.arange(folds), size, cost))[0]
        group_fold[g] = best
        fold_counts[best] += counts[g]
    return group_fold[group_index]


def confounded_columns(
    table: pd.DataFrame, label_column: str = "condition", group_column: str = "group",
    columns: Sequence[str] = BATCH_COLUMNS,
) -> list[str]:
    """Warnings for batch columns in which every level holds a single condition.

    Then the condition is nested in (confounded with) that batch: a classifier may learn the
    batch (plate, imaging date) and no grouped split can tell the two apart.
    """
    warnings: list[str] = []
    for column in columns:
        if column == group_column or column not in table.columns:
            continue
        values = table[[column, label_column]].dropna()
        if values[column].nunique() < 2:
            continue
        per_level = values.groupby(column, observed=True)[label_column].nunique()
        if (per_level == 1).all():
            levels = values.groupby(label_column, observed=True)[column].unique()
            listing = "; ".join(
                f"{cond}: {', '.join(map(str, sorted(map(str, lv))))}" for cond, lv in levels.items()
            )
            warnings.append(
                f"condition is confounded with {column!r} (each {column} holds one condition - "
                f"{listing}): the classifier may learn {column} differences and no split can "
                f"separate them; image every condition in every {column}"
            )
    return warnings


def validation_split(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of training cells held out for early stopping, whole groups at a time.

    About ``fraction`` of the groups, at least one per class; all False when ``fraction`` is
    0 or a class has fewer than three training groups (too few to spare one).
    """
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(len(labels), dtype=bool)
    fewest = min(len(np.unique(groups[labels == c])) for c in np.unique(labels))
    if fewest < 3:
        return np.zeros(len(labels), dtype=bool)
    parts = max(2, min(round(1 / fraction), fewest))
    return grouped_folds(labels, groups, parts, seed) == 0


def assign_folds(
    labels: np.ndarray, groups: np.ndarray, classes: Sequence[str], split: str, folds: int,
    seed: int,
) -> tuple[np.ndarray, list[int]]:
    """Test fold of every cell and the folds to evaluate, after checking the data allows them.

    ``group``: grouped K-fold; ``holdout``: one grouped fold of K (1/K of the groups) is the
    test set, the rest train (fold -1); ``cell``: stratified K-fold over cells (the study's).
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split!r} is not one of: {', '.join(SPLITS)}")
    if folds < 2:
        raise ConfigError(f"folds must be >= 2 (got {folds}); --split holdout --folds 5 holds out 1/5")
    if split == "cell":
        cells = np.arange(len(labels))
        check_groups_per_class(labels, cells, classes, folds, what="cells")
        return grouped_folds(labels, cells, folds, seed), list(range(folds))
    check_groups_per_class(labels, groups, classes, folds, what="groups (images)")
    fold = grouped_folds(labels, groups, folds, seed)
    if split == "holdout":
        return np.where(fold == 0, 0, -1), [0]
    return fold, list(range(folds))
