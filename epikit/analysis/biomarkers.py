"""Biomarker discovery: shell statistics of maps and images, tested at the image level.

For every explained cell the explanation map's mean in each of the concentric shells
(:mod:`epikit.nuclei.shells`, on the crop's nucleus mask) is turned into each shell's share
of the summed shell means (the study's "distribution"); the same shares are taken for every
image channel (the ``<channel>_shell_<k>_share`` features of ``cells.parquet``, measured on
the raw image; computed on the crops when absent). Shares are independent of overall
brightness, so they capture *where* in the nucleus attention or signal sits. Regions:
``shell_1`` (rim) ... ``shell_<n>`` (centre), each as its share, and ``rim_vs_centre``
= share of shell 1 minus share of shell n.

Each quantity is compared between every condition and the reference with
:func:`epikit.analysis.stats.compare_conditions`: at the design unit (the image, or with
replicates / multi-field groups the highest level with 3 units per condition, see
:mod:`epikit.analysis.design`; ``role="design"``) and at the levels below it (image, cell;
``role="comparison"``), Benjamini-Hochberg q-values within each unit. Map rows compare only
maps that belong together under the run's target policy (:mod:`epikit.analysis.targets`: by
default both sides explained for the same class); their ``target`` column says which class
(``own``: each cell's own condition). ``biomarkers.csv`` holds one row per source x explainer
x channel x region x target x condition x unit. ``metrics.json`` gets ``biomarkers`` (summary and shell profiles with
bootstrap bands over images), ``findings`` (image-level rows with q < alpha, ranked, each
with its trust checks), ``channel_attribution`` and ``trust``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from epikit.nuclei.shells import shell_means, shell_regions, shell_shares
from epikit.analysis.design import Design, compare_design
from epikit.analysis.radial import is_interval_region
from epikit.analysis.stats import adjust_within_units, bootstrap_mean_ci, choose_reference, compare_conditions
from epikit.analysis.targets import describe_targets, side_targets
from epikit.errors import DataError

KEYS: tuple[str, ...] = ("source", "explainer", "channel", "region")
COLUMNS: tuple[str, ...] = (
    "source", "explainer", "channel", "region", "target", "statistic", "condition", "reference",
    "mean_condition", "mean_reference", "effect", "cliffs_delta", "hedges_g", "p_value", "q_value", "unit", "role",
    "test", "n_condition", "n_reference", "min_p",
)
RIM_VS_CENTRE = "rim_vs_centre"
SHELL_COLUMN_PREFIX = {"scaled": "shell", "distance": "dshell"}


def region_names(n_shells: int) -> list[str]:
    """``shell_1`` ... ``shell_<n>`` and ``rim_vs_centre``."""
    return [f"shell_{k}" for k in range(1, n_shells + 1)] + [RIM_VS_CENTRE]


def region_label(region: str, n_shells: int) -> str:
    """Readable region name: ``shell_1 (rim)``, ``shell_5 (centre)``, ``rim vs centre``."""
    if region == RIM_VS_CENTRE:
        return "rim vs centre"
    if region == "shell_1":
        return "shell_1 (rim)"
    if region == f"shell_{n_shells}":
        return f"shell_{n_shells} (centre)"
    return region


def localisation(region: str, effect: float, n_shells: int) -> str:
    """Where a difference puts the condition's signal: rim-enriched, centre-enriched or mid."""
    if region == RIM_VS_CENTRE:
        outer = True
    else:
        k = int(region.split("_")[1])
        if 2 * k == n_shells + 1:
            return "mid"
        outer = 2 * k < n_shells + 1
    return "rim-enriched" if (effect > 0) == outer else "centre-enriched"


def region_values(shares: np.ndarray) -> dict[str, np.ndarray]:
    """Per region the values (...,) from shell shares (..., n_shells)."""
    n_shells = shares.shape[-1]
    values = {f"shell_{k + 1}": shares[..., k] for k in range(n_shells)}
    values[RIM_VS_CENTRE] = shares[..., 0] - shares[..., -1]
    return values


def map_shell_shares(maps: np.ndarray, masks: np.ndarray, n_shells: int = 5, method: str = "scaled") -> np.ndarray:
    """Shell shares (N, n_shells) of maps (N, S, S) inside their nucleus masks (N, S, S)."""
    regions = shell_regions(np.asarray(masks) > 0, n_shells, method)
    return shell_shares(shell_means(maps, regions, n_shells))


def shares_table(cells: pd.DataFrame, shares: np.ndarray, source: str, explainer: str, channel: str,
                 targets: Sequence[str] | np.ndarray | None = None) -> pd.DataFrame:
    """Long-format rows (one per cell and region) of one source/channel's shares (N, n).

    Columns: cell_id, image_id, condition, source, explainer, channel, region, target (the
    class a map explains; ``""`` for image rows), value; the input of :func:`biomarker_table`
    and :func:`epikit.analysis.stats.compare_conditions`.
    """
    target = np.asarray(targets).astype(str) if targets is not None else ""
    frames = []
    for region, values in region_values(shares).items():
        frames.append(pd.DataFrame({
            "cell_id": cells["cell_id"].to_numpy(), "image_id": cells["image_id"].to_numpy(),
            "condition": cells["condition"].astype(str).to_numpy(), "source": source,
            "explainer": explainer, "channel": channel, "region": region, "target": target, "value": values,
        }))
    return pd.concat(frames, ignore_index=True)


def comparison_maps(long: pd.DataFrame, target: str, condition: str, reference: str) -> pd.DataFrame:
    """The map rows of ``long`` that one comparison sets side by side under the target policy ``target``.

    The condition's cells explained for its side's class and the reference's cells for
    theirs (:func:`epikit.analysis.targets.side_targets`); every map of either under ``predicted``.
    """
    ours, theirs = side_targets(target, condition, reference)
    mine, base = long["condition"] == condition, long["condition"] == reference
    if ours is not None:
        mine &= long["target"] == ours
        base &= long["target"] == theirs
    return long[mine | base]


def target_label(target: str, condition: str, reference: str) -> str:
    """The ``target`` column of a comparison's map rows: the one class both sides explain, or the policy."""
    ours, theirs = side_targets(target, condition, reference)
    return ours if ours is not None and ours == theirs else target


def compare_maps(long: pd.DataFrame, target: str, reference: str,
                 compare: Callable[[pd.DataFrame], pd.DataFrame]) -> pd.DataFrame:
    """Every non-reference condition against ``reference`` on the maps its comparison may use.

    ``compare`` tests one comparison's rows (:func:`biomarker_table`: at the design unit and
    the levels below it). Returns its rows with a ``target`` column; q-values are not adjusted
    here (the caller adjusts the whole family).
    """
    frames = []
    for condition in sorted(set(long["condition"]) - {reference}):
        rows = comparison_maps(long, target, condition, reference)
        if (rows["condition"] == condition).any() and (rows["condition"] == reference).any():
            frames.append(compare(rows).assign(target=target_label(target, condition, reference)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def image_shares(
    table: pd.DataFrame, channels: Sequence[str], n_shells: int, method: str = "scaled",
    crops: Any = None, masks: Any = None,
) -> dict[str, np.ndarray]:
    """Per channel the shell shares (N, n_shells) of the cells in ``table``.

    Read from the ``<channel>_<shell|dshell>_<k>_share`` feature columns when present (raw
    image, full resolution); otherwise computed on ``crops`` (N, C, S, S) with ``masks``.
    """
    prefix = SHELL_COLUMN_PREFIX[method]
    out: dict[str, np.ndarray] = {}
    computed: np.ndarray | None = None
    for c, channel in enumerate(channels):
        columns = [f"{channel}_{prefix}_{k}_share" for k in range(1, n_shells + 1)]
        if all(column in table.columns for column in columns):
            out[channel] = table[columns].to_numpy(dtype=np.float64)
            continue
        if crops is None or masks is None:
            raise DataError(f"cells.parquet lacks {columns[0]} and no crops were given to compute it")
        if computed is None:
            regions = shell_regions(np.asarray(masks) > 0, n_shells, method)
            computed = shell_shares(shell_means(np.asarray(crops), regions[:, None], n_shells))
        out[channel] = computed[:, c]
    return out


def biomarker_table(long: pd.DataFrame, reference: str | None = None, image_test: str = "permutation",
                    seed: int = 0, target: str = "contrast", design: Design | None = None,
                    unit_test: str = "ttest", extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """The biomarkers.csv table from long-format shares (see :data:`COLUMNS`).

    Image rows compare every cell; map rows follow the target policy ``target`` (see
    :func:`compare_maps`). With a ``design`` (:mod:`epikit.analysis.design`) the tests run at
    its unit (``role="design"``) and the lower levels follow as ``role="comparison"`` rows;
    without, the image is the unit and the cell level the comparison. ``extra``: further tested
    rows (the radial intervals of :mod:`epikit.radial_biomarkers`) that join the families.
    Benjamini-Hochberg q-values within each unit over all rows.
    """
    reference = choose_reference(long["condition"].unique(), reference)

    def compare(rows: pd.DataFrame) -> pd.DataFrame:
        if design is not None:
            return compare_design(rows, KEYS, design, reference, image_test, unit_test, seed)
        compared = compare_conditions(rows, keys=list(KEYS), reference=reference, image_test=image_test, seed=seed)
        return compared.assign(role=np.where(compared["unit"] == "image", "design", "comparison"))

    is_map = long["source"] == "map"
    parts = [compare(long[~is_map]).assign(target="")] if (~is_map).any() else []
    if is_map.any():
        parts.append(compare_maps(long[is_map], target, reference, compare))
    if extra is not None and len(extra):
        parts.append(extra)
    table = adjust_within_units(pd.concat(parts, ignore_index=True))
    # shell rows say which share they test; extra rows (radial intervals) keep their own statistic
    shell = pd.Series(np.where(table["region"] == RIM_VS_CENTRE, "share_rim - share_centre", "share"), table.index)
    kept = table["statistic"] if "statistic" in table else shell
    table["statistic"] = kept.where(table["region"].map(is_interval_region).astype(bool), shell)
    order = {"design": 0, "comparison": 1, "replicate": 0, "group": 1, "image": 2, "cell": 3}
    table = table.sort_values(
        ["role", "unit", "q_value", "p_value"],
        key=lambda s: s.map(order) if s.name in ("role", "unit") else s, kind="mergesort",
    )
    return table[list(COLUMNS)].reset_index(drop=True)


def shell_profiles(long: pd.DataFrame, seed: int = 0, n_boot: int = 2000, target: str = "contrast",
                   reference: str | None = None) -> list[dict[str, Any]]:
    """Mean shell-share profile per quantity and condition with a bootstrap band over images.

    Image rows: one profile per channel and condition (``target`` ""). Map rows: per
    comparison of a condition with ``reference``, the maps that comparison sets side by side
    under the target policy ``target`` (:func:`comparison_maps`), labelled like its
    ``biomarkers.csv`` rows (:func:`target_label`), so a profile never averages maps explained
    for different classes; a profile that two comparisons share (the reference's under ``own``)
    is listed once.
    """
    is_map = long["source"] == "map"
    blocks = [(long[~is_map], "")]
    if is_map.any():
        reference = choose_reference(long["condition"].unique(), reference)
        blocks += [(comparison_maps(long[is_map], target, condition, reference),
                    target_label(target, condition, reference))
                   for condition in sorted(set(long.loc[is_map, "condition"]) - {reference})]
    profiles: dict[tuple[Any, ...], dict[str, Any]] = {}
    for rows, label in blocks:
        for profile in _condition_profiles(rows, seed, n_boot):
            key = (profile["source"], profile["explainer"], profile["channel"], label, profile["condition"])
            profiles.setdefault(key, {**profile, "target": label})
    return list(profiles.values())


def _condition_profiles(long: pd.DataFrame, seed: int, n_boot: int) -> list[dict[str, Any]]:
    """Per source/explainer/channel/condition of ``long`` the mean shell shares over images with a band."""
    shells = long[long["region"] != RIM_VS_CENTRE]
    if shells.empty:
        return []
    per_image = shells.groupby(["source", "explainer", "channel", "condition", "image_id", "region"],
                               sort=True)["value"].mean().unstack("region")
    per_image = per_image[sorted(per_image.columns, key=lambda r: int(r.split("_")[1]))]
    profiles = []
    for (source, explainer, channel, condition), block in per_image.groupby(
            level=["source", "explainer", "channel", "condition"], sort=True):
        mean, low, high = bootstrap_mean_ci(block.to_numpy(), n_boot=n_boot, seed=seed)
        profiles.append({
            "source": source, "explainer": explainer, "channel": channel, "condition": condition,
            "regions": list(block.columns), "mean": np.round(mean, 5).tolist(),
            "low": np.round(low, 5).tolist(), "high": np.round(high, 5).tolist(),
            "n_images": int(len(block)), "level": 0.95,
        })
    return profiles


def finding_text(row: pd.Series, n_shells: int) -> str:
    """One sentence for a design-unit biomarker row; a map row says what its maps compare."""
    unit = row.get("unit", "image")
    numbers = (f"q={row['q_value']:.2g} ({unit} level, {row['n_condition']} vs {row['n_reference']} {unit}s), "
               f"Cliff's delta={row['cliffs_delta']:+.2f}")
    direction = "higher" if row["effect"] > 0 else "lower"
    if row["source"] != "map":
        return (f"{row['channel']} intensity share in {region_label(row['region'], n_shells)} {direction} in "
                f"{row['condition']} than {row['reference']}: {numbers}")
    where = localisation(row["region"], row["effect"], n_shells)
    moves = {"rim-enriched": "lies nearer the rim", "centre-enriched": "lies nearer the centre"}.get(
        where, f"takes a {'larger' if row['effect'] > 0 else 'smaller'} share of {row['region']}")
    evidence = describe_targets(str(row.get("target") or "predicted"), str(row["condition"]), str(row["reference"]))
    return (f"{row['explainer']} {evidence} ({row['channel']} view) {moves} in {row['condition']} than in "
            f"{row['reference']} nuclei ({region_label(row['region'], n_shells)} share {direction}, "
            f"{row['effect']:+.3f}): {numbers}")


def rank_findings(table: pd.DataFrame, alpha: float = 0.05, n_shells: int = 5, limit: int = 10,
                  unit: str = "image") -> list[dict[str, Any]]:
    """Rows of the design ``unit`` with q < ``alpha``, ranked by q, then |Cliff's delta|, then |Hedges' g|.

    Few images make q and Cliff's delta tie often (the smallest attainable p, complete
    separation); Hedges' g, scale-free unlike ``effect``, then ranks the clearer separation first.
    At most ``limit`` findings per source, so strong intensity rows never hide the map findings.
    Radial interval rows are left to :meth:`epikit.radial_biomarkers.RadialBiomarkers.findings`.
    """
    rows = table[(table["unit"] == unit) & (table["q_value"] < alpha)
                 & ~table["region"].map(is_interval_region)].copy()
    rows["_delta"] = -rows["cliffs_delta"].abs()
    rows["_g"] = -rows["hedges_g"].abs().fillna(0.0)
    rows = rows.sort_values(["q_value", "_delta", "_g"], kind="mergesort")
    rows = rows[rows.groupby("source", sort=False).cumcount() < limit]
    found = []
    for rank, (_, row) in enumerate(rows.iterrows(), start=1):
        found.append({
            "rank": rank,
            "text": finding_text(row, n_shells),
            "localisation": localisation(row["region"], row["effect"], n_shells),
            **{key: plain(row.get(key, "")) for key in ("source", "explainer", "channel", "region", "target", "condition",
                                                  "reference", "effect", "cliffs_delta", "hedges_g",
                                                  "p_value", "q_value", "unit", "n_condition", "n_reference")},
        })
    return found


def note_opposite_localisations(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark map and intensity findings of one comparison that put the change at opposite ends.

    A finding whose localisation (rim- or centre-enriched) is contradicted by a finding of the
    other source for the same condition and reference gets ``opposite``: a sentence naming them.
    """
    ends = ("rim-enriched", "centre-enriched")
    out = []
    for finding in findings:
        other_source = "image" if finding["source"] == "map" else "map"
        against = [f for f in findings if f["source"] == other_source and f["localisation"] in ends
                   and finding["localisation"] in ends and f["localisation"] != finding["localisation"]
                   and (f["condition"], f["reference"]) == (finding["condition"], finding["reference"])]
        if against:
            names = ", ".join(sorted({f"{f['channel']} {f['region']}" for f in against}))
            kind = "intensity" if other_source == "image" else "map"
            finding = {**finding, "opposite": (f"{kind} findings ({names}) localise the change the other way "
                                               f"({against[0]['localisation']}, this one {finding['localisation']})")}
        out.append(finding)
    return out


def plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (for JSON); anything else unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    return value
