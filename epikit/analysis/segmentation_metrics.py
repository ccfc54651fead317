"""Instance-segmentation accuracy as scored by the 2018 Data Science Bowl (DSB2018).

For each IoU threshold ``t`` in 0.50, 0.55, ..., 0.95 a predicted nucleus matches a true
one when their intersection over union exceeds ``t``; with ``t >= 0.5`` no object can
match two others, so matching is one-to-one without any assignment search. Then
``AP_t = TP / (TP + FP + FN)`` and the mean AP averages over thresholds. Precision, recall
and F1 are reported at IoU 0.5.

IoUs come from a sparse contingency table of (true label, predicted label) pixel pairs,
so cost grows with the pixel count, not with the number of object pairs.

Conventions: an image with neither true nor predicted nuclei scores 1 (nothing to find,
nothing invented). Over a folder, AP values are means of the per-image values (as the
DSB2018 leaderboard averaged images); TP/FP/FN are summed and precision/recall/F1 are
computed from the sums.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epikit.errors import ConfigError, InputError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
LABEL_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png")


def ap_key(threshold: float) -> str:
    """Result key of the AP at ``threshold``: ``ap_50`` for 0.5, ``ap_75`` for 0.75."""
    return f"ap_{int(round(threshold * 100)):02d}"


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Map the non-zero values of ``labels`` to 1..n (0 stays 0); return flat indices and n."""
    flat = np.asarray(labels).ravel()
    if flat.dtype.kind not in "iub":
        raise InputError(f"label images must hold integers, got dtype {flat.dtype}")
    values = np.unique(flat)
    values = values[values > 0]
    if flat.size and flat.min() < 0:
        raise InputError("label images must not hold negative values")
    index = np.searchsorted(values, flat) + 1
    index[flat == 0] = 0
    return index.astype(np.int64), int(values.size)


def pairwise_iou(pred_labels: np.ndarray, gt_labels: np.ndarray) -> tuple[np.ndarray, int, int]:
    """IoU of every overlapping (true, predicted) object pair.

    Returns ``(ious, n_true, n_pred)`` where ``ious`` lists only pairs that share at least
    one pixel; pairs that do not overlap have IoU 0 and never match.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise InputError(f"predicted labels {pred_labels.shape} and ground truth "
                         f"{gt_labels.shape} differ in shape; compare masks of the same image")
    pred, n_pred = _compact(pred_labels)
    true, n_true = _compact(gt_labels)
    pred_area = np.bincount(pred, minlength=n_pred + 1)
    true_area = np.bincount(true, minlength=n_true + 1)
    both = (pred > 0) & (true > 0)
    pairs, intersection = np.unique(true[both] * (n_pred + 1) + pred[both], return_counts=True)
    true_of_pair, pred_of_pair = np.divmod(pairs, n_pred + 1)
    union = true_area[true_of_pair] + pred_area[pred_of_pair] - intersection
    return intersection / union, n_true, n_pred


def _check_thresholds(thresholds: tuple[float, ...] | list[float]) -> np.ndarray:
    values = np.asarray(thresholds, dtype=float)
    if values.ndim != 1 or values.size == 0 or values.min() < 0.5 or values.max() >= 1.0:
        raise ConfigError(f"IoU thresholds must lie in [0.5, 1) so that matching is "
                          f"one-to-one; got {list(thresholds)}")
    return values


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return float(numerator / denominator) if denominator else empty


def _summarise(tp: np.ndarray, n_true: int, n_pred: int, thresholds: np.ndarray) -> dict[str, Any]:
    """Scores from true-positive counts per threshold (thresholds[0] is the F1 threshold)."""
    nothing = n_true == 0 and n_pred == 0
    result: dict[str, Any] = {"n_true": n_true, "n_pred": n_pred}
    ap = [_ratio(t, n_true + n_pred - t, 1.0) for t in tp]
    for threshold, value in zip(thresholds, ap):
        result[ap_key(threshold)] = value
    result["mean_ap"] = float(np.mean(ap))
    tp0 = int(tp[0])
    result.update(
        tp=tp0,
        fp=n_pred - tp0,
        fn=n_true - tp0,
        precision=_ratio(tp0, n_pred, 1.0 if nothing else 0.0),
        recall=_ratio(tp0, n_true, 1.0 if nothing else 0.0),
        f1=_ratio(2 * tp0, n_true + n_pred, 1.0),
    )
    return result


def evaluate_segmentation(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    thresholds: tuple[float, ...] | list[float] = IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Score one predicted label image against its ground truth.

    Returns ``n_true``, ``n_pred``, ``ap_50`` ... ``ap_95`` (one per threshold),
    ``mean_ap``, and at the first threshold ``tp``, ``fp``, ``fn``, ``precision``,
    ``recall``, ``f1``, plus ``mean_matched_iou`` (mean IoU of the pairs matched there).
    Labels need not be consecutive; 0 is background.
    """
    values = _check_thresholds(thresholds)
    ious, n_true, n_pred = pairwise_iou(pred_labels, gt_labels)
    tp = (ious[None, :] > values[:, None]).sum(axis=1)
    result = _summarise(tp, n_true, n_pred, values)
    matched = ious[ious > values[0]]
    result["mean_matched_iou"] = float(matched.mean()) if matched.size else float("nan")
    return result


def _label_key(path: Path, root: Path) -> str:
    relative = path.relative_to(root).as_posix()
    lowered = relative.lower()
    for suffix in LABEL_SUFFIXES:
        if lowered.endswith(suffix):
            return relative[: -len(suffix)]
    return relative


def _label_files(folder: Path) -> dict[str, Path]:
    """Label images under ``folder`` (or its ``masks/`` sub-folder) keyed by relative stem."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of label images")
    if (folder / "masks").is_dir():
        folder = folder / "masks"
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(LABEL_SUFFIXES):
            files[_label_key(path, folder)] = path
    if not files:
        raise InputError(f"{folder}: no label images (.tif/.tiff/.png) found")
    return files


def ground_truth(gt_dir: str | os.PathLike[str]) -> dict[str, Callable[[], np.ndarray]]:
    """Readers of the ground-truth label images of ``gt_dir``, keyed as predictions are named.

    A DSB2018 folder (``<id>/images/<id>.png`` + ``<id>/masks/*.png``) gives one entry per
    sample id, its masks merged into one label image; any other folder is read as label
    images keyed by relative path without suffix (see :func:`evaluate_folders`).
    """
    from epikit.io import read_labels
    from epikit.io.annotated import dsb_samples, read_dsb_sample

    samples = dsb_samples(Path(gt_dir))
    if samples:
        return {folder.name: (lambda folder=folder: read_dsb_sample(folder).labels) for folder in samples}
    return {key: (lambda path=path: read_labels(path)) for key, path in _label_files(Path(gt_dir)).items()}


def evaluate_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    thresholds: tuple[float, ...] | list[float] = IOU_THRESHOLDS,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Score every ground-truth label image in ``gt_dir`` against ``pred_dir``.

    Files are paired by their path relative to each folder, ignoring the suffix
    (``ctrl/field_001.tif``); a folder holding a ``masks/`` sub-folder (a run folder, a
    simulated data set) is read from there. ``gt_dir`` may also be a DSB2018 folder, whose
    sample ``<id>`` pairs with the prediction ``<id>.tif``. A ground-truth image without a
    prediction is an :class:`InputError`; predictions without ground truth are ignored.

    Returns the per-image table (one row per image, column ``image`` first) and the
    overall scores (``n_images``; image-averaged AP values; summed counts and the
    precision / recall / F1 computed from them).
    """
    import pandas as pd

    from epikit.io import read_labels

    values = _check_thresholds(thresholds)
    predictions, truths = _label_files(Path(pred_dir)), ground_truth(gt_dir)
    missing = sorted(set(truths) - set(predictions))
    if missing:
        raise InputError(f"{pred_dir}: {len(missing)} ground-truth image(s) have no prediction "
                         f"(e.g. {missing[0]}); segment every image of {gt_dir} first")
    rows = []
    for key in sorted(truths):
        pred, truth = read_labels(predictions[key]), truths[key]()
        if pred.shape != truth.shape:
            raise InputError(f"{predictions[key]}: shape {pred.shape} differs from ground truth "
                             f"{key} in {gt_dir} {truth.shape}")
        rows.append({"image": key, **evaluate_segmentation(pred, truth, values)})
    table = pd.DataFrame(rows)
    overall = _summarise(np.array([table["tp"].sum()]), int(table["n_true"].sum()),
                         int(table["n_pred"].sum()), values[:1])
    ap_columns = [ap_key(t) for t in values] + ["mean_ap"]
    overall.update({column: float(table[column].mean()) for column in ap_columns})
    overall = {"n_images": len(table), **{k: overall[k] for k in
               ["n_true", "n_pred", *ap_columns, "tp", "fp", "fn", "precision", "recall", "f1"]}}
    return table, overall
