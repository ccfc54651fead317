"""Radial profiles in the biomarkers stage: where in the nucleus conditions differ, with bands.

:func:`radial_biomarkers` (called by :func:`epikit.biomarker_stage.biomarker_run`) measures
the radial profile (:mod:`epikit.nuclei.profiles`) of every cell's crop, per image channel,
and of every stored explanation map, on the crop's nucleus mask, a block of cells at a
time (:func:`measure_profiles`). Profiles use normalised distance from the outline
(``relative``: 0 = outline, 1 = centre) and, when ``cells.parquet`` has a ``pixel_size_um``
column, micrometres from the outline (``um``; a crop pixel is ``pixel_size_um / crop_scale``).
Measured on the crops, image and map profiles share one geometry.

Each quantity is compared between conditions by :func:`epikit.analysis.radial.compare_profiles`
at the design unit of the stage (:func:`epikit.analysis.design.describe_design` of the cells,
the same unit as the shell rows: images, or groups or replicates with the design's unit ids;
hierarchical bootstrap bands; cluster-mass permutation test with family-wise error control
over bins). It writes
``profiles.parquet`` and ``profile_curves.csv`` (:mod:`epikit.runfolder.profiles`) and
returns the tested intervals as ``biomarkers.csv`` rows (region ``radial[a,b)``, or
``radial_um[a,b)``; ``p_value`` FWER-adjusted over bins, ``q_value`` Benjamini-Hochberg over
every interval row) and the intervals with ``q < alpha`` as findings (rows of the design unit,
``role="design"``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from epikit.analysis.biomarkers import COLUMNS, plain
from epikit.analysis.design import Design, attach_design
from epikit.analysis.radial import compare_profiles, interval_region, is_interval_region, localisation
from epikit.analysis.targets import side_targets
from epikit.errors import ConfigError, DataError
from epikit.nuclei.profiles import bin_edges, outline_distance, radial_profiles
from epikit.runfolder.layout import MAPS
from epikit.runfolder.maps import StoredMaps
from epikit.runfolder.profiles import QUANTITY, write_cell_profiles, write_profile_curves
from epikit.runfolder.reader import RunFolder
from epikit.runfolder.rows import cell_rows

#: Column of ``cells.parquet`` with the image's pixel size in micrometres (micrometre bins need it).
PIXEL_SIZE = "pixel_size_um"
#: Cells profiled at once (bounds memory: a block of crops is read, profiled and dropped).
BLOCK = 512
SCALE_WORDS = {"relative": "of the way from the outline to the centre", "um": "um from the outline"}


@dataclass
class RadialBiomarkers:
    """What the radial analysis adds to the biomarkers stage: tested interval rows (``p_value``
    family-wise over bins; their ``q_value`` comes from the stage's families, see
    :func:`epikit.analysis.biomarkers.biomarker_table` ``extra``) and a summary."""

    rows: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    bins: int = 20
    bin_um: float = 0.25
    unit: str = "image"

    def findings(self, table: pd.DataFrame, alpha: float, first_rank: int = 1) -> list[dict[str, Any]]:
        """The interval rows of the design unit in the final ``table`` with ``q < alpha`` as findings
        (ranked by q, p)."""
        if not len(self.rows):
            self.summary["n_significant"] = 0
            return []
        keys = ["source", "explainer", "channel", "target", "region", "condition", "reference", "unit"]
        final = table[table["region"].map(is_interval_region)][[*keys, "q_value"]]
        rows = self.rows.drop(columns="q_value").merge(final, on=keys, how="left")
        found = rows[(rows["unit"] == self.unit) & (rows["q_value"] < alpha)].sort_values(
            ["q_value", "p_value"], kind="mergesort")
        self.summary["n_significant"] = int(len(found))
        return [{"rank": rank, "text": _finding_text(row, row["scale"]),
                 "localisation": localisation(row["start"], row["stop"], _deepest(self.bins, row["scale"], self.bin_um),
                                              row["effect"]),
                 **{k: plain(row[k]) for k in ("source", "explainer", "channel", "target", "region", "condition",
                                                "reference", "effect", "cliffs_delta", "hedges_g", "p_value",
                                                "q_value", "unit", "n_condition", "n_reference")}}
                for rank, row in enumerate(found.to_dict("records"), start=first_rank)]


def check_profile_options(bins: int, bin_um: float, resamples: int) -> None:
    """Raise a one-line :class:`ConfigError` for bad profile bins, bin width or resample count."""
    bin_edges(bins, "um", bin_um)  # checks the bins and the width
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ConfigError(f"biomarkers.profile_resamples = {resamples!r} must be a whole number >= 1 "
                          "(bootstrap replicates and permutations; e.g. 1000)")


def _pixel_um(cells: pd.DataFrame) -> np.ndarray | None:
    """Micrometres per crop pixel of every cell, or None when the pixel size is unknown."""
    if PIXEL_SIZE not in cells:
        return None
    size = pd.to_numeric(cells[PIXEL_SIZE], errors="coerce").to_numpy(np.float64)
    if not np.all(np.isfinite(size) & (size > 0)):
        return None
    scale = cells["crop_scale"].to_numpy(np.float64) if "crop_scale" in cells else np.ones(len(cells))
    return size / scale


def _profile_blocks(n: int, read_values: Callable[[int, int], np.ndarray],
                    read_masks: Callable[[int, int], np.ndarray], pixel_um: np.ndarray | None, bins: int,
                    bin_um: float) -> dict[str, np.ndarray]:
    """``{scale: profiles (n, [C,] bins)}`` of ``n`` cells read ``BLOCK`` rows ``[a, b)`` at a time."""
    out: dict[str, list[np.ndarray]] = {"relative": [], "um": []}
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        values, masks = read_values(a, b), read_masks(a, b)
        distance = outline_distance(masks)
        out["relative"].append(radial_profiles(values, masks, bins, distance=distance))
        if pixel_um is not None:
            out["um"].append(radial_profiles(values, masks, bins, "um", pixel_um[a:b], bin_um, distance))
    return {scale: np.concatenate(parts) for scale, parts in out.items() if parts}


def _long(cells: pd.DataFrame, values: np.ndarray, source: str, explainer: str, channel: str,
          scale: str, edges: np.ndarray, targets: np.ndarray | None = None) -> pd.DataFrame:
    """Tidy rows of one quantity's profiles (n, bins); ``targets``: the class each map explains."""
    n, bins = values.shape
    repeat = {c: np.repeat(cells[c].astype(str).to_numpy(), bins) for c in ("cell_id", "image_id", "condition", "group")}
    target = "" if targets is None else np.repeat(np.asarray(targets, dtype=str), bins)
    return pd.DataFrame({**repeat, "source": source, "explainer": explainer, "channel": channel,
                         "target": target, "scale": scale,
                         "bin": np.tile(np.arange(bins), n), "start": np.tile(edges[:-1], n),
                         "stop": np.tile(edges[1:], n), "value": values.ravel()})


def measure_profiles(run_dir: str | Path, cells: pd.DataFrame, channel_names: Sequence[str],
                     map_sets: Sequence[StoredMaps], *, bins: int = 20, bin_um: float = 0.25) -> pd.DataFrame:
    """Tidy per-cell radial profiles of every channel of ``cells``' crops and of every map set."""
    run = RunFolder(run_dir)
    store = run.crops
    if store is None or not store.has_masks:
        raise DataError(f"{Path(run_dir) / 'crops.zarr'}: crops and masks are needed for radial profiles; "
                        "run `epikit extract` first")
    index = cells["crop_index"].to_numpy(np.int64)
    pixel_um = _pixel_um(cells)
    frames = []
    blocks = _profile_blocks(len(index), lambda a, b: store.read(index[a:b]),
                             lambda a, b: store.read_masks(index[a:b]), pixel_um, bins, bin_um)
    for scale, profiles in blocks.items():
        edges = bin_edges(bins, scale, bin_um)
        frames += [_long(cells, profiles[:, c], "image", "", channel, scale, edges)
                   for c, channel in enumerate(channel_names)]
    for stored in map_sets:
        rows = cell_rows(cells["cell_id"], stored.cell_ids,
                         f"{Path(run_dir) / MAPS} explains cells that cells.parquet lacks; re-run explain")
        explained = cells.iloc[rows]
        map_um = pixel_um[rows] if pixel_um is not None else None
        targets = np.asarray(stored.attrs["classes"], dtype=object)[np.asarray(stored.target, dtype=np.int64)]
        blocks = _profile_blocks(len(rows), lambda a, b, s=stored: np.asarray(s.maps[a:b], np.float32),
                                 lambda a, b, s=stored: store.read_masks(s.crop_index[a:b]), map_um, bins, bin_um)
        for scale, profiles in blocks.items():
            frames.append(_long(explained, profiles, "map", str(stored.attrs.get("explainer", "")), stored.view,
                                scale, bin_edges(bins, scale, bin_um), targets))
    return pd.concat(frames, ignore_index=True)


def comparable_maps(block: pd.DataFrame, policy: str, reference: str) -> pd.DataFrame:
    """The rows of one map quantity (maps explaining one class) that a condition comparison may set
    side by side: conditions whose maps *and* the reference's maps explain that class.

    Under ``contrast`` (or one fixed class) that is each condition with the reference; under
    ``own`` or ``predicted`` the two sides explain different classes, so nothing is compared (a
    difference could come from the target alone; the shell rows carry the target-swap control).
    """
    target = str(block["target"].iloc[0])
    conditions = set(block["condition"].astype(str)) - {reference}
    keep = {c for c in conditions if side_targets(policy, c, reference) == (target, target)}
    if not keep:
        return block.iloc[:0]
    return block[block["condition"].astype(str).isin(keep | {reference})]


def _finding_text(row: dict[str, Any], scale: str) -> str:
    what = (f"{row['explainer']} evidence for {row['target']} ({row['channel']} view)" if row["source"] == "map"
            else f"{row['channel']} intensity")
    direction = "higher" if row["effect"] > 0 else "lower"
    return (f"{what} relative to the nucleus mean {direction} in {row['condition']} than {row['reference']} "
            f"from {row['start']:.2f} to {row['stop']:.2f} {SCALE_WORDS[scale]}: p={row['p_value']:.2g} "
            f"(family-wise over bins), q={row['q_value']:.2g} ({row['unit']} level, "
            f"{row['n_condition']} vs {row['n_reference']} {row['unit']}s)")


def radial_biomarkers(
    run_dir: str | Path, cells: pd.DataFrame, channel_names: Sequence[str], map_sets: Sequence[StoredMaps],
    reference: str, design: Design, *, bins: int = 20, bin_um: float = 0.25, resamples: int = 1000,
    seed: int = 0, policy: str = "contrast",
) -> RadialBiomarkers:
    """Profile every cell, write ``profiles.parquet`` and ``profile_curves.csv``, test every quantity.

    Every quantity is tested at the unit of ``design`` (the stage's design of ``cells``, the
    one its shell rows use). Map quantities are compared only between maps explaining one class
    (``policy``: the maps' target policy; :func:`comparable_maps`).

    ``resamples``: bootstrap replicates of the bands and random permutations of the test (the
    test enumerates every label assignment when there are few enough).
    """
    long = measure_profiles(run_dir, cells, channel_names, map_sets, bins=bins, bin_um=bin_um)
    write_cell_profiles(run_dir, long)
    curves, rows = [], []
    skipped: list[str] = []
    for key, block in long.groupby(list(QUANTITY), sort=False):
        if key[0] == "map":
            block = comparable_maps(block, policy, reference)
            if block.empty:
                skipped.append(f"{key[1]} {key[2]} maps for {key[3]}")
                continue
        wide = block.pivot(index="cell_id", columns="bin", values="value")
        meta = attach_design(block.drop_duplicates("cell_id").set_index("cell_id").loc[wide.index].reset_index(),
                             cells)
        edges = bin_edges(bins, key[4], bin_um)
        result = compare_profiles(wide.to_numpy(), meta, reference, edges, n_boot=resamples,
                                  n_permutations=resamples, seed=seed, design=design)
        labels = dict(zip(QUANTITY, key))
        curves.append(result.curves.assign(**labels))
        for interval in result.intervals:
            rows.append({**labels, **interval, "region": interval_region(interval["start"], interval["stop"], key[4]),
                         "effect": interval["difference"],
                         "statistic": "bin mean / nucleus mean; cluster mass of Welch t",
                         "role": "design" if result.unit == design.unit else "comparison"})
    table = pd.DataFrame(rows, columns=[*COLUMNS, "scale", "start", "stop"])
    table["target"] = table["target"].fillna("").astype(str)
    all_curves = pd.concat(curves, ignore_index=True)  # image quantities are always there
    write_profile_curves(run_dir, all_curves[[*QUANTITY, *[c for c in all_curves if c not in QUANTITY]]])
    summary = {"bins": bins, "bin_um": bin_um, "scales": sorted(long["scale"].unique()),
               "resamples": resamples, "n_intervals": int(len(table)), "unit": design.unit,
               "q_values": "Benjamini-Hochberg together with the shell rows of the same unit",
               "band": "95% simultaneous hierarchical bootstrap-t band",
               "test": "cluster-mass permutation of unit condition labels, FWER over bins",
               "maps_not_compared": sorted(set(skipped))}
    return RadialBiomarkers(table, summary, bins, bin_um, design.unit)


def _deepest(bins: int, scale: str, bin_um: float) -> float:
    """The deepest edge of a scale's bins (1, or ``bins * bin_um`` micrometres)."""
    return float(bin_edges(bins, scale, bin_um)[-1])
