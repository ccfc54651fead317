"""The examples in examples/ run on tiny settings, so they never rot."""

from __future__ import annotations

import importlib.util
import sys

from pathlib import Path

import numpy as np
import torch

from epikit.config import load_config, tomllib
from epikit.plugins import build_plugin_manager
from epikit.registry import get_explainer, list_explainers, use_registry

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_walkthrough_runs_and_draws_its_plot(tmp_path):
    walkthrough = _load(EXAMPLES / "walkthrough.py", "epikit_walkthrough")
    figure = walkthrough.main(tmp_path, tiny=True)
    assert figure.stat().st_size > 1000
    assert (tmp_path / "run" / "report.html").exists()


def test_annotated_config_is_valid_and_runnable(tmp_path):
    from epikit.pipeline import run_pipeline

    config = load_config(EXAMPLES / "run.toml")
    assert config["segment"]["params"] == {"min_area": 40}
    manifest = run_pipeline(config, tmp_path / "run", progress=False, stop_after="extract")
    assert manifest["stages"]["extract"]["n_cells"] > 0


def test_example_plugin_registers_a_working_explainer():
    project = tomllib.loads((EXAMPLES / "epikit-example-plugin" / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["epikit"] == {"gradient_x_input": "epikit_example_plugin"}
    plugin = _load(EXAMPLES / "epikit-example-plugin" / "epikit_example_plugin.py", "epikit_example_plugin")
    with use_registry(build_plugin_manager((plugin,), load_entry_points=False)):
        assert "gradient-x-input" in list_explainers()
        explainer = get_explainer("gradient-x-input", batch_size=3)
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(4 * 16 * 16, 2))
        crops = torch.zeros(5, 2, 16, 16)
        crops[:, :, 4:12, 4:12] = torch.rand(5, 2, 8, 8) + 0.5
        maps = explainer.explain(model, crops, torch.tensor([0, 1, 0, 1, 1]))
    assert maps.shape == (5, 16, 16)
    assert float(maps.min()) >= 0 and np.allclose(maps.flatten(1).amax(1).numpy(), 1)
    assert float(maps[:, :4, :].abs().sum()) == 0  # no saliency where the input is zero


def test_example_plugin_passes_the_shipped_contract_tests(epikit_registry, epikit_tiny_model, epikit_tiny_crops):
    from epikit.testing import check_explainer

    plugin = _load(EXAMPLES / "epikit-example-plugin" / "epikit_example_plugin.py", "epikit_example_plugin")
    crops, targets = epikit_tiny_crops
    with epikit_registry(load_entry_points=False):
        without = set(list_explainers())
    with epikit_registry(plugin, load_entry_points=False):
        assert set(list_explainers()) - without == {"gradient-x-input"}
        for name in list_explainers():
            check_explainer(get_explainer(name), epikit_tiny_model, crops, targets)
