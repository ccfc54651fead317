"""Statistics of curves over bins (radial profiles): unit means, hierarchical bootstrap bands, cluster tests.

The data are per-cell curves ``(n_cells, n_bins)`` with each cell's image and, optionally, the
labels of the levels above the images (replicates, groups), top first. The top level given is
the unit of replication; without levels every image is a unit. Which level is the unit, and
the labels of its units, are the design's (:mod:`epikit.analysis.design`: ``describe_design``,
``unit_ids``); this module only nests and averages.

:func:`hierarchical_mean`
    The curve of a set of cells: mean over units of the mean over their members (groups,
    images) ... of the mean over cells (bins a cell lacks, NaN, are left out at that level).
:func:`bootstrap_curves`
    Replicates of that curve: units resampled with replacement, then the members of each
    drawn unit, level by level, down to the cells within each drawn image.
:func:`simultaneous_band`
    A 95% band that holds for every bin at once (a bootstrap-t band on the max over bins of
    |t|), so "the band of the difference covers zero everywhere" is a 95% statement.
:func:`cluster_test`
    Which stretches of bins differ between two conditions, with family-wise error control
    over bins: per-bin Welch t of the unit curves, contiguous same-sign runs with
    ``|t|`` above the two-sided ``cluster_alpha`` t quantile form clusters, a cluster's mass
    is its summed ``|t|``, and its p-value is the share of condition-label permutations of
    the units whose largest cluster mass (either sign) reaches it (every permutation when
    affordable, else ``n_permutations`` random ones).

Example on per-image curves ``x`` (6, 20) and ``y`` (6, 20)::

    clusters = cluster_test(x, y)            # [Cluster(start=0, stop=5, sign=1, mass=..., p_value=...)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from epikit.analysis.stats import all_splits
from epikit.errors import DataError

#: Most label assignments enumerated exactly by :func:`cluster_test`.
EXACT_LIMIT = 20000


#: Units -> [level members ->] images -> cell positions (the leaves are integer arrays).
Nested = list


def hierarchy(images: Sequence[str] | np.ndarray, levels: Sequence[Sequence[str] | np.ndarray] = ()) -> Nested:
    """Cell positions nested as ``units -> [level members ->] images -> cells``, each level sorted.

    ``levels``: per-cell labels of the levels above the images, top first (the top one is the
    unit; a label must name one member across the whole table, as the design's unit ids do).
    Without levels every image is its own unit.
    """
    images = np.asarray(images).astype(str)
    labels = [np.asarray(level).astype(str) for level in levels] or [images]
    return _nest(np.arange(len(images)), [*labels, images])


def _nest(cells: np.ndarray, labels: list[np.ndarray]) -> Nested:
    """``cells`` split by ``labels[0]`` (sorted), each part by the next labels; images end in positions."""
    parts = pd.Series(cells).groupby(labels[0][cells], sort=True).indices
    children = [cells[positions] for positions in parts.values()]
    return children if len(labels) == 1 else [_nest(child, labels[1:]) for child in children]


def _weighted_mean(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``sum(counts * values) / sum(counts * valid)`` over the children axis, NaN values left out.

    ``counts`` (R, k); ``values`` (k, B) shared by every replicate or (R, k, B) per replicate.
    """
    valid = ~np.isnan(values)
    filled = np.where(valid, values, 0.0)
    if values.ndim == 2:
        total, weight = counts @ filled, counts @ valid
    else:
        total, weight = np.einsum("rk,rkb->rb", counts, filled), np.einsum("rk,rkb->rb", counts, valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)


def _draw(rng: np.random.Generator | None, k: int, replicates: int) -> np.ndarray:
    """Resampling counts (R, k): each row a draw of ``k`` of ``k`` with replacement (all ones without ``rng``)."""
    if rng is None:
        return np.ones((replicates, k))
    return rng.multinomial(k, np.full(k, 1.0 / k), size=replicates).astype(np.float64)


def _spread(counts: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Standard error (R, B) of the count-weighted mean of ``curves`` (R, k, B): weighted sd / sqrt(k)."""
    valid = ~np.isnan(curves)
    weights = counts[..., None] * valid
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (weights * np.where(valid, curves, 0.0)).sum(axis=1) / total
        variance = (weights * np.where(valid, curves - mean[:, None], 0.0) ** 2).sum(axis=1) / (total - 1)
        return np.where(total > 1, np.sqrt(variance / total), np.nan)


def _node_curves(values: np.ndarray, node: Nested | np.ndarray, replicates: int,
                 rng: np.random.Generator | None) -> np.ndarray:
    """Curves (R, B) of one node of the hierarchy: an image (cell positions) or a list of members."""
    if isinstance(node, np.ndarray):
        return _weighted_mean(_draw(rng, len(node), replicates), values[node])
    members = np.stack([_node_curves(values, member, replicates, rng) for member in node], axis=1)
    return _weighted_mean(_draw(rng, len(node), replicates), members)


def _level_curves(values: np.ndarray, nested: Nested, replicates: int,
                  rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """Curves (R, B) of the hierarchy, each level resampled with ``rng`` (plain means without),
    and their standard errors (R, B) from the spread of the (drawn) units."""
    units = np.stack([_node_curves(values, unit, replicates, rng) for unit in nested], axis=1)
    counts = _draw(rng, len(nested), replicates)
    return _weighted_mean(counts, units), _spread(counts, units)


def hierarchical_mean(values: np.ndarray, images: Sequence[str] | np.ndarray,
                      levels: Sequence[Sequence[str] | np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The curve (B,) of cells ``values`` (n, B), mean over units of member means ... of cell means
    (``levels``: see :func:`hierarchy`), and its standard error (B,) from the spread of the unit
    curves (NaN with one unit)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise DataError("no cells to average")
    curve, error = _level_curves(values, hierarchy(images, levels), 1, None)
    return curve[0], error[0]


def unit_curves(values: np.ndarray, images: Sequence[str] | np.ndarray,
                levels: Sequence[Sequence[str] | np.ndarray] = ()) -> np.ndarray:
    """One curve per unit (n_units, B): the units of :func:`hierarchy`, in its order."""
    values = np.asarray(values, dtype=np.float64)
    return np.stack([_level_curves(values, [unit], 1, None)[0][0] for unit in hierarchy(images, levels)])


def bootstrap_curves(values: np.ndarray, images: Sequence[str] | np.ndarray,
                     levels: Sequence[Sequence[str] | np.ndarray] = (), n_boot: int = 1000,
                     seed: int | np.random.Generator = 0) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical bootstrap replicates (n_boot, B) of :func:`hierarchical_mean` and their standard errors."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise DataError("no cells to bootstrap")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return _level_curves(values, hierarchy(images, levels), int(n_boot), rng)


def simultaneous_band(estimate: np.ndarray, error: np.ndarray, replicates: np.ndarray,
                      replicate_errors: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)``: a band around ``estimate`` (B,) holding at every bin at once with ``level``.

    Bootstrap-t: the half-width at bin ``b`` is ``c * error_b``, with ``c`` the ``level``
    quantile over replicates of ``max_b |replicate_b - estimate_b| / replicate_error_b``.
    Studentising each replicate by its own standard error carries the extra uncertainty of
    a standard error estimated from few units (a plain percentile band of 6 images covers
    far less than it claims when images differ). A replicate with a zero error counts as
    infinitely far; when that makes the critical value infinite (very few units, so that
    many replicates draw a single unit) or a bin has no error (one unit), the band is NaN:
    it cannot be estimated from such data.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    replicates = np.asarray(replicates, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.abs(replicates - estimate) / np.asarray(replicate_errors, dtype=np.float64)
    scaled = np.where(np.isnan(scaled) & ~np.isnan(replicates), np.inf, scaled)
    usable = ~np.isnan(np.asarray(error, dtype=np.float64))
    worst = np.max(np.where(usable & ~np.isnan(scaled), scaled, 0.0), axis=1) if usable.any() else np.zeros(0)
    critical = float(np.quantile(worst, level, method="inverted_cdf")) if worst.size else float("nan")
    critical = critical if np.isfinite(critical) else float("nan")
    with np.errstate(invalid="ignore"):
        half = np.where(usable, critical * np.where(usable, error, 0.0), np.nan)
    return estimate - half, estimate + half


@dataclass(frozen=True)
class Cluster:
    """A stretch of bins ``[start, stop)`` where condition minus reference has one sign."""

    start: int
    stop: int
    sign: int
    mass: float
    p_value: float


@dataclass(frozen=True)
class CurveTest:
    """The clusters of one condition-vs-reference curve comparison and how they were tested."""

    clusters: list[Cluster]
    t: np.ndarray
    threshold: float
    n_permutations: int
    exact: bool
    min_p: float


def welch_t(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Welch's t of ``mean(x) - mean(y)`` per column (0 where both sides are constant)."""
    n, m = len(x), len(y)
    difference = x.mean(axis=-2) - y.mean(axis=-2)
    error = np.sqrt(x.var(axis=-2, ddof=1) / n + y.var(axis=-2, ddof=1) / m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(error > 0, difference / np.where(error > 0, error, 1.0), 0.0)


def _largest_mass(t: np.ndarray, threshold: float) -> np.ndarray:
    """Largest cluster mass (either sign) of each row of ``t`` (R, B)."""
    best = np.zeros(t.shape[0])
    for sign in (1.0, -1.0):
        running = np.zeros(t.shape[0])
        for column in (sign * t).T:
            running = np.where(column > threshold, running + column, 0.0)
            best = np.maximum(best, running)
    return best


def _clusters(t: np.ndarray, threshold: float) -> list[tuple[int, int, int, float]]:
    """``(start, stop, sign, mass)`` of every supra-threshold same-sign run of ``t`` (B,)."""
    found, start = [], None
    signs = np.where(t > threshold, 1, np.where(t < -threshold, -1, 0))
    for b in range(len(t) + 1):
        current = signs[b] if b < len(t) else 0
        if start is not None and current != signs[start]:
            found.append((start, b, int(signs[start]), float(np.abs(t[start:b]).sum())))
            start = None
        if start is None and current != 0:
            start = b
    return found


def cluster_test(x: np.ndarray, y: np.ndarray, cluster_alpha: float = 0.05, n_permutations: int = 2000,
                 seed: int = 0) -> CurveTest:
    """Cluster-mass permutation test of unit curves ``x`` (n, B) (condition) against ``y`` (m, B).

    Bins where any unit has no value are left out (they break clusters). Needs at least two
    units per side; with fewer, returns no clusters and ``min_p`` NaN.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    bins = x.shape[1] if x.ndim == 2 else 0
    if n < 2 or m < 2:
        return CurveTest([], np.full(bins, np.nan), float("nan"), 0, False, float("nan"))
    pooled = np.concatenate([x, y])
    usable = ~np.isnan(pooled).any(axis=0)
    pooled = np.where(usable, pooled, 0.0)
    threshold = float(sps.t.ppf(1 - cluster_alpha / 2, n + m - 2))
    observed = np.where(usable, welch_t(pooled[:n], pooled[n:]), 0.0)
    exact = math.comb(n + m, n) <= max(EXACT_LIMIT, n_permutations)
    if exact:
        chosen = all_splits(n + m, n)
    else:
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.permuted(np.tile(np.arange(n + m), (n_permutations, 1)), axis=1)[:, :n], axis=1)
    membership = np.zeros((len(chosen), n + m), dtype=bool)
    np.put_along_axis(membership, chosen, True, axis=1)
    weights = membership.astype(np.float64)
    sums, squares = weights @ pooled, weights @ pooled**2
    total, total_sq = pooled.sum(axis=0), (pooled**2).sum(axis=0)
    mean_x, mean_y = sums / n, (total - sums) / m
    var_x = (squares - n * mean_x**2) / (n - 1)
    var_y = (total_sq - squares - m * mean_y**2) / (m - 1)
    error = np.sqrt(np.maximum(var_x, 0) / n + np.maximum(var_y, 0) / m)
    with np.errstate(invalid="ignore", divide="ignore"):
        null_t = np.where(error > 1e-12, (mean_x - mean_y) / np.where(error > 1e-12, error, 1.0), 0.0)
    null_mass = _largest_mass(null_t * usable, threshold)
    tolerance = 1e-9
    clusters = []
    for start, stop, sign, mass in _clusters(observed, threshold):
        beyond = int(np.sum(null_mass >= mass - tolerance))
        p = beyond / len(null_mass) if exact else (1 + beyond) / (1 + len(null_mass))
        clusters.append(Cluster(start, stop, sign, mass, float(p)))
    min_p = 1.0 / len(null_mass) if exact else 1.0 / (1 + len(null_mass))
    return CurveTest(clusters, observed, threshold, len(null_mass), exact, min_p)
