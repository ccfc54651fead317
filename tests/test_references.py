"""One reference condition for explain and biomarkers, and a default reference that follows dose.

Contrast maps pair each condition with the reference explain chose; biomarkers compared with
another reference would find no maps to compare, silently. The pipeline gives explain the
biomarkers' reference and the biomarkers stage refuses maps explained against another one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from epikit.analysis.stats import choose_reference, condition_doses
from epikit.biomarker_stage import biomarker_run
from epikit.config import default_config, merge_config
from epikit.errors import ConfigError
from epikit.explanation import explain_run
from epikit.pipeline import resolve_references, stage_options
from tiny_runs import build_tiny_run

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_an_empty_explain_reference_follows_the_biomarkers_one():
    config = merge_config(default_config(), {"biomarkers": {"reference": "vpa"}})
    resolved = resolve_references(config)
    assert stage_options("explain", resolved, []).reference == "vpa"
    assert config["explain"]["reference"] == ""  # what was asked stays as asked
    own = merge_config(config, {"explain": {"reference": "vpa"}})
    assert resolve_references(own)["explain"]["reference"] == "vpa"
    assert resolve_references(default_config())["explain"]["reference"] == ""


def test_explain_and_biomarkers_references_that_differ_are_refused_before_any_work():
    config = merge_config(default_config(), {"biomarkers": {"reference": "vpa"}, "explain": {"reference": "ctrl"}})
    with pytest.raises(ConfigError, match="explain.reference 'ctrl' differs from biomarkers.reference 'vpa'"):
        resolve_references(config)
    # A single-class target pairs nothing with the reference: nothing to tie together.
    single = merge_config(config, {"explain": {"target": "vpa"}})
    assert resolve_references(single)["explain"]["reference"] == "ctrl"


def test_biomarkers_refuse_contrast_maps_explained_against_another_reference(tmp_path):
    run = build_tiny_run(tmp_path, n_fields=2, epochs=1)
    explain_run(run, "gradcam", max_cells=4, reference="ctrl", progress=False)
    with pytest.raises(ConfigError, match="explained against reference 'ctrl'.*--reference vpa") as error:
        biomarker_run(run, reference="vpa", trust=False, target_swap=False)
    assert "\n" not in str(error.value)


def test_the_default_reference_is_the_lowest_dose():
    conditions = ["vehicle", "low", "high"]
    assert choose_reference(conditions) == "high"  # alphabetical first: why doses must count
    assert choose_reference(conditions, doses={"vehicle": 0.0, "low": 1.0, "high": 3.0}) == "vehicle"
    assert choose_reference(conditions, "low", doses={"vehicle": 0.0, "low": 1.0, "high": 3.0}) == "low"
    # several at the lowest dose: the control-like one among them, else ask for a name
    assert choose_reference(["DMSO", "mock_b", "vpa"], doses={"DMSO": 0, "mock_b": 0, "vpa": 2}) == "DMSO"
    with pytest.raises(ConfigError, match="conditions a, b share the lowest dose 0; name the reference"):
        choose_reference(["a", "b", "c"], doses={"a": 0.0, "b": 0.0, "c": 1.0})
    table = pd.DataFrame({"condition": ["high", "high", "low", "vehicle"], "dose": [3.0, 4.0, 1.0, np.nan]})
    assert condition_doses(table) == {"high": 3.0, "low": 1.0}
    assert condition_doses(table.drop(columns="dose")) is None


def test_explain_and_biomarkers_default_to_the_lowest_dose_of_the_cells(tmp_path):
    run = build_tiny_run(tmp_path, n_fields=2, epochs=1)
    cells = pd.read_parquet(run / "cells.parquet")
    cells["dose"] = np.where(cells["condition"] == "vpa", 0.0, 1.0)  # vpa is the vehicle here
    cells.to_parquet(run / "cells.parquet")
    summary = explain_run(run, "gradcam", max_cells=4, progress=False)
    assert summary["reference"] == "vpa" and summary["views"]["all"]["per_target"] == {"ctrl": 8}
    assert biomarker_run(run, trust=False, target_swap=False)["reference"] == "vpa"
