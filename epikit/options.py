"""The options of every stage, each default defined once.

One typed dataclass per stage. :data:`epikit.config.DEFAULTS` (and so ``config.toml``) is
generated from them, the library's stage functions and the CLI commands take their defaults
from them, and ``tests/test_options.py`` checks that nothing else restates a default.
:class:`TrainingOptions` is the training loop's own recipe (every classifier shares it);
:class:`TrainOptions` is what the train stage adds around it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from epikit.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from epikit.io import ImageRecord

#: Field metadata of an option that is not in the stage's config table: it is set per run by
#: the caller (the pipeline from the run's inputs and seed, or a CLI flag), not by ``config.toml``.
PER_RUN = "per_run"

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "exponential")
RECIPES = ("default", "study")
BALANCING = ("weights", "sampling", "none")


@dataclass(frozen=True)
class TrainingOptions:
    """How one network is trained (shared by every classifier).

    ``precise_bn``: before each validation, BatchNorm statistics are recomputed over the
    training crops (their running averages lag behind fast-changing weights on small data).
    Best epoch and early stopping: from epoch ``min_epochs`` on (default: half of ``epochs``;
    earlier epochs, still warming up, are not candidates), the epoch with the lowest
    validation loss is kept, and training ends once ``patience`` epochs in a row did not
    lower it.
    ``schedule="cosine"``: linear warm-up over ``warmup_epochs``, then cosine decay to 0 at
    ``epochs`` (per step); ``"exponential"``: ``lr * lr_decay**epoch`` (the study's 0.99).
    ``crops_memory_mb``: a run folder's crops (as float32) up to this size are trained from
    memory; a larger set is read from ``crops.zarr`` in shuffled pools of this size, so memory
    stays flat however many cells a study has (:mod:`epikit.training.crop_source`).
    Defaults train the study's ``resnet10`` with 5-fold CV on ~200 crops of 64 px (the demo)
    in about 1.5 minutes on two CPU cores. The study's own recipe is :meth:`study`.
    """

    epochs: int = 16
    batch_size: int = 16
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    lr_decay: float = 0.99
    patience: int = 5
    min_epochs: int | None = None
    validation_fraction: float = 0.15
    balance: str = "weights"
    augment: bool = True
    precise_bn: bool = True
    intensity_jitter: float = 0.1
    amp: bool = True
    crops_memory_mb: float = 64.0
    seed: int = 0
    progress: bool = True

    @classmethod
    def study(cls, **changes: Any) -> TrainingOptions:
        """The published recipe: Adam, lr 1e-5 decaying 0.99 per epoch, 300 epochs, batch 128."""
        recipe = {"epochs": 300, "batch_size": 128, "lr": 1e-5, "optimizer": "adam",
                  "weight_decay": 0.0, "schedule": "exponential", "warmup_epochs": 0.0,
                  "lr_decay": 0.99, "patience": 300}
        return cls(**{**recipe, **changes})

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer={self.optimizer!r} is not one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule={self.schedule!r} is not one of: {', '.join(SCHEDULES)}")
        if self.balance not in BALANCING:
            raise ConfigError(f"balance={self.balance!r} is not one of: {', '.join(BALANCING)}")
        if self.epochs < 1 or self.batch_size < 2 or not self.lr > 0:
            raise ConfigError(
                f"need epochs >= 1, batch_size >= 2 and lr > 0 "
                f"(got {self.epochs}, {self.batch_size}, {self.lr})"
            )
        if not self.crops_memory_mb > 0:
            raise ConfigError(f"crops_memory_mb must be > 0, got {self.crops_memory_mb}")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")

    @classmethod
    def from_mapping(cls, values: dict[str, Any], recipe: str = "default") -> TrainingOptions:
        """Options of ``recipe`` (``default`` or ``study``) changed by ``values``.

        Unknown keys raise :class:`ConfigError` listing the known ones.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if recipe not in RECIPES:
            raise ConfigError(f"recipe={recipe!r} is not one of: {', '.join(RECIPES)}")
        return cls.study(**values) if recipe == "study" else cls(**values)


@dataclass(frozen=True)
class DemoOptions:
    """The simulated input of a demo run (``epikit run`` without an input folder)."""

    fields: int = 10
    size: int = 256
    min_nuclei: int = 10
    max_nuclei: int = 18
    effect: str = "periphery"
    effect_channel: str = "H3K27ac"
    effect_size: float = 0.5


@dataclass(frozen=True)
class ReadOptions:
    """How input files become images (``-p read.key=value``; see :mod:`epikit.io.discover`).

    ``z``: Z-stack projection, ``max`` | ``mean`` | ``best`` (sharpest plane of the nuclear
    channel) | a plane index (``--z``); ``pixel_size_um``: micrometres per pixel for every
    field, 0 = from the files' metadata (``--pixel-size``); ``pattern``: file-name pattern of
    per-channel files (``--pattern '{well}_{field}_w{channel}.tif'``); ``layout``: CSV
    mapping wells to conditions (``--layout``, needed for plates).
    """

    z: str = "max"
    pixel_size_um: float = 0.0
    pattern: str = ""
    layout: str = ""

    def __post_init__(self) -> None:
        if not self.pixel_size_um >= 0:
            raise ConfigError(f"pixel size must be a positive number of micrometres (or 0: from the "
                              f"files), got {self.pixel_size_um}")


def per_run(default: Any = None, *, factory: Any = None) -> Any:
    """A per-run option field (see :data:`PER_RUN`): not in the config table, not in fingerprints."""
    if factory is not None:
        return field(default_factory=factory, metadata={PER_RUN: True})
    return field(default=default, metadata={PER_RUN: True})


def plugin_params() -> Any:
    """The ``params`` field of a plugin stage: keyword parameters of its plugin's factory."""
    return field(default_factory=dict)


@dataclass(frozen=True)
class SegmentOptions:
    """The segment stage: which segmenter, and the channel it segments.

    Per run: ``images`` (the discovered input) and ``overwrite`` (segment again where a mask
    made with other settings exists, instead of refusing).
    """

    segmenter: str = "maskrcnn"
    nuclear_channel: int | str = 0
    params: dict[str, Any] = plugin_params()
    images: tuple[ImageRecord, ...] = per_run(())
    overwrite: bool = per_run(False)


@dataclass(frozen=True)
class ExtractOptions:
    """The extract stage: how each nucleus is cut out (see :func:`epikit.extraction.extract_cells`),
    and ``n_shells``, the number of concentric shells of the shell features.

    ``ring_width_um`` > 0 adds rings of that fixed width from the nuclear edge inwards to the
    features (see :func:`epikit.nuclei.shells.ring_regions`; needs the pixel size).
    Per run: ``images`` (the discovered input), ``masks`` (their label images; None: the run
    folder's ``masks/``) and ``features`` (measure per-cell features).
    """

    crop_size: int = 64
    keep_context: bool = False
    scale: str = "fit"
    align: str = "none"
    normalise: str = "image"
    min_area: int = 30
    max_area: int = 0
    ring_width_um: float = 0.0
    n_shells: int = 5
    images: tuple[ImageRecord, ...] = per_run(())
    masks: str | None = per_run(None)
    features: bool = per_run(True)


@dataclass(frozen=True)
class TrainOptions:
    """The train stage: classifier, split and views; epochs, batch size and rate from :class:`TrainingOptions`.

    ``params`` go to the classifier, except keys naming a :class:`TrainingOptions` field (or
    ``recipe``), which go to the training loop. Per run: ``seed`` and ``device``.
    """

    classifier: str = "resnet10"
    folds: int = 5
    split: str = "group"
    epochs: int = TrainingOptions.epochs
    batch_size: int = TrainingOptions.batch_size
    lr: float = TrainingOptions.lr
    views: tuple[str, ...] = ("all",)
    params: dict[str, Any] = plugin_params()
    seed: int = per_run(0)
    device: str | None = per_run(None)


@dataclass(frozen=True)
class ExplainOptions:
    """The explain stage: which explainer, which cells (at most ``max_cells`` per condition, 0: all), which class.

    ``target`` (see :mod:`epikit.analysis.targets`): ``contrast`` (default) explains every
    compared cell for one class, the non-reference condition's (with more conditions, each
    against ``reference`` with its own target); ``own`` explains each cell for its own
    condition (the study's policy, with ``cells="correct"``); ``predicted`` for its predicted
    class; or a class name. ``cells``: ``all`` out-of-fold test cells (default: chosen without
    looking at correctness), ``correct`` or ``misclassified``. ``reference``: ``""`` takes the
    biomarkers stage's, else the lowest dose, else a control-like name, else the first.
    Per run: ``seed`` (of the cell choice), ``views`` (None: every trained view) and ``device``.
    """

    explainer: str = "scorecam"
    cells: str = "all"
    max_cells: int = 60
    target: str = "contrast"
    reference: str = ""
    params: dict[str, Any] = plugin_params()
    seed: int = per_run(0)
    views: tuple[str, ...] | None = per_run(None)
    device: str | None = per_run(None)


@dataclass(frozen=True)
class BiomarkerOptions:
    """The biomarkers stage: reference condition ("" picks one), finding threshold ``alpha``, the
    image-level test, the shell definition, the target-swap control of map findings, trust
    checks and their sizes (see :func:`epikit.biomarker_stage.biomarker_run`).

    Radial profiles (:mod:`epikit.radial_biomarkers`): ``profile_bins`` bins from the outline
    to the centre (and of ``profile_bin_um`` micrometres when the pixel size is known),
    ``profile_resamples`` bootstrap replicates and permutations.
    The design (:mod:`epikit.analysis.design`): the unit is the highest level with at least
    ``min_units`` units per condition, tested with ``unit_test`` when above the image;
    ``overall_test`` (kruskal or f) across three or more conditions; ``model="mixed"`` adds a
    linear mixed model per quantity (statsmodels; variance components and ICC).
    Per run: ``seed``.
    """

    reference: str = ""
    alpha: float = 0.05
    image_test: str = "permutation"
    shell_method: str = "scaled"
    target_swap: bool = True
    trust: bool = True
    trust_cells: int = 24
    control_epochs: int = 6
    profile_bins: int = 20
    profile_bin_um: float = 0.25
    profile_resamples: int = 1000
    min_units: int = 3
    unit_test: str = "ttest"
    overall_test: str = "kruskal"
    model: str = "means"
    seed: int = per_run(0)


@dataclass(frozen=True)
class ReportOptions:
    """The report stage."""

    enabled: bool = True


@dataclass(frozen=True)
class PowerOptions:
    """``epikit power``: the feature, the effect to detect (None: the detectable effect at
    ``power``), the grid of replicates per condition x images per replicate, and the simulation."""

    feature: str = "H3K27ac:rim_vs_centre"
    effect: float | None = None
    replicates: tuple[int, ...] = (1, 2, 3, 4, 6)
    images: tuple[int, ...] = (2, 3, 4, 6, 8)
    alpha: float = 0.05
    power: float = 0.8
    simulations: int = 2000
    min_units: int = 3
    seed: int = 0


@dataclass(frozen=True)
class CompareOptions:
    """``epikit compare``: the compared feature and its statistics, and the size guard.

    ``feature``: ``CHANNEL:REGION`` whose effect every specification estimates, for the
    image channel and for the maps (``""``: ``rim_vs_centre`` of the first non-nuclear
    channel); ``condition``: compared with the reference (``""``: the first other condition);
    ``resamples``: image-level bootstrap replicates of each interval; ``permutations``: of the
    joint test (exact when fewer relabellings exist); ``max_runs``: refuse larger grids.
    """

    feature: str = ""
    condition: str = ""
    resamples: int = 2000
    permutations: int = 2000
    alpha: float = 0.05
    max_runs: int = 32

    def __post_init__(self) -> None:
        if self.resamples < 100 or self.permutations < 20 or self.max_runs < 1:
            raise ConfigError(f"need resamples >= 100, permutations >= 20 and max_runs >= 1 "
                              f"(got {self.resamples}, {self.permutations}, {self.max_runs})")


#: The options of each stage, in the order the stages run (plus the demo input).
STAGE_OPTIONS: dict[str, type] = {
    "segment": SegmentOptions,
    "extract": ExtractOptions,
    "train": TrainOptions,
    "explain": ExplainOptions,
    "biomarkers": BiomarkerOptions,
    "report": ReportOptions,
}


def table_fields(options: type | Any) -> list[dataclasses.Field[Any]]:
    """The fields of an options dataclass that its config table holds (per-run fields left out)."""
    return [f for f in dataclasses.fields(options) if not f.metadata.get(PER_RUN)]


def option_values(options: Any) -> dict[str, Any]:
    """An options dataclass's config table as a plain dict (tuples as lists, as TOML and JSON hold them)."""
    return {f.name: list(value) if isinstance(value := getattr(options, f.name), tuple) else value
            for f in table_fields(options)}


def options_from_table(options: type, table: dict[str, Any], **per_run_values: Any) -> Any:
    """Build ``options`` from its config table (lists back to tuples) plus per-run values."""
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in table.items()}
    return options(**values, **per_run_values)
