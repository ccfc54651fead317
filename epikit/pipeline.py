"""``epikit run``: the whole study as resumable stages writing one run folder.

    segment -> extract -> train -> explain -> biomarkers -> report

Each stage's options (plus the hash of the stage before it) give it a fingerprint, kept in
``RUN/.epikit/stages.json``. A restarted run skips stages whose fingerprint is unchanged and
finished; a stage that was interrupted is re-entered and continues from its last finished
unit of work (image, fold, cell chunk); a changed option invalidates that stage and every
stage after it. ``force=True`` redoes everything.
"""

from __future__ import annotations

import dataclasses
import importlib
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epikit.config import PLUGIN_STAGES, STAGES, dump_config, section_hash
from epikit.errors import ConfigError
from epikit.io import find_images, read_json, record_dict, record_sha256, write_json
from epikit.io.discover import ImageRecord
from epikit.io.store import atomic_path
from epikit.options import STAGE_OPTIONS, ReadOptions, options_from_table
from epikit.runfolder import layout

if TYPE_CHECKING:  # pragma: no cover
    from epikit.distributed import Executor

STATE_FILE = layout.STAGES_FILE
DEMO_INPUT = layout.DEMO_INPUT
STAGE_OUTPUTS = layout.STAGE_OUTPUTS


#: The module of each stage; each has ``run(run_dir, options, *, executor, progress)``.
STAGE_MODULES: dict[str, str] = {
    "segment": "epikit.segmentation",
    "extract": "epikit.extraction",
    "train": "epikit.training.stage",
    "explain": "epikit.explanation",
    "biomarkers": "epikit.biomarker_stage",
    "report": "epikit.report",
}


def resolve_references(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with one reference condition for explain and biomarkers.

    An empty ``explain.reference`` takes ``biomarkers.reference``, so the maps are explained
    against the condition the statistics compare with (and a changed ``biomarkers.reference``
    changes the explain fingerprint). Raises :class:`ConfigError` when both are set, differ
    and the explain target policy pairs each condition with the reference (contrast, own).
    """
    from epikit.analysis.targets import PAIRED_POLICIES

    explain, biomarkers = config["explain"], config["biomarkers"]
    chosen, wanted = str(explain.get("reference") or ""), str(biomarkers.get("reference") or "")
    if chosen and wanted and chosen != wanted and explain.get("target") in PAIRED_POLICIES:
        raise ConfigError(f"explain.reference {chosen!r} differs from biomarkers.reference {wanted!r}; "
                          "set one of them (an empty explain.reference follows [biomarkers])")
    if chosen or not wanted:
        return config
    return {**config, "explain": {**explain, "reference": wanted}}


def stage_options(stage: str, config: dict[str, Any], records: Sequence[ImageRecord]) -> Any:
    """The options dataclass of ``stage``: its config table, plus the run's seed and images where it takes them."""
    options = STAGE_OPTIONS[stage]
    available = {"seed": config["seed"], "images": tuple(records)}
    per_run = {f.name: available[f.name] for f in dataclasses.fields(options) if f.name in available}
    return options_from_table(options, config[stage], **per_run)


def run_stage(stage: str, run_dir: Path, options: Any, *, executor: Executor | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run one stage's ``run`` function (its module is imported only now); return its summary."""
    module = importlib.import_module(STAGE_MODULES[stage])
    return module.run(run_dir, options, executor=executor, progress=progress)


def _simulate_demo(run_dir: Path, config: dict[str, Any]) -> Path:
    """Simulate the built-in demo dataset into the run folder (once per demo settings)."""
    from epikit.simulate import simulate_dataset

    demo = config["demo"]
    target = run_dir / DEMO_INPUT
    fingerprint = section_hash(demo, config["seed"])
    marker = target / ".fingerprint"
    if marker.is_file() and marker.read_text() == fingerprint:
        return target / "images"
    with atomic_path(target) as tmp:
        simulate_dataset(
            tmp, n_fields=demo["fields"], size=(demo["size"], demo["size"]),
            n_nuclei=(demo["min_nuclei"], demo["max_nuclei"]), effect=demo["effect"],
            effect_channel=demo["effect_channel"], effect_size=demo["effect_size"],
            seed=config["seed"],
        )
        (tmp / ".fingerprint").write_text(fingerprint)
    return target / "images"


def _remove_outputs(run_dir: Path, stage: str) -> None:
    for name in STAGE_OUTPUTS[stage]:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _plugin_provenance(config: dict[str, Any]) -> list[dict[str, str]]:
    from epikit.registry import get_entry

    return [get_entry(kind, config[stage][kind]).provenance()
            for stage, kind in PLUGIN_STAGES.items()]


def _validate_plugins(config: dict[str, Any]) -> None:
    """Fail before any work when a plugin name is unknown (one line, with a suggestion)."""
    _plugin_provenance(config)


def _environment() -> dict[str, Any]:
    import torch

    from epikit.device import default_device, describe_device
    from epikit.plugins import epikit_version

    return {
        "epikit": epikit_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": describe_device(default_device()),
    }


def stage_fingerprints(config: dict[str, Any], records: Sequence[ImageRecord],
                       sha256: Sequence[str]) -> dict[str, str]:
    """Each stage's fingerprint: its options chained onto everything upstream of it.

    Upstream of every stage: each image's id, labels, channels and content (``sha256``, one
    per record) and how it was read, not where it lies, so a moved input folder or a copied
    run folder (with its demo input) resumes. From extract on, also each image's manifest
    metadata (replicate, dose, plate...), which becomes cell columns: editing it re-runs
    extraction and what follows, not segmentation.
    """
    upstream = section_hash([(r.image_id, r.condition, r.group, list(r.channel_names), digest)
                             for r, digest in zip(records, sha256)], config["channels"], config["seed"],
                            config["read"], [(r.z, r.pixel_size_um, r.scene) for r in records])
    design = [dict(sorted(r.metadata.items())) for r in records]
    fingerprints = {}
    for stage in STAGES:
        if stage == "extract" and any(design):  # runs without metadata keep their fingerprints
            upstream = section_hash(upstream, design)
        fingerprints[stage] = upstream = section_hash(config[stage], upstream)
    return fingerprints


def reading_summary(reading: ReadOptions, records: Sequence[ImageRecord]) -> dict[str, Any]:
    """How the inputs were read, for the manifest and the report: Z projection, pixel size, channels."""
    size = records[0].pixel_size_um if records else None
    return {"z": reading.z, "z_default": reading.z == ReadOptions.z,
            "max_z_planes": max((r.n_z for r in records), default=1),
            "pixel_size_um": size,
            "pixel_size_source": "--pixel-size" if reading.pixel_size_um > 0 else
            ("metadata" if size else "unknown"),
            "channel_names": list(records[0].channel_names) if records else [],
            "pattern": reading.pattern, "layout": reading.layout}


def run_pipeline(
    config: dict[str, Any],
    run_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    stop_after: str | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run every stage of ``config`` into ``run_dir``; return the manifest written.

    ``stop_after`` ends the run after the named stage (later stages keep their state).
    ``executor`` runs segmentation, extraction and explanation on Dask workers (see
    :func:`epikit.distributed.get_executor`); training stays in this process. The outputs
    do not depend on it, so it is not part of the stage fingerprints.
    """
    run_dir = Path(run_dir)
    if stop_after is not None and stop_after not in STAGES:
        raise ConfigError(f"unknown stage {stop_after!r}; stages: {', '.join(STAGES)}")
    _validate_plugins(config)
    staged = resolve_references(config)  # what the stages run with (config.toml keeps what was asked)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE_FILE
    state: dict[str, Any] = {} if force else read_json(state_path, default={})
    if force:
        for stage in STAGES:
            _remove_outputs(run_dir, stage)

    source = Path(config["input"]) if config["input"] else _simulate_demo(run_dir, config)
    reading = options_from_table(ReadOptions, config["read"])
    records, skipped = find_images(source, config["channels"] or None, skip_bad=bool(config["skip_bad"]),
                                   reading=reading, nuclear_channel=config["segment"]["nuclear_channel"])
    inputs = [{**record_dict(r), "sha256": record_sha256(r)} for r in records]
    (run_dir / layout.CONFIG).write_text(dump_config(config), encoding="utf-8")

    fingerprints = stage_fingerprints(staged, records, [i["sha256"] for i in inputs])
    manifest: dict[str, Any] = {
        **_environment(),
        "plugins": _plugin_provenance(config),
        "seed": config["seed"],
        "parameters": config,
        "reading": reading_summary(reading, records),
        "inputs": inputs,
        "skipped_inputs": [{"path": str(s.path), "reason": s.reason} for s in skipped],
        "stage_seconds": {},
        "stages": {},
    }
    for stage in STAGES:
        fingerprint = fingerprints[stage]  # chained: a change upstream changes every later one
        previous = state.get(stage, {})
        if previous.get("hash") != fingerprint or not previous.get("done"):
            if previous.get("hash") != fingerprint:
                _remove_outputs(run_dir, stage)  # changed options: start this stage afresh
            state[stage] = {"hash": fingerprint, "done": False}
            write_json(state_path, state)
            started = time.perf_counter()
            summary = run_stage(stage, run_dir, stage_options(stage, staged, records),
                                executor=executor, progress=progress)
            state[stage] = {"hash": fingerprint, "done": True, "summary": summary,
                            "seconds": round(time.perf_counter() - started, 3)}
            write_json(state_path, state)
        manifest["stage_seconds"][stage] = state[stage]["seconds"]
        manifest["stages"][stage] = state[stage]["summary"]
        write_json(run_dir / layout.MANIFEST, manifest)
        if stage == stop_after:
            break
    return manifest
