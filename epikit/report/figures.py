"""Report figures: matplotlib plots (object API, Agg rendering) saved as PNG with safe names.

Every plotting function takes plain arrays / dicts and returns a matplotlib ``Figure``;
:class:`FigureWriter` saves it under a file name derived from (but never equal to) the
user strings it shows, and closes it. Text from user data goes through :func:`plain` so
that a ``$`` in a condition name is shown, not parsed as mathtext.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 90
#: Colours per condition, in the order the conditions are sorted.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def subplots(*args: Any, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """A new figure and its axes through matplotlib's object API (``Figure.subplots``).

    No pyplot and no global backend switch: the figure is rendered by Agg when saved as PNG,
    whatever backend the caller's session uses, and is freed with its last reference.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*args, **kwargs)


def colormap(name: str) -> Any:
    """A registered matplotlib colormap by name."""
    from matplotlib import colormaps

    return colormaps[name]


def plain(text: Any) -> str:
    """A user string as literal matplotlib text: every ``$`` escaped, so mathtext stays off."""
    return str(text).replace("$", r"\$")


def short(text: Any, width: int = 28) -> str:
    """:func:`plain` text cut to ``width`` characters (with an ellipsis) for axis labels."""
    text = str(text)
    return plain(text if len(text) <= width else text[: width - 1] + "\u2026")


def safe_name(*parts: Any) -> str:
    """A file name for a figure: a readable ASCII slug plus a hash of the exact parts.

    Distinct parts give distinct names even when their slugs agree (``a/b`` vs ``a_b``),
    and no user string can add path separators, dots or markup to the name.
    """
    text = "-".join(str(p) for p in parts)
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48].strip("-") or "figure"
    digest = hashlib.sha1(repr(tuple(str(p) for p in parts)).encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}.png"


class FigureWriter:
    """Saves figures as PNG files into one directory and returns their relative links."""

    def __init__(self, directory: Path, link_prefix: str = "figures") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.link_prefix = link_prefix

    def save(self, figure: Any, *name_parts: Any) -> str:
        """Write ``figure`` as PNG and return its link ``figures/<safe name>``."""
        name = safe_name(*name_parts)
        figure.savefig(self.directory / name, dpi=DPI, bbox_inches="tight", facecolor="white")
        return f"{self.link_prefix}/{name}"


def condition_colours(conditions: Sequence[str]) -> dict[str, str]:
    """A stable colour per condition (sorted order)."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(sorted(conditions))}


def display_range(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """1st-99.5th percentile of ``image`` (inside ``mask`` when given) for display."""
    values = image[mask] if mask is not None and mask.any() else image.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1e-6)


def _stretch(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((image - low) / (high - low), 0.0, 1.0)


def segmentation_overlay(image: np.ndarray, labels: np.ndarray, title: str) -> Any:
    """The nuclear channel in grey with each label's outline drawn on it."""
    from skimage.segmentation import find_boundaries

    low, high = display_range(image)
    rgb = np.repeat(_stretch(image, low, high)[..., None], 3, axis=-1)
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 0.85, 0.0)
    height, width = image.shape
    scale = 3.3 / max(height, width)
    figure, axis = subplots(figsize=(width * scale, height * scale + 0.35))
    axis.imshow(rgb, interpolation="nearest")
    axis.set_title(plain(title), fontsize=9)
    axis.axis("off")
    return figure


def counts_per_image(counts: Mapping[str, Sequence[float]], ylabel: str = "nuclei per image") -> Any:
    """Per condition: each image's count as a dot, with the median as a bar."""
    colours = condition_colours(list(counts))
    figure, axis = subplots(figsize=(1.4 + 1.1 * len(counts), 3.0))
    rng = np.random.default_rng(0)
    for position, (condition, values) in enumerate(counts.items()):
        values = np.asarray(values, dtype=float)
        jitter = rng.uniform(-0.18, 0.18, size=values.size)
        axis.scatter(position + jitter, values, s=14, color=colours[condition], alpha=0.75)
        if values.size:
            axis.hlines(np.median(values), position - 0.3, position + 0.3, color="black", lw=2)
    axis.set_xticks(range(len(counts)), [short(c) for c in counts], rotation=20, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_xlim(-0.6, len(counts) - 0.4)
    axis.grid(axis="y", alpha=0.3)
    return figure


def mosaic(tiles: Sequence[Sequence[np.ndarray | None]], gap: int = 2) -> np.ndarray:
    """RGB tiles (H, W, 3) in [0, 1] laid out in rows and columns on white, ``gap`` px apart.

    Drawing one image instead of one axes per tile keeps big grids fast.
    """
    height = max(t.shape[0] for row in tiles for t in row if t is not None)
    width = max(t.shape[1] for row in tiles for t in row if t is not None)
    columns = max(len(row) for row in tiles)
    out = np.ones((len(tiles) * (height + gap) - gap, columns * (width + gap) - gap, 3), dtype=np.float32)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            if tile is not None:
                y, x = r * (height + gap), c * (width + gap)
                out[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return out


def _mosaic_figure(image: np.ndarray, tile: tuple[int, int], row_labels: Mapping[float, str],
                   column_labels: Sequence[str] = (), inches_per_tile: float = 1.1, gap: int = 2) -> Any:
    """One axes showing a mosaic, labelled at row positions (in tiles) and column centres."""
    rows = (image.shape[0] + gap) / (tile[0] + gap)
    columns = (image.shape[1] + gap) / (tile[1] + gap)
    figure, axis = subplots(figsize=(inches_per_tile * columns + 1.3,
                                         inches_per_tile * rows + (0.3 if column_labels else 0.1)))
    axis.imshow(image, interpolation="nearest")
    axis.set_yticks([(position + 0.5) * (tile[0] + gap) for position in row_labels],
                    list(row_labels.values()), fontsize=8)
    axis.set_xticks([(c + 0.5) * (tile[1] + gap) for c in range(len(column_labels))],
                    list(column_labels), fontsize=8)
    axis.xaxis.tick_top()
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    return figure


def crop_grid(examples: Mapping[str, np.ndarray], channel_names: Sequence[str],
              ranges: Sequence[tuple[float, float]]) -> Any:
    """Rows: example cells (N, C, S, S) of each condition; columns: channels (grey, one range each)."""
    tiles, labels = [], {}
    for condition, crops in examples.items():
        labels[len(tiles) + (len(crops) - 1) / 2] = short(condition, 20)
        for crop in crops:
            tiles.append([np.repeat(_stretch(crop[c], *ranges[c])[..., None], 3, axis=-1)
                          for c in range(len(channel_names))])
    size = next(iter(examples.values())).shape[-2:]
    return _mosaic_figure(mosaic(tiles), size, labels, [short(c, 16) for c in channel_names])


def training_curves(curves: Mapping[str, Mapping[str, Sequence[float]]],
                    best: Mapping[str, int] | None = None) -> Any:
    """One panel per score (loss, accuracy, ...), one colour per fold; dashed = validation.

    ``curves`` maps a series label (``fold 0``) to ``{name: values per epoch}`` with names
    such as ``train_loss`` / ``val_loss``; ``best`` marks each label's kept epoch.
    """
    bases = sorted({_metric_base(m) for series in curves.values() for m in series},
                   key=lambda b: ("loss" not in b, b))
    figure, axes = subplots(1, len(bases), squeeze=False, figsize=(3.6 * len(bases), 2.8))
    cmap = colormap("tab10")
    for index, (label, series) in enumerate(curves.items()):
        colour = cmap(index % 10)
        for name, values in series.items():
            axis = axes[0, bases.index(_metric_base(name))]
            style = "--" if name.startswith(("val", "valid")) else "-"
            epochs = np.arange(1, len(values) + 1)
            axis.plot(epochs, np.asarray(values, dtype=float), style, color=colour, lw=1.2,
                      label=plain(label) if style == "-" else None)
            if best and label in best:
                axis.axvline(best[label], color=colour, ls=":", lw=0.8)
    from matplotlib.ticker import MaxNLocator

    for axis, base in zip(axes[0], bases):
        axis.set_title(plain(base.replace("_", " ")), fontsize=10)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    if len(curves) <= 10:
        axes[0, 0].legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def _metric_base(name: str) -> str:
    for prefix in ("train_", "training_", "val_", "valid_", "validation_"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def roc_plot(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]],
             thin: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Any:
    """ROC curves (label, false-positive rate, true-positive rate, AUC); ``thin`` per fold."""
    figure, axis = subplots(figsize=(4.0, 3.8))
    for fpr, tpr in thin:
        axis.plot(fpr, tpr, color="grey", alpha=0.35, lw=0.8)
    for index, (label, fpr, tpr, auc) in enumerate(curves):
        axis.plot(fpr, tpr, lw=2, color=PALETTE[index % len(PALETTE)],
                  label=f"{plain(label)} (AUC {auc:.3f})")
    axis.plot([0, 1], [0, 1], ":", color="black", lw=0.8)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.01)
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(alpha=0.3)
    return figure


def confusion_plot(matrix: np.ndarray, classes: Sequence[str]) -> Any:
    """Counts with row-normalised shading (rows: true condition, columns: predicted)."""
    matrix = np.asarray(matrix, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = 1.4 + 0.9 * len(classes)
    figure, axis = subplots(figsize=(size + 0.6, size))
    axis.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, f"{int(count)}\n{share[row, column]:.0%}", ha="center", va="center",
                  fontsize=9, color="white" if share[row, column] > 0.6 else "black")
    labels = [short(c) for c in classes]
    axis.set_xticks(range(len(classes)), labels, rotation=20, ha="right")
    axis.set_yticks(range(len(classes)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    return figure


def composite(crops: np.ndarray, ranges: Sequence[tuple[float, float]]) -> np.ndarray:
    """Crops (N, C, H, W) as RGB (N, H, W, 3) in [0, 1]: channels 1-3 in red, green, blue.

    One channel gives grey; ``ranges`` gives each channel's display range.
    """
    stretched = np.stack([_stretch(crops[:, c], *ranges[c]) for c in range(min(3, crops.shape[1]))], axis=-1)
    if stretched.shape[-1] == 1:
        return np.repeat(stretched, 3, axis=-1)
    if stretched.shape[-1] == 2:
        return np.concatenate([stretched, np.zeros_like(stretched[..., :1])], axis=-1)
    return stretched


def overlay(grey: np.ndarray, map_: np.ndarray, mask: np.ndarray | None, alpha: float = 0.7) -> np.ndarray:
    """A map (H, W) in [0, 1] coloured (inferno) over a grey image, inside ``mask`` only."""
    colour = colormap("inferno")(np.clip(map_, 0, 1))[..., :3]
    weight = np.full(map_.shape, alpha) if mask is None else np.where(mask, alpha, 0.0)
    return (grey[..., None] * (1 - weight[..., None]) + colour * weight[..., None]).astype(np.float32)


def explanation_gallery(rows: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]) -> Any:
    """Per condition a pair of rows: each cell's crop (RGB), and its map over the grey crop.

    ``rows`` maps a condition to (crop RGB (H, W, 3) in [0, 1], map (H, W), mask or None).
    """
    tiles, labels = [], {}
    for condition, examples in rows.items():
        labels[len(tiles)] = f"{short(condition, 16)}: crop"
        labels[len(tiles) + 1] = "map"
        tiles.append([rgb for rgb, _, _ in examples])
        tiles.append([overlay(rgb.mean(axis=-1), map_, mask) for rgb, map_, mask in examples])
    size = next(iter(rows.values()))[0][0].shape[:2]
    return _mosaic_figure(mosaic(tiles), size, labels)


def average_maps(rows: Mapping[str, Mapping[str, tuple[np.ndarray, int]]]) -> Any:
    """A grid: one row per quantity (``map``, then channels), one column per condition.

    ``rows[name][condition] = (average image, number of cells)``; each row shares one colour
    scale so conditions compare directly. NaN (no nucleus there) is drawn white.
    """
    conditions = list(next(iter(rows.values())))
    figure, axes = subplots(len(rows), len(conditions), squeeze=False,
                            figsize=(2.0 * len(conditions) + 1.6, 2.0 * len(rows) + 0.3))
    for r, (name, per_condition) in enumerate(rows.items()):
        finite = [a[np.isfinite(a)] for a, _ in per_condition.values()]
        values = np.concatenate(finite) if finite else np.zeros(1)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        cmap = colormap("inferno" if name == "map" else "gray").with_extremes(bad="white")
        shown = None
        for c, condition in enumerate(conditions):
            axis = axes[r, c]
            average, count = per_condition.get(condition, (np.full((2, 2), np.nan), 0))
            shown = axis.imshow(np.ma.masked_invalid(average), cmap=cmap, vmin=low,
                                vmax=high if high > low else low + 1e-6, interpolation="bilinear")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(f"{short(condition, 20)}\n(n={count})", fontsize=9)
            if c == 0:
                axis.set_ylabel(short(name, 16), fontsize=9)
        figure.colorbar(shown, ax=list(axes[r]), shrink=0.85, pad=0.02)
    return figure


def shell_profiles(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]],
                   ylabel: str) -> Any:
    """One panel per channel: mean per shell (rim ... centre) per condition, with a band.

    ``panels[channel][condition] = (mean, low, high, n_images)`` over shells 1..K.
    """
    conditions = sorted({c for panel in panels.values() for c in panel})
    colours = condition_colours(conditions)
    figure, axes = subplots(1, len(panels), squeeze=False, sharey=True,
                            figsize=(3.0 * len(panels) + 0.6, 2.9))
    for axis, (channel, profiles) in zip(axes[0], panels.items()):
        for condition, (mean, low, high, count) in profiles.items():
            shells = np.arange(1, len(mean) + 1)
            axis.fill_between(shells, low, high, color=colours[condition], alpha=0.2, lw=0)
            axis.plot(shells, mean, "o-", color=colours[condition], ms=3.5, lw=1.5,
                      label=f"{short(condition)} ({count} images)")
        axis.set_title(short(channel, 24), fontsize=10)
        count = len(next(iter(profiles.values()))[0]) if profiles else 5
        axis.set_xticks(range(1, count + 1), ["rim"] + [str(k) for k in range(2, count)] + ["centre"])
        axis.set_xlabel("shell")
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel(ylabel)
    axes[0, -1].legend(fontsize=7, loc="best")
    figure.tight_layout()
    return figure


def attribution_plot(attribution: Mapping[str, Mapping[str, float]]) -> Any:
    """Grouped bars: per condition, the drop in target probability when a channel is occluded."""
    conditions = list(attribution)
    channels = sorted({ch for values in attribution.values() for ch in values})
    colours = condition_colours(conditions)
    figure, axis = subplots(figsize=(1.2 + 0.9 * len(channels) * max(1, len(conditions)) / 2, 2.9))
    width = 0.8 / max(1, len(conditions))
    for index, condition in enumerate(conditions):
        values = [float(attribution[condition].get(ch, np.nan)) for ch in channels]
        axis.bar(np.arange(len(channels)) + index * width - 0.4 + width / 2, values, width,
                 color=colours[condition], label=short(condition))
    axis.set_xticks(range(len(channels)), [short(c) for c in channels], rotation=20, ha="right")
    axis.set_ylabel("drop in target probability")
    axis.axhline(0, color="black", lw=0.8)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axis.grid(axis="y", alpha=0.3)
    return figure


def faithfulness_plot(curves: Mapping[str, Mapping[str, Any]]) -> Any:
    """Deletion and insertion curves per explainer (solid) against a random order (dashed)."""
    figure, axes = subplots(1, 2, figsize=(7.6, 2.9), sharey=True)
    for index, (method, values) in enumerate(curves.items()):
        fractions = np.asarray(values["fractions"], dtype=float)
        colour = PALETTE[index % len(PALETTE)]
        for axis, kind in zip(axes, ("deletion", "insertion")):
            if f"{kind}_curve" in values:
                axis.plot(fractions, values[f"{kind}_curve"], color=colour, lw=1.6, label=short(method))
            if f"random_{kind}_curve" in values:
                axis.plot(fractions, values[f"random_{kind}_curve"], "--", color=colour, lw=1.0)
    for axis, kind in zip(axes, ("deletion", "insertion")):
        axis.set_title(kind, fontsize=10)
        axis.set_xlabel(f"fraction of nucleus pixels {'removed' if kind == 'deletion' else 'added'}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("target probability")
    axes[1].legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure
