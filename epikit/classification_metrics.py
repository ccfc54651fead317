"""Classification scores from class probabilities, in plain numpy (no scikit-learn).

All functions take integer true labels ``y`` (N,) indexing ``classes`` and probabilities
``proba`` (N, K). Undefined values (e.g. ROC AUC when a class is absent) are ``None`` so
the results serialise to JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (K, K): rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) identity; ties count 1/2."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float | None:
    """ROC AUC: binary on the second class's probability; macro one-vs-rest for K > 2."""
    y = np.asarray(y)
    if proba.shape[1] == 2:
        return binary_auc(y == 1, proba[:, 1])
    aucs = [binary_auc(y == k, proba[:, k]) for k in range(proba.shape[1])]
    defined = [auc for auc in aucs if auc is not None]
    return float(np.mean(defined)) if len(defined) == len(aucs) else None


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator else None


def _mean_defined(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_scores(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, ROC AUC, macro precision/recall/F1, per-class values, confusion.

    The prediction is the class of highest probability. Balanced accuracy is the mean recall
    over the classes present in ``y``.
    """
    y = np.asarray(y, dtype=np.int64)
    predicted = np.argmax(proba, axis=1)
    matrix = confusion_matrix(y, predicted, len(classes))
    support = matrix.sum(axis=1)
    per_class: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        precision = _ratio(matrix[k, k], matrix[:, k].sum())
        recall = _ratio(matrix[k, k], support[k])
        f1 = (
            2 * precision * recall / (precision + recall)
            if precision is not None and recall is not None and precision + recall > 0
            else (0.0 if precision is not None and recall is not None else None)
        )
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1,
                           "support": int(support[k])}
    recalls = [per_class[c]["recall"] for c in classes]
    return {
        "n": len(y),
        "accuracy": _ratio(np.trace(matrix), matrix.sum()),
        "balanced_accuracy": _mean_defined(recalls),
        "roc_auc": roc_auc(y, proba) if len(y) else None,
        "precision": _mean_defined([per_class[c]["precision"] for c in classes]),
        "recall": _mean_defined(recalls),
        "f1": _mean_defined([per_class[c]["f1"] for c in classes]),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "confusion_matrix_order": list(classes),
    }


def image_level_scores(
    y: np.ndarray, proba: np.ndarray, image_ids: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy per image (field): majority vote of cell predictions and mean-probability vote.

    An image's true class is its cells' most common true class. Majority-vote ties go to
    the class with the higher mean probability.
    """
    image_names, index = np.unique(np.asarray(image_ids), return_inverse=True)
    n_images, n_classes = len(image_names), proba.shape[1]
    true_counts = np.zeros((n_images, n_classes))
    np.add.at(true_counts, (index, np.asarray(y, dtype=np.int64)), 1)
    votes = np.zeros((n_images, n_classes))
    np.add.at(votes, (index, np.argmax(proba, axis=1)), 1)
    mean_proba = np.zeros((n_images, n_classes))
    np.add.at(mean_proba, index, proba)
    mean_proba /= np.bincount(index, minlength=n_images)[:, None]
    truth = true_counts.argmax(axis=1)
    # Majority vote, ties broken by mean probability (a vote counts far more than any prob).
    majority = np.argmax(votes + mean_proba / 2, axis=1)
    mean_vote = np.argmax(mean_proba, axis=1)
    majority_scores = classification_scores(truth, np.eye(n_classes)[majority], classes)
    return {
        "n_images": int(n_images),
        "majority_vote_accuracy": majority_scores["accuracy"],
        "majority_vote_balanced_accuracy": majority_scores["balanced_accuracy"],
        "mean_probability_accuracy": _ratio(np.sum(mean_vote == truth), n_images),
        "mean_probability_balanced_accuracy": classification_scores(
            truth, mean_proba, classes)["balanced_accuracy"],
        "mean_probability_roc_auc": roc_auc(truth, mean_proba),
    }


def fold_spread(folds: Sequence[dict[str, Any]], keys: Sequence[str]) -> tuple[dict, dict]:
    """Mean and (population) standard deviation of ``keys`` across per-fold dicts."""
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for key in keys:
        values = [fold[key] for fold in folds if fold.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
        std[key] = float(np.std(values)) if values else None
    return mean, std
