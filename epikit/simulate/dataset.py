"""Write a simulated study to disk: images per condition, ground-truth masks, manifest, parameters.

Layout of ``OUT`` (written to a temporary sibling and renamed into place when complete)::

    images/<condition>/field_000.tif   uint16 (3, Y, X) OME-TIFF, channels Hoechst, CTCF, H3K27ac
    masks/<condition>/field_000.tif    int32 (Y, X) ground-truth labels, 0 = background
    manifest.csv                       path,condition,group[,replicate][,dose] (paths relative to OUT)
    simulation.json                    every parameter, the effect description, per-field counts

With ``replicates > 1`` the files are ``<condition>/rep<r>_field_000.tif`` and the manifest
gets a ``replicate`` column (``rep1``, ``rep2``, ...); with ``doses`` a numeric ``dose`` column.

Field ``k`` of replicate ``r`` (0-based) of a condition is drawn from its own random stream
``SeedSequence(seed, spawn_key=(crc32(condition), r * n_fields + k))``, so it does not depend
on which other conditions are simulated, and the same seed gives byte-identical files. The
replicate effect of replicate ``r`` of a condition comes from
``SeedSequence(seed, spawn_key=(crc32(condition), REPLICATE_STREAM, r))``.
"""

from __future__ import annotations

import csv
import inspect
import io
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from epikit.errors import ConfigError
from epikit.simulate.effect import describe_effect
from epikit.simulate.field import CHANNEL_NAMES, CONTROL, SimulatedField, check_effect, check_number, simulate_field
from epikit.simulate.presets import preset_params

FORMAT_VERSION = 1
# Parameters of simulate_field that simulate_dataset sets itself.
_OWN = {"rng", "condition", "control", "size", "n_nuclei", "radius", "effect", "effect_channel", "effect_size",
        "ratio_shift"}
#: Spawn-key slot of the replicate effects (distinct from any field's key).
REPLICATE_STREAM = 0x5245504C


def replicate_shift(seed: int, condition: str, replicate: int, sd: float) -> float:
    """The log rim/centre-ratio shift of ``replicate`` (0-based) of ``condition``: N(0, sd)."""
    if sd == 0:
        return 0.0
    key = (zlib.crc32(condition.encode("utf-8")), REPLICATE_STREAM, replicate)
    shift = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key)).normal(0.0, sd)
    return float(np.clip(shift, -1.0, 1.0))


def condition_effects(conditions: tuple[str, ...], control: str, effect_size: float,
                      doses: tuple[float, ...] | None) -> dict[str, float]:
    """The planted effect size of each condition: ``effect_size`` outside the control, or,
    with ``doses`` (one per condition), ``effect_size * dose / max(doses)``."""
    if doses is None:
        return {c: 0.0 if c == control else effect_size for c in conditions}
    doses = tuple(float(d) for d in doses)
    if len(doses) != len(conditions):
        raise ConfigError(f"doses {doses!r} must give one dose per condition ({', '.join(conditions)})")
    if any(not np.isfinite(d) or d < 0 for d in doses) or max(doses) == 0:
        raise ConfigError(f"doses {doses!r} must be finite, >= 0 and not all 0")
    return {c: effect_size * d / max(doses) for c, d in zip(conditions, doses)}


def dose_conditions(doses: tuple[float, ...]) -> tuple[str, ...]:
    """Condition names for a dose series: ``ctrl`` for dose 0, else ``dose<d>`` (``.`` as ``p``)."""
    return tuple(CONTROL if float(d) == 0 else "dose" + f"{float(d):g}".replace(".", "p").replace("-", "m")
                 for d in doses)


def field_rng(seed: int, condition: str, index: int) -> np.random.Generator:
    """The random generator of field ``index`` of ``condition`` for ``seed``."""
    key = (zlib.crc32(condition.encode("utf-8")), index)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _write_image(path: Path, simulated: SimulatedField, identity: str) -> None:
    """Write the image as an OME-TIFF naming its channels, with no time stamp or random UUID."""
    import tifffile

    metadata = {
        "axes": "CYX",
        "Channel": {"Name": list(simulated.channel_names)},
        # OME requires a UUID; derive it from the field's identity so files are reproducible.
        "UUID": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, identity)}",
        "Creator": "epikit.simulate",
    }
    tifffile.imwrite(path, simulated.image, ome=True, photometric="minisblack", metadata=metadata,
                     compression="zlib", software=False)


def _write_labels(path: Path, labels: np.ndarray) -> None:
    """Write an int32 label image as a plain TIFF (opens in napari and Fiji)."""
    import tifffile

    tifffile.imwrite(path, labels, photometric="minisblack", compression="zlib", software=False)


def _check_fields(n_fields: int, conditions: tuple[str, ...], control: str, fields_per_group: int) -> None:
    if int(n_fields) != n_fields or n_fields < 1:
        raise ConfigError(f"n_fields = {n_fields!r} must be a whole number >= 1 (fields per condition)")
    if len(conditions) < 1 or len(set(conditions)) != len(conditions):
        raise ConfigError(f"conditions {conditions!r} must be distinct names")
    for condition in conditions:
        if not condition or not condition.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"condition name {condition!r} must be letters, digits, '-' or '_' (it names a folder)")
    if control not in conditions and len(conditions) > 1:
        raise ConfigError(f"control condition {control!r} is not among conditions {', '.join(conditions)}")
    if int(fields_per_group) != fields_per_group or fields_per_group < 1:
        raise ConfigError(f"fields_per_group = {fields_per_group!r} must be a whole number >= 1")


@dataclass(frozen=True)
class _FieldJob:
    """One field to simulate and write into the dataset folder being built (``root``)."""

    root: Path
    seed: int
    condition: str
    replicate: int
    replicates: int
    index: int
    n_fields: int
    fields_per_group: int
    effect_size: float
    ratio_shift: float
    extra: tuple[tuple[str, str], ...]
    settings: dict[str, Any]


def _write_field(job: _FieldJob) -> dict[str, Any]:
    """Simulate one field, write its image and labels; return its ``simulation.json`` entry
    (its manifest columns first)."""
    simulated = simulate_field(field_rng(job.seed, job.condition, job.replicate * job.n_fields + job.index),
                               condition=job.condition, effect_size=job.effect_size,
                               ratio_shift=job.ratio_shift, **job.settings)
    prefix = f"rep{job.replicate + 1}_" if job.replicates > 1 else ""
    name = f"{prefix}field_{job.index:03d}.tif"
    relative = f"images/{job.condition}/{name}"
    _write_image(job.root / relative, simulated, f"epikit.simulate/{job.seed}/{relative}")
    _write_labels(job.root / "masks" / job.condition / name, simulated.labels)
    group = f"{job.condition}/{prefix}field_{job.index:03d}" if job.fields_per_group == 1 else \
        f"{job.condition}/{prefix}well_{job.index // job.fields_per_group:02d}"
    return {"path": relative, "condition": job.condition, "group": group, **dict(job.extra),
            "effect_size": job.effect_size, "nuclei": simulated.n_nuclei, "affected": simulated.affected,
            **simulated.params}


def simulate_dataset(
    out: str | Path,
    *,
    n_fields: int = 8,
    conditions: tuple[str, ...] = (CONTROL, "vpa"),
    control: str = CONTROL,
    size: int | tuple[int, int] | None = None,
    n_nuclei: int | tuple[int, int] | None = None,
    radius: float | tuple[float, float] | None = None,
    effect: str = "periphery",
    effect_channel: str = "H3K27ac",
    effect_size: float = 0.5,
    seed: int = 0,
    fields_per_group: int = 1,
    doses: tuple[float, ...] | None = None,
    replicates: int = 1,
    replicate_sd: float = 0.0,
    overwrite: bool = False,
    preset: str | None = None,
    workers: int = 1,
    **field_params: Any,
) -> Path:
    """Simulate ``n_fields`` fields per condition and replicate and write them under ``out``; returns ``out``.

    The effect (see :mod:`epikit.simulate`) is planted in every condition except ``control``;
    with ``doses`` (one number per condition) its size is ``effect_size * dose / max(doses)``
    (a dose of 0 plants nothing) and the manifest gets a ``dose`` column. ``replicates`` (e.g.
    plates or days) each hold ``n_fields`` fields of every condition; each replicate of each
    condition gets its own random shift of the effect channel's rim/centre ratio, a factor
    ``exp(N(0, replicate_sd))`` on every nucleus of that replicate (a replicate effect that
    field-level statistics mistake for a treatment effect), and the manifest gets a
    ``replicate`` column.
    ``group`` in the manifest is the field (``<condition>/field_###``) unless
    ``fields_per_group > 1``, which puts consecutive fields into wells
    (``<condition>/well_##``) for grouped splits. Further keyword arguments go to
    :func:`epikit.simulate.simulate_field` (e.g. ``field_brightness_sd=0.8`` for strong
    per-field brightness differences, ``mitotic_fraction=0.05``). ``preset`` (see
    :mod:`epikit.simulate.presets`, e.g. ``"sora"`` for the study's 2048 x 2048 fields) sets
    every parameter the call leaves out; ``size``, ``n_nuclei`` and ``radius`` left at None
    take the preset's values (without a preset: 512 x 512, 10-25 nuclei, radius 14-26 px).
    ``workers > 1`` simulates fields in that many processes (the files do not change: each
    field has its own random stream). ``out`` must not exist unless ``overwrite`` is true; it
    is written completely or not at all.
    """
    from epikit.io.store import atomic_path, write_json
    from epikit.plugins import epikit_version

    out = Path(out)
    conditions = tuple(conditions)
    _check_fields(n_fields, conditions, control, fields_per_group)
    effect_size = check_effect(effect, effect_channel, effect_size)
    sizes = condition_effects(conditions, control, effect_size, doses)
    if int(replicates) != replicates or not 1 <= replicates <= 100:
        raise ConfigError(f"replicates = {replicates!r} must be a whole number from 1 to 100")
    replicate_sd = check_number("replicate_sd", replicate_sd, 0.0, 0.5)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ConfigError(f"seed {seed!r} must be an integer") from None
    if seed < 0:
        raise ConfigError(f"seed {seed} must be >= 0")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers = {workers!r} must be a whole number >= 1 (processes)")
    given = {"size": size, "n_nuclei": n_nuclei, "radius": radius, **field_params}
    chosen = {**preset_params(preset), **{k: v for k, v in given.items() if v is not None}}
    size, n_nuclei, radius = chosen.pop("size"), chosen.pop("n_nuclei"), chosen.pop("radius")
    field_params = chosen
    signature = inspect.signature(simulate_field).parameters
    allowed = set(signature) - _OWN
    unknown = sorted(set(field_params) - allowed)
    if unknown:
        raise ConfigError(f"unknown simulation parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; choose a new folder or pass overwrite=True (--overwrite)")

    settings = dict(size=size, n_nuclei=n_nuclei, radius=radius, effect=effect,
                    effect_channel=effect_channel, control=control, **field_params)
    header = ["path", "condition", "group"] + ["replicate"] * (replicates > 1) + ["dose"] * (doses is not None)
    with atomic_path(out) as tmp:
        jobs = []
        for c, condition in enumerate(conditions):
            for folder in ("images", "masks"):
                (tmp / folder / condition).mkdir(parents=True)
            for replicate in range(replicates):
                shift = replicate_shift(seed, condition, replicate, replicate_sd)
                extra = ((("replicate", f"rep{replicate + 1}"),) if replicates > 1 else ()) + \
                    ((("dose", f"{float(doses[c]):g}"),) if doses is not None else ())
                jobs += [_FieldJob(tmp, seed, condition, replicate, replicates, index, n_fields, fields_per_group,
                                   sizes[condition], shift, extra, settings) for index in range(n_fields)]
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
                fields = list(pool.map(_write_field, jobs))
        else:
            fields = [_write_field(job) for job in jobs]
        rows = [[field[column] for column in header] for field in fields]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        (tmp / "manifest.csv").write_text(buffer.getvalue(), encoding="utf-8")
        write_json(tmp / "simulation.json", {
            "format_version": FORMAT_VERSION,
            "generator": "epikit.simulate.simulate_dataset",
            "epikit_version": epikit_version(),
            "seed": seed,
            "preset": preset or "default",
            "n_fields": n_fields,
            "conditions": list(conditions),
            "fields_per_group": fields_per_group,
            "replicates": replicates,
            "replicate_sd": replicate_sd,
            "doses": None if doses is None else [float(d) for d in doses],
            "effect_sizes": sizes,
            "channel_names": list(field_params.get("channels", CHANNEL_NAMES)),
            "parameters": {**{name: p.default for name, p in signature.items() if name not in ("rng", "condition")},
                           **settings, "effect_size": effect_size},
            "effect": {
                "type": effect,
                "channel": effect_channel,
                "size": effect_size,
                "control": control,
                "description": describe_effect(effect, effect_channel, effect_size, control),
            },
            "masks": "masks/<condition>/<stem>.tif: int32 ground-truth labels of the blurred nuclei",
            "fields": fields,
        })
    return out
