"""One reference condition for explain and biomarkers, and a default reference that follows dose.

Contrast maps pair each condition with the reference explain chose; biomarkers compared with
another reference would find no maps to compare, silently. The pipeline gives explain the
biomarkers' reference and the biomarkers stage refuses maps explained against another one.
"""

from __future__ import annotations

import pytest

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
