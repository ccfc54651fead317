"""Classification section: out-of-fold metrics, training curves, ROC, confusion, folds.

Reads ``metrics.json["classification"]`` and ``model/training.json`` as
:mod:`epikit.training.stage` writes them, and the out-of-fold columns of ``cells.parquet``
(``fold``, ``prediction``, ``prob_<class>``; extra views prefixed ``<view>:``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from epikit.report import figures as fig
from epikit.report import summaries
from epikit.report.html import Markup, element, image, join, mapping_table, note, table
from epikit.report.sections.common import ReportContext, is_number, records_table, scalars, unavailable

#: Scores shown for pooled cells and as mean / spread over folds.
SCORES = ("n", "accuracy", "balanced_accuracy", "roc_auc", "precision", "recall", "f1")
#: Per-epoch record keys that are not curves.
NOT_CURVES = {"epoch", "lr"}
#: Settings shown under the metrics.
SETTINGS = ("classifier", "split", "folds_requested", "n_cells", "n_groups", "in_channels",
            "crop_size", "device", "seconds", "training_cells_per_second")


def view_curves(training: Mapping[str, Any]) -> dict[str, tuple[dict[str, dict[str, list[float]]], dict[str, int]]]:
    """Per view: ``{"fold k": {metric: values per epoch}}`` and each fold's best epoch."""
    views = training.get("views")
    result = {}
    for view, info in (views.items() if isinstance(views, Mapping) else []):
        curves: dict[str, dict[str, list[float]]] = {}
        best: dict[str, int] = {}
        for entry in info.get("folds") or [] if isinstance(info, Mapping) else []:
            history = entry.get("history") if isinstance(entry, Mapping) else None
            if not isinstance(history, list) or not history:
                continue
            label = f"fold {entry.get('fold')}"
            keys = [k for k in history[0] if k not in NOT_CURVES]
            series = {k: [float(r[k]) if is_number(r.get(k)) else np.nan for r in history] for k in keys}
            curves[label] = {k: v for k, v in series.items() if not np.all(np.isnan(v))}
            if is_number(entry.get("best_epoch")):
                best[label] = int(entry["best_epoch"])
        if curves:
            result[str(view)] = (curves, best)
    return result


def _view_prefixes(cells: Any) -> list[str]:
    """Column prefixes of the trained views: ``""`` (the first view) and ``"<view>:"``."""
    return [c[: -len("prediction")] for c in cells.columns if c.endswith("prediction")]


def _classes(cells: Any, prefix: str) -> list[str]:
    return [c[len(prefix) + len("prob_"):] for c in cells.columns
            if c.startswith(f"{prefix}prob_") and (prefix or ":" not in c)]


def _tested(cells: Any, prefix: str) -> Any:
    """Cells with an out-of-fold prediction for the view."""
    tested = cells[cells[f"{prefix}prediction"].notna()]
    if "fold" in tested:
        tested = tested[tested["fold"].fillna(-1).astype(int) >= 0]
    return tested


def _roc(report: ReportContext, cells: Any, primary: str) -> Markup:
    curves, thin = [], []
    for prefix in _view_prefixes(cells):
        classes = _classes(cells, prefix)
        tested = _tested(cells, prefix)
        if len(classes) < 2 or tested.empty:
            continue
        truth = tested["condition"].astype(str).to_numpy()
        view = prefix[:-1] if prefix else primary
        for target in (classes[1:] if len(classes) == 2 else classes):
            positive = truth == target
            if positive.all() or not positive.any():
                continue
            fpr, tpr, auc = summaries.roc_points(positive, tested[f"{prefix}prob_{target}"].to_numpy())
            other = classes[0] if len(classes) == 2 else "rest"
            curves.append((f"{view}: {target} vs {other}", fpr, tpr, auc))
            if not prefix and len(classes) == 2 and "fold" in tested:
                for _, fold in tested.groupby("fold"):
                    inside = fold["condition"].astype(str).to_numpy() == target
                    if inside.any() and not inside.all():
                        thin.append(summaries.roc_points(inside, fold[f"prob_{target}"].to_numpy())[:2])
    if not curves:
        return note("ROC curve not available: no out-of-fold probabilities for two conditions.")
    src = report.figures.save(fig.roc_plot(curves, thin), "roc")
    return image(src, "ROC curve", "Out-of-fold ROC over all test cells (thin grey: each fold of "
                 f"view {primary}).")


def _confusion(report: ReportContext, cells: Any) -> Markup:
    tested = _tested(cells, "")
    if tested.empty:
        return note("Confusion matrix not available: no cell has an out-of-fold prediction.")
    truth, predicted = tested["condition"].astype(str), tested["prediction"].astype(str)
    names = _classes(cells, "") or sorted(set(truth) | set(predicted))
    matrix = summaries.confusion_counts(truth, predicted, names)
    src = report.figures.save(fig.confusion_plot(matrix, names), "confusion", *names)
    return image(src, "confusion matrix", "Out-of-fold confusion matrix (cells; rows: true condition).")


def _score_table(metrics: Mapping[str, Any]) -> Markup:
    mean, std = metrics.get("mean") or {}, metrics.get("std") or {}
    rows = [[key, metrics.get(key), mean.get(key), std.get(key)] for key in SCORES
            if key in metrics or key in mean]
    return table(["score", "pooled out-of-fold cells", "mean over folds", "std over folds"], rows)


def _views_table(views: Mapping[str, Any]) -> Markup:
    keys = ("accuracy", "balanced_accuracy", "roc_auc", "f1")
    rows = [[view, ", ".join(m.get("channels") or []), *(m.get(k) for k in keys)]
            for view, m in views.items() if isinstance(m, Mapping)]
    return table(["view", "channels", *keys], rows)


def classification_section(report: ReportContext) -> Markup:
    """Scores, per-view table, training curves, ROC, confusion matrix, per-class and per-fold tables."""
    run = report.run
    metrics = run.metrics.get("classification")
    if not isinstance(metrics, Mapping) or not metrics:
        return unavailable("Classification", "metrics.json['classification']")
    primary = str(metrics.get("view") or run.training.get("primary_view") or "all")
    body: list[Any] = [element("h3", "Scores"), _score_table(metrics)]
    image_level = metrics.get("image_level")
    if isinstance(image_level, Mapping):
        body += [element("h3", "Image-level scores (votes per field)"),
                 mapping_table(scalars(image_level), "score", "value")]
    settings = {k: metrics[k] for k in SETTINGS if k in metrics}
    if settings:
        body.append(element("details", element("summary", "classifier and training settings"),
                            mapping_table({**settings, **scalars({"params": metrics.get("params") or {},
                                                                  "training": metrics.get("training") or {}})},
                                          "setting", "value")))
    if isinstance(metrics.get("views"), Mapping):
        body += [element("h3", "Views"), _views_table(metrics["views"])]
    body.append(element("h3", "Training curves"))
    curves = view_curves(run.training)
    for view, (series, best) in curves.items():
        src = report.figures.save(fig.training_curves(series, best), "training-curves", view)
        body.append(image(src, f"training curves, view {view}",
                          f"View {view}: per epoch, solid training, dashed validation; dotted line: "
                          "the epoch kept (lowest validation loss)."))
    if not curves:
        body.append(unavailable("Training curves", "model/training.json"))
    body.append(element("h3", "ROC and confusion matrix"))
    cells = run.cells
    if cells is None or "prediction" not in cells:
        body.append(unavailable("ROC curve and confusion matrix", "the out-of-fold columns of cells.parquet"))
    else:
        body += [_roc(report, cells, primary), _confusion(report, cells)]
    per_class = records_table(metrics.get("per_class"), "class")
    if per_class is not None:
        body += [element("h3", "Per class"), per_class]
    body.append(element("h3", "Per fold"))
    folds = records_table(metrics.get("folds"))
    body.append(folds if folds is not None else unavailable("Per-fold table", "metrics.json['classification']['folds']"))
    return join(body)

