"""Numbers behind the report's figures: ROC points, confusion counts, example picks.

Small numpy reductions of run-folder tables; plotting lives in
:mod:`epikit.report.figures`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def roc_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False- and true-positive rates over all thresholds of ``score``, and the AUC.

    Tied scores form one step (so the AUC equals the Mann-Whitney estimate). Needs both
    classes present; raises ``ValueError`` otherwise.
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs cells of both classes")
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(positive)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    return fpr, tpr, float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def confusion_counts(true: Sequence[Any], predicted: Sequence[Any], classes: Sequence[str]) -> np.ndarray:
    """Counts (rows: true class, columns: predicted class) in the order of ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(true, predicted):
        if str(t) in index and str(p) in index:
            matrix[index[str(t)], index[str(p)]] += 1
    return matrix


def spread_indices(count: int, wanted: int) -> list[int]:
    """Up to ``wanted`` indices spread evenly over ``range(count)`` (deterministic)."""
    if count <= 0 or wanted <= 0:
        return []
    if count <= wanted:
        return list(range(count))
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, wanted)})
