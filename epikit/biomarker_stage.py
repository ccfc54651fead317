"""The biomarkers stage: shell statistics of maps and images, with trust checks, -> ``biomarkers.csv``.

:func:`run` is the stage (the pipeline and ``epikit biomarkers`` call it with
:class:`~epikit.options.BiomarkerOptions`); :func:`biomarker_run` reads the run folder (cells, crops, masks, ``maps.zarr``), computes the
shell shares and their statistics (:mod:`epikit.analysis.biomarkers`; map rows compare the
maps the target policy of :mod:`epikit.analysis.targets` puts side by side), the target-swap
control of every map finding (:func:`target_swap_controls`, :mod:`epikit.analysis.target_swap`)
and, with :func:`epikit.biomarker_trust.trust_checks`, the checks of :mod:`epikit.analysis.trust`
for the primary view's maps (channel attribution, faithfulness, randomisation sanity, and a
mask-only control model, explained for the same targets; kept for reuse across shell
definitions). It
writes ``biomarkers.csv`` and the ``biomarkers``, ``findings``, ``channel_attribution`` and
``trust`` sections of ``metrics.json``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from epikit.analysis.biomarkers import (
    COLUMNS,
    SHELL_COLUMN_PREFIX,
    comparison_maps,
    image_shares,
    map_shell_shares,
    note_opposite_localisations,
    shares_table,
    shell_profiles,
)
from epikit.analysis.design import describe_design
from epikit.design_analysis import analyse_design, check_design_options, design_findings
from epikit.analysis.stats import IMAGE_TESTS, choose_reference, condition_doses
from epikit.analysis.target_swap import (
    TARGET_DRIVEN,
    attach_target_swap,
    shared_target_control,
    target_swap_control,
)
from epikit.analysis.targets import check_maps_reference, side_targets, swapped
from epikit.analysis.trust import attach_trust
from epikit.biomarker_trust import explain_by_fold, trust_checks
from epikit.errors import ConfigError
from epikit.io.store import write_csv
from epikit.options import BiomarkerOptions
from epikit.analysis.radial import is_interval_region
from epikit.radial_biomarkers import check_profile_options, radial_biomarkers
from epikit.registry import get_explainer
from epikit.runfolder.cells import CellDataset
from epikit.runfolder.crops import read_masks
from epikit.runfolder.layout import BIOMARKERS, MAPS
from epikit.runfolder.maps import StoredMaps, read_map_sets
from epikit.runfolder.metrics import update_metrics
from epikit.runfolder.models import load_fold_models
from epikit.runfolder.rows import cell_rows

if TYPE_CHECKING:  # pragma: no cover
    from epikit.distributed import Executor


def biomarker_run(
    run_dir: str | Path,
    reference: str | None = BiomarkerOptions.reference,
    trust: bool = BiomarkerOptions.trust,
    seed: int = 0,
    *,
    alpha: float = BiomarkerOptions.alpha,
    image_test: str = BiomarkerOptions.image_test,
    shell_method: str = BiomarkerOptions.shell_method,
    target_swap: bool = BiomarkerOptions.target_swap,
    trust_cells: int = BiomarkerOptions.trust_cells,
    control_epochs: int | None = BiomarkerOptions.control_epochs,
    explainers: Sequence[str] | None = None,
    maps: bool = True,
    profile_bins: int = BiomarkerOptions.profile_bins,
    profile_bin_um: float = BiomarkerOptions.profile_bin_um,
    profile_resamples: int = BiomarkerOptions.profile_resamples,
    min_units: int = BiomarkerOptions.min_units,
    unit_test: str = BiomarkerOptions.unit_test,
    overall_test: str = BiomarkerOptions.overall_test,
    model: str = BiomarkerOptions.model,
) -> dict[str, Any]:
    """Shell statistics of maps and images -> ``biomarkers.csv`` + metrics; returns the summary.

    ``reference``: the reference condition (``""`` or None: the maps' reference, else
    :func:`~epikit.analysis.stats.choose_reference`'s); contrast/own maps explained against
    another reference are refused. ``target_swap``: explain the cells of every map finding
    whose sides differ in target for the other class too and flag findings whose effect the
    target alone could make (:mod:`epikit.analysis.target_swap`). ``trust``: run the trust checks (:mod:`epikit.analysis.trust` via
    :func:`trust_checks`): channel attribution, mask-edge
    control (trains the run's classifier on masks for ``control_epochs`` epochs; 0 or None: as
    many as the run's classifier),
    faithfulness for ``explainers`` (default: the stored maps' explainer, gradcam and
    scorecam) and the randomisation sanity check, each on up to ``trust_cells`` cells per
    condition. ``maps=False`` tests the image channels only (no maps.zarr needed, no trust
    checks). Radial profiles with ``profile_bins`` bins (``profile_bin_um`` micrometres when
    cells.parquet has ``pixel_size_um``) and ``profile_resamples`` resamples add interval rows
    and findings (:mod:`epikit.radial_biomarkers`). The returned summary lists the findings
    as sentences with their flags.
    The design (``min_units``, ``unit_test``, ``overall_test``, ``model``):
    :func:`epikit.design_analysis.analyse_design`.
    """
    if shell_method not in SHELL_COLUMN_PREFIX:
        raise ConfigError(f"shell method {shell_method!r} is not one of: {', '.join(SHELL_COLUMN_PREFIX)}")
    if image_test not in IMAGE_TESTS:
        raise ConfigError(f"image-level test {image_test!r} is not one of: {', '.join(IMAGE_TESTS)}")
    if trust and not maps:
        raise ConfigError("the trust checks examine explanation maps: use maps=True or trust=False")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"biomarkers.alpha = {alpha!r} must lie strictly between 0 and 1 (e.g. 0.05)")
    check_design_options(unit_test, overall_test, model, min_units)
    check_profile_options(profile_bins, profile_bin_um, profile_resamples)
    run_dir = Path(run_dir)
    started = time.perf_counter()
    dataset = CellDataset(run_dir)
    cells = dataset.table
    n_shells = int(dataset.attrs.get("n_shells", 5))
    map_sets = read_map_sets(run_dir) if maps else []
    policy = str(map_sets[0].attrs.get("target", "predicted")) if map_sets else ""
    maps_reference = str(map_sets[0].attrs.get("reference") or "") if map_sets else ""
    reference = choose_reference(cells["condition"].astype(str).unique(), reference or maps_reference or None,
                                 condition_doses(cells))
    check_maps_reference(policy, maps_reference, reference, str(run_dir / MAPS))
    frames = []
    map_long: dict[str, pd.DataFrame] = {}
    for stored in map_sets:
        map_long[stored.view] = map_rows(run_dir, dataset, stored, stored.maps, stored.target, n_shells, shell_method)
        frames.append(map_long[stored.view])
    channel_shares = image_shares(cells, dataset.channel_names, n_shells, shell_method,
                                  *_crops_if_needed(dataset, cells, n_shells, shell_method))
    for channel, shares in channel_shares.items():
        frames.append(shares_table(cells, shares, "image", "", channel))
    long = pd.concat(frames, ignore_index=True)
    design = describe_design(cells, min_units=min_units)  # one unit for the shell and the radial tests
    radial = radial_biomarkers(run_dir, cells, dataset.channel_names, map_sets, reference, design,
                               bins=profile_bins, bin_um=profile_bin_um, resamples=profile_resamples, seed=seed,
                               policy=policy or "contrast")
    designed = analyse_design(run_dir, long, cells, design, reference=reference, seed=seed, alpha=alpha,
                              image_test=image_test, unit_test=unit_test, overall_test=overall_test,
                              model=model, target=policy or "contrast", extra=radial.rows[list(COLUMNS)])
    table = designed.table
    findings = design_findings(designed, alpha, n_shells)
    findings += radial.findings(table, alpha, first_rank=len(findings) + 1)
    write_csv(table, run_dir / BIOMARKERS)
    summary: dict[str, Any] = {
        "reference": reference,
        "target": policy,
        "alpha": alpha,
        "image_test": image_test,
        "shell_method": shell_method,
        "n_shells": n_shells,
        "n_rows": int(len(table)),
        "n_significant_image_level": int(((table["unit"] == "image") & (table["q_value"] < alpha)).sum()),
        "n_significant_cell_level": int(((table["unit"] == "cell") & (table["q_value"] < alpha)).sum()),
        "q_values": "Benjamini-Hochberg within each unit (design-unit rows; each comparison level separately)",
        "design": designed.summary,
        "profiles": shell_profiles(long, seed, target=policy or "contrast", reference=reference),
        "radial_profiles": radial.summary,
    }
    if trust:
        checks = trust_checks(run_dir, map_sets[0], reference=reference, seed=seed, alpha=alpha,
                              trust_cells=trust_cells, control_epochs=control_epochs,
                              explainers=explainers, shell_method=shell_method, image_test=image_test)
        findings = attach_trust(findings, checks)
        update_metrics(run_dir, "channel_attribution", checks["channel_attribution"])
        update_metrics(run_dir, "trust", {k: v for k, v in checks.items() if k != "channel_attribution"})
    if target_swap and maps:
        findings = attach_target_swap(findings, target_swap_controls(
            run_dir, dataset, {s.view: s for s in map_sets}, map_long, findings, policy, n_shells, shell_method))
    findings = note_opposite_localisations(findings)
    summary["n_target_driven"] = sum(TARGET_DRIVEN in f.get("trust", {}).get("flags", []) for f in findings)
    summary["top_finding"] = findings[0]["text"] if findings else None
    summary["seconds"] = round(time.perf_counter() - started, 2)
    update_metrics(run_dir, "biomarkers", summary)
    update_metrics(run_dir, "findings", findings)
    texts = [f["text"] + (f" [{'; '.join(f['trust']['flags'])}]" if f.get("trust", {}).get("flags") else "")
             for f in findings]
    return {k: v for k, v in summary.items() if k != "profiles"} | {"findings": texts}


def run(
    run_dir: str | Path,
    options: BiomarkerOptions,
    *,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The biomarkers stage: :func:`biomarker_run` with ``options`` (in this process, no progress bar)."""
    return biomarker_run(run_dir, reference=options.reference, trust=options.trust, seed=options.seed,
                         alpha=options.alpha, image_test=options.image_test,
                         shell_method=options.shell_method, target_swap=options.target_swap,
                         trust_cells=options.trust_cells, control_epochs=options.control_epochs,
                         profile_bins=options.profile_bins, profile_bin_um=options.profile_bin_um,
                         profile_resamples=options.profile_resamples, min_units=options.min_units,
                         unit_test=options.unit_test, overall_test=options.overall_test, model=options.model)


def map_rows(run_dir: Path, dataset: CellDataset, stored: StoredMaps, maps: np.ndarray, targets: np.ndarray,
             n_shells: int, shell_method: str) -> pd.DataFrame:
    """Long-format shell rows of ``maps`` (one per row of ``stored``, explained for class indices
    ``targets``), with ``map_row``: the map's position in ``stored``."""
    rows = cell_rows(dataset.table["cell_id"], stored.cell_ids,
                     f"{run_dir / MAPS} explains cells that cells.parquet lacks; re-run explain")
    shares = map_shell_shares(maps, read_masks(dataset.store_path, stored.crop_index), n_shells, shell_method)
    names = np.asarray(stored.attrs["classes"], dtype=object)[np.asarray(targets, dtype=np.int64)]
    frame = shares_table(dataset.table.iloc[rows], shares, "map", str(stored.attrs.get("explainer", "")),
                         stored.view, names)
    return frame.assign(map_row=np.tile(np.arange(len(maps)), len(frame) // max(len(maps), 1)))


def target_swap_controls(run_dir: Path, dataset: CellDataset, stored: dict[str, StoredMaps],
                         long: dict[str, pd.DataFrame], findings: list[dict[str, Any]], policy: str,
                         n_shells: int, shell_method: str) -> dict[tuple[str, str], Any]:
    """Per (view, condition) of a map finding, its target-swap control (a function of the finding).

    The maps the comparison used are explained again, by the same fold models, for the other
    class of the comparison (:func:`epikit.analysis.targets.swapped`), unless both sides were
    explained for one class (:func:`epikit.analysis.target_swap.shared_target_control`).
    """
    controls: dict[tuple[str, str], Any] = {}
    shell_findings = [f for f in findings if f["source"] == "map" and not is_interval_region(f["region"])]
    for view, condition in sorted({(f["channel"], f["condition"]) for f in shell_findings}):
        maps, reference = stored[view], next(f["reference"] for f in shell_findings if f["condition"] == condition)
        ours, theirs = side_targets(policy or "contrast", condition, reference)
        if ours is not None and ours == theirs:
            controls[(view, condition)] = lambda finding, target=ours: shared_target_control(finding, target)
            continue
        used = comparison_maps(long[view], policy or "contrast", condition, reference)
        positions = np.unique(used["map_row"].to_numpy())
        classes = list(maps.attrs["classes"])
        other = np.array([classes.index(swapped(classes[t], condition, reference)) for t in maps.target[positions]])
        view_data = CellDataset(run_dir, channels=maps.attrs["channel_names"])
        rows = cell_rows(view_data.table["cell_id"], [maps.cell_ids[p] for p in positions], "stale maps")
        explainer = get_explainer(str(maps.attrs["explainer"]), **dict(maps.attrs.get("params") or {}))
        swapped_maps = explain_by_fold(explainer, load_fold_models(run_dir, view=view),
                                        view_data.load_crops(rows), other, maps.fold[positions])
        part = StoredMaps(view, swapped_maps, [maps.cell_ids[p] for p in positions], maps.crop_index[positions],
                          maps.fold[positions], other, maps.attrs)
        theirs = map_rows(run_dir, dataset, part, swapped_maps, other, n_shells, shell_method)
        controls[(view, condition)] = lambda finding, used=used, theirs=theirs: target_swap_control(
            used, theirs, finding)
    return controls



def _crops_if_needed(dataset: Any, cells: pd.DataFrame, n_shells: int, method: str) -> tuple[Any, Any]:
    """Crops and masks of every cell when cells.parquet lacks the shell-share features."""
    prefix = SHELL_COLUMN_PREFIX[method]
    needed = any(f"{c}_{prefix}_1_share" not in cells.columns for c in dataset.channel_names)
    if not needed:
        return None, None
    return dataset.load_crops(), read_masks(dataset.store_path, cells["crop_index"].to_numpy())
