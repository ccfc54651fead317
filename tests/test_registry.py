"""Registry behaviour: registration, lookups, suggestions, duplicates, provenance."""

from __future__ import annotations

import types
import warnings

import pytest

import epikit
from epikit.errors import ConfigError, DuplicatePluginError, PluginError, UnknownPluginError
from epikit.plugins import build_plugin_manager, epikit_version
from epikit.registry import describe, get_entry, list_entries, use_registry


class ThresholdSegmenter:
    """A minimal real segmenter used as a test plugin."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def segment(self, image, nuclear_channel=0):
        from scipy import ndimage

        labels, _ = ndimage.label(image[nuclear_channel] > self.threshold)
        return labels.astype("int32")


def make_plugin(name: str, *registrations: tuple[str, object]) -> types.ModuleType:
    """A throwaway plugin module registering ``registrations`` as segmenters."""
    module = types.ModuleType(name)

    @epikit.hookimpl
    def epikit_register_segmenters(register):
        for entry_name, factory in registrations:
            register(entry_name, factory, summary=f"{entry_name} from {name}")

    module.epikit_register_segmenters = epikit_register_segmenters
    module.__version__ = "9.9"
    return module


def test_plugin_registered_for_one_test_is_built_and_listed():
    plugin = make_plugin("threshold_plugin", ("threshold", ThresholdSegmenter))
    with use_registry(build_plugin_manager((plugin,))):
        assert "threshold" in epikit.list_segmenters()
        assert epikit.list_segmenters("thr*") == ["threshold"]
        assert epikit.list_segmenters("nomatch*") == []
        segmenter = epikit.get_segmenter("threshold", threshold=0.1)
        import numpy as np

        image = np.zeros((1, 20, 20), np.float32)
        image[0, 2:6, 2:6] = 1
        image[0, 10:15, 10:15] = 1
        labels = segmenter.segment(image)
        assert labels.dtype == np.int32 and labels.max() == 2
    assert "threshold" not in epikit.list_segmenters()


def test_unknown_name_suggests_close_match_and_lists_available():
    plugin = make_plugin("p", ("maskrcnn-test", ThresholdSegmenter), ("watershed-test", ThresholdSegmenter))
    with use_registry(build_plugin_manager((plugin,), load_entry_points=False)):
        with pytest.raises(UnknownPluginError) as info:
            epikit.get_segmenter("maskrcn-test")
    message = str(info.value)
    assert "did you mean 'maskrcnn-test'?" in message
    assert "available:" in message and "watershed-test" in message
    assert not isinstance(info.value, KeyError)
    assert not message.startswith("'")


def test_duplicate_name_raises_naming_both_providers():
    first = make_plugin("first_provider", ("dup", ThresholdSegmenter))
    second = make_plugin("second_provider", ("dup", ThresholdSegmenter))
    with pytest.raises(DuplicatePluginError) as info:
        build_plugin_manager((first, second), load_entry_points=False)
    assert "first_provider" in str(info.value) and "second_provider" in str(info.value)


@pytest.mark.parametrize("bad_name", ["Upper", "9lives", "has space", ""])
def test_invalid_names_skip_the_whole_plugin_or_fail_in_strict_mode(bad_name, monkeypatch):
    plugin = make_plugin("bad_names", ("good", ThresholdSegmenter), (bad_name, ThresholdSegmenter))
    with pytest.warns(UserWarning, match="invalid segmenter name"):
        registry = build_plugin_manager((plugin,), load_entry_points=False)
    assert "good" not in registry.entries["segmenter"]
    monkeypatch.setenv("EPIKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="invalid segmenter name"):
        build_plugin_manager((plugin,), load_entry_points=False)


def test_provenance_records_plugin_and_version():
    plugin = make_plugin("provenance_plugin", ("prov", ThresholdSegmenter))
    with use_registry(build_plugin_manager((plugin,), load_entry_points=False)):
        entry = get_entry("segmenter", "prov")
        assert entry.provenance() == {
            "kind": "segmenter", "name": "prov", "plugin": "provenance_plugin",
            "distribution": "local", "version": "9.9",
        }
        info = describe("segmenter", "prov")
        assert info["parameters"] == {"threshold": 0.5}
        assert info["summary"] == "prov from provenance_plugin"


def test_builtins_are_provided_by_epikit(fresh_registry):
    for kind in ("segmenter", "classifier", "explainer"):
        for entry in list_entries(kind):
            if entry.plugin.startswith("epikit."):
                assert entry.distribution == "epikit"
                assert entry.version == epikit_version()


def test_unknown_parameter_is_a_config_error_listing_accepted():
    plugin = make_plugin("params_plugin", ("withparams", ThresholdSegmenter))
    with use_registry(build_plugin_manager((plugin,), load_entry_points=False)):
        with pytest.raises(ConfigError, match="accepted parameters: threshold"):
            epikit.get_segmenter("withparams", thresh=0.3)


def test_lazy_string_factory_is_resolved_on_use():
    plugin = make_plugin("lazy_plugin", ("lazy", "collections:OrderedDict"),
                         ("missing", "no_such_module_xyz:Thing"))
    with use_registry(build_plugin_manager((plugin,), load_entry_points=False)):
        from collections import OrderedDict

        assert isinstance(epikit.get_segmenter("lazy"), OrderedDict)
        with pytest.raises(PluginError, match="no_such_module_xyz"):
            epikit.get_segmenter("missing")


def test_misspelled_hook_name_is_caught():
    module = types.ModuleType("typo_plugin")

    @epikit.hookimpl
    def epikit_register_segmenter(register):  # missing the final "s"
        pass

    module.epikit_register_segmenter = epikit_register_segmenter
    import pluggy

    with pytest.raises(pluggy.PluginValidationError):
        build_plugin_manager((module,), load_entry_points=False)


def test_broken_hook_in_third_party_plugin_is_skipped_with_warning(monkeypatch):
    module = types.ModuleType("raising_plugin")

    @epikit.hookimpl
    def epikit_register_segmenters(register):
        raise RuntimeError("boom")

    module.epikit_register_segmenters = epikit_register_segmenters
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_plugin_manager((module,), load_entry_points=False)
    assert any("raising_plugin" in str(w.message) and "boom" in str(w.message) for w in caught)
    monkeypatch.setenv("EPIKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="raising_plugin"):
        build_plugin_manager((module,), load_entry_points=False)


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown plugin kind"):
        list_entries("segmentor")


def test_cli_reports_errors_on_one_line():
    from typer.testing import CliRunner

    from epikit.cli import app

    result = CliRunner().invoke(app, ["plugins", "--kind", "segmentor"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown plugin kind 'segmentor'; use one of: segmenter, classifier, explainer"]
