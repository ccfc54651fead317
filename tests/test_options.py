"""Every stage option has one default: the options dataclasses, the config, the library and the CLI agree."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from epikit import biomarker_stage, explanation, extraction, report, segmentation
from epikit.biomarker_stage import biomarker_run
from epikit.cli.explain import biomarkers_command, explain_command
from epikit.cli.extract import extract_command
from epikit.cli.segment import segment_command
from epikit.cli.train import train_command
from epikit.config import DEFAULTS, PARAMS_KEY, PLUGIN_STAGES
from epikit.explanation import explain_run
from epikit.extraction import extract_cells
from epikit.options import PER_RUN, STAGE_OPTIONS, TrainingOptions, option_values
from epikit.pipeline import STAGE_MODULES
from epikit.segmentation import segment_images
from epikit.training import stage as train_stage
from epikit.training.stage import train_run

#: The stage modules, each with ``run(run_dir, options, *, executor, progress)``.
STAGE_FUNCTIONS = {"segment": segmentation, "extract": extraction, "train": train_stage,
                   "explain": explanation, "biomarkers": biomarker_stage, "report": report}

#: Each stage's keyword-argument library function and CLI command (None: the stage has no command of its own).
ENTRY_POINTS: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None]] = {
    "segment": (segment_images, segment_command),
    "extract": (extract_cells, extract_command),
    "train": (train_run, train_command),
    "explain": (explain_run, explain_command),
    "biomarkers": (biomarker_run, biomarkers_command),
}
#: Options a function takes under another name, or not at all, and why.
NOT_A_PARAMETER: dict[tuple[str, str], str] = {
    ("segment", "segmenter"): "the library takes a built segmenter; the CLI requires a name",
    ("train", "epochs"): "a TrainingOptions field, passed through **training",
    ("train", "batch_size"): "a TrainingOptions field, passed through **training",
    ("train", "lr"): "a TrainingOptions field, passed through **training",
}
#: CLI options whose default None means "the stage default" (the CLI passes nothing then).
CLI_NONE_MEANS_DEFAULT = {("train", "epochs"), ("train", "batch_size"), ("train", "lr"),
                          ("train", "views")}


def cases(per_run: bool = False) -> list[tuple[str, str, Any]]:
    """(stage, option, default) of every config-table option (or every per-run option), plugin params aside."""
    return [(stage, f.name, getattr(options(), f.name))
            for stage, options in STAGE_OPTIONS.items() for f in dataclasses.fields(options)
            if f.name != PARAMS_KEY and bool(f.metadata.get(PER_RUN)) == per_run]


def test_the_config_defaults_are_the_options_dataclasses() -> None:
    for stage, options in STAGE_OPTIONS.items():
        assert DEFAULTS[stage] == option_values(options())
        assert (PARAMS_KEY in DEFAULTS[stage]) == (stage in PLUGIN_STAGES)


def test_every_stage_has_the_one_stage_shape() -> None:
    assert STAGE_MODULES == {stage: module.__name__ for stage, module in STAGE_FUNCTIONS.items()}
    for module in STAGE_FUNCTIONS.values():
        parameters = inspect.signature(module.run).parameters
        assert list(parameters) == ["run_dir", "options", "executor", "progress"], module.__name__
        assert parameters["executor"].kind is inspect.Parameter.KEYWORD_ONLY
        assert (parameters["executor"].default, parameters["progress"].default) == (None, True)


def test_the_train_stage_takes_the_loops_own_defaults() -> None:
    for name in ("epochs", "batch_size", "lr"):
        assert DEFAULTS["train"][name] == getattr(TrainingOptions(), name)


@pytest.mark.parametrize(("stage", "name", "value"), cases())
def test_library_default_is_the_option_default(stage: str, name: str, value: Any) -> None:
    if stage not in ENTRY_POINTS or (stage, name) in NOT_A_PARAMETER:
        pytest.skip("no library parameter of that name")
    parameter = inspect.signature(ENTRY_POINTS[stage][0]).parameters[name]
    assert parameter.default == value


@pytest.mark.parametrize(("stage", "name", "value"), cases())
def test_cli_default_is_the_option_default(stage: str, name: str, value: Any) -> None:
    command = ENTRY_POINTS.get(stage, (None, None))[1]
    if command is None or (stage, name) in NOT_A_PARAMETER:
        pytest.skip("no CLI option of that name")
    parameters = inspect.signature(command).parameters
    if name not in parameters:
        assert (stage, name) in CLI_NONE_MEANS_DEFAULT, f"epikit {stage} has no --{name} option"
        return
    default = parameters[name].default.default  # a typer OptionInfo
    if default is None:
        assert (stage, name) in CLI_NONE_MEANS_DEFAULT, f"epikit {stage} --{name}: None, stage default {value!r}"
    else:
        # An option that takes an index or a name is a string on the command line.
        assert default == value or (isinstance(default, str) and default == str(value))


@pytest.mark.parametrize(("stage", "name", "value"), cases(per_run=True))
def test_a_cli_flag_for_a_per_run_option_has_its_default(stage: str, name: str, value: Any) -> None:
    command = ENTRY_POINTS.get(stage, (None, None))[1]
    parameters = inspect.signature(command).parameters if command is not None else {}
    if name not in parameters:
        pytest.skip("no CLI option of that name")
    assert parameters[name].default.default == value
