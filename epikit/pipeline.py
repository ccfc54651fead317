"""``epikit run``: the whole study as resumable stages writing one run folder.

    segment -> extract -> train -> explain -> biomarkers -> report

Each stage's options (plus the hash of the stage before it) give it a fingerprint, kept in
``RUN/.epikit/stages.json``. A restarted run skips stages whose fingerprint is unchanged and
finished; a stage that was interrupted is re-entered and continues from its last finished
unit of work (image, fold, cell chunk); a changed option invalidates that stage and every
stage after it. ``force=True`` redoes everything.
"""

from __future__ import annotations

import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epikit.config import PLUGIN_STAGES, STAGES, dump_config, section_hash
from epikit.errors import ConfigError
from epikit.interfaces import optional_attribute
from epikit.io import find_images, read_json, sha256_file, write_json
from epikit.io.discover import ImageRecord, SkippedFile
from epikit.io.store import atomic_path
from epikit.runfolder import layout

if TYPE_CHECKING:  # pragma: no cover
    from epikit.distributed import Executor

STATE_FILE = layout.STAGES_FILE
DEMO_INPUT = layout.DEMO_INPUT
STAGE_OUTPUTS = layout.STAGE_OUTPUTS


@dataclass
class RunContext:
    """Everything a stage needs: the run folder, the configuration and the inputs."""

    run_dir: Path
    config: dict[str, Any]
    records: list[ImageRecord]
    skipped: list[SkippedFile]
    progress: bool = True
    #: Where per-image and per-chunk work runs (None: this process); see epikit.distributed.
    executor: Executor | None = None

    @property
    def masks_dir(self) -> Path:
        """Where the segment stage writes label images."""
        return self.run_dir / layout.MASKS


def _stage_segment(ctx: RunContext) -> dict[str, Any]:
    from epikit.distributed import PluginSpec
    from epikit.io import write_csv
    from epikit.runfolder.metrics import update_metrics
    from epikit.segmentation import segment_images, summarise_counts

    options = ctx.config["segment"]
    # By name and parameters: workers build it themselves, once each (here: built once, cached).
    spec = PluginSpec("segmenter", options["segmenter"], options["params"])
    segmenter = spec.build()
    table = segment_images(ctx.records, spec, ctx.run_dir, nuclear_channel=options["nuclear_channel"],
                           progress=ctx.progress, executor=ctx.executor)
    write_csv(table, ctx.run_dir / layout.SEGMENTATION_TABLE)
    summary = summarise_counts(table)
    weights = optional_attribute(segmenter, "segmenter", "weights_info")
    if weights:
        summary["weights"] = weights
    update_metrics(ctx.run_dir, "segmentation", summary)
    return summary


def _stage_extract(ctx: RunContext) -> dict[str, Any]:
    from epikit.extraction import extract_cells

    options = dict(ctx.config["extract"])
    return extract_cells(ctx.records, ctx.masks_dir, ctx.run_dir, progress=ctx.progress,
                         executor=ctx.executor, **options)


def _stage_train(ctx: RunContext) -> dict[str, Any]:
    from dataclasses import fields

    from epikit.options import TrainingOptions
    from epikit.training.stage import train_run

    options = dict(ctx.config["train"])
    # Plugin-stage keys land in params; those naming a training option belong to the loop.
    loop_keys = {f.name for f in fields(TrainingOptions)} | {"recipe"}
    params = {k: v for k, v in options.pop("params").items() if k not in loop_keys}
    options.update({k: v for k, v in ctx.config["train"]["params"].items() if k in loop_keys})
    return train_run(ctx.run_dir, seed=ctx.config["seed"], params=params,
                     progress=ctx.progress, **options)


def _stage_explain(ctx: RunContext) -> dict[str, Any]:
    from epikit.explanation import explain_run

    options = dict(ctx.config["explain"])
    params = options.pop("params")
    return explain_run(ctx.run_dir, seed=ctx.config["seed"], params=params,
                       progress=ctx.progress, executor=ctx.executor, **options)


def _stage_biomarkers(ctx: RunContext) -> dict[str, Any]:
    from epikit.biomarker_stage import biomarker_run

    options = ctx.config["biomarkers"]
    return biomarker_run(ctx.run_dir, reference=options["reference"], trust=options["trust"],
                         seed=ctx.config["seed"], trust_cells=options["trust_cells"],
                         control_epochs=options["control_epochs"])


def _stage_report(ctx: RunContext) -> dict[str, Any]:
    from epikit.report import build_report

    if not ctx.config["report"]["enabled"]:
        return {"skipped": True}
    return {"path": str(build_report(ctx.run_dir))}


STAGE_RUNNERS: dict[str, Callable[[RunContext], dict[str, Any]]] = {
    "segment": _stage_segment,
    "extract": _stage_extract,
    "train": _stage_train,
    "explain": _stage_explain,
    "biomarkers": _stage_biomarkers,
    "report": _stage_report,
}


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
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE_FILE
    state: dict[str, Any] = {} if force else read_json(state_path, default={})
    if force:
        for stage in STAGES:
            _remove_outputs(run_dir, stage)

    source = Path(config["input"]) if config["input"] else _simulate_demo(run_dir, config)
    records, skipped = find_images(source, config["channels"] or None,
                                   skip_bad=bool(config["skip_bad"]))
    inputs = [{"path": str(r.path), "condition": r.condition, "group": r.group,
               "sha256": sha256_file(r.path)} for r in records]
    (run_dir / layout.CONFIG).write_text(dump_config(config), encoding="utf-8")
    ctx = RunContext(run_dir, config, records, skipped, progress, executor)

    # What the outputs depend on: each image's id, labels, channels and content, not where it
    # lies, so a moved input folder or a copied run folder (with its demo input) resumes.
    upstream = section_hash([(r.image_id, r.condition, r.group, list(r.channel_names), i["sha256"])
                             for r, i in zip(records, inputs)], config["channels"], config["seed"])
    manifest: dict[str, Any] = {
        **_environment(),
        "plugins": _plugin_provenance(config),
        "seed": config["seed"],
        "parameters": config,
        "inputs": inputs,
        "skipped_inputs": [{"path": str(s.path), "reason": s.reason} for s in skipped],
        "stage_seconds": {},
        "stages": {},
    }
    for stage in STAGES:
        # Chained fingerprints: a change upstream changes every later fingerprint too.
        fingerprint = upstream = section_hash(config[stage], upstream)
        previous = state.get(stage, {})
        if previous.get("hash") != fingerprint or not previous.get("done"):
            if previous.get("hash") != fingerprint:
                _remove_outputs(run_dir, stage)  # changed options: start this stage afresh
            state[stage] = {"hash": fingerprint, "done": False}
            write_json(state_path, state)
            started = time.perf_counter()
            summary = STAGE_RUNNERS[stage](ctx)
            state[stage] = {"hash": fingerprint, "done": True, "summary": summary,
                            "seconds": round(time.perf_counter() - started, 3)}
            write_json(state_path, state)
        manifest["stage_seconds"][stage] = state[stage]["seconds"]
        manifest["stages"][stage] = state[stage]["summary"]
        write_json(run_dir / layout.MANIFEST, manifest)
        if stage == stop_after:
            break
    return manifest
