"""Third-party plugins reach epikit through the ``epikit`` entry-point group.

``plugins/epikit-sam`` is installed (``pip install -e plugins/epikit-sam``) by the test
setup; these tests find it the way users' plugins are found. A throwaway distribution made
in a temporary folder stands in for a broken third-party plugin.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import warnings
from importlib import metadata
from pathlib import Path

import pytest

from epikit.errors import PluginError
from epikit.plugins import PluginWarning, build_plugin_manager
from epikit.registry import get_entry, use_registry

BROKEN_DIST = "broken-epikit-demo"


@pytest.fixture(autouse=True)
def plugin_env(monkeypatch):
    """Every test starts with the plugin switches unset."""
    monkeypatch.delenv("EPIKIT_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("EPIKIT_STRICT_PLUGINS", raising=False)


def test_sam_is_in_the_epikit_entry_point_group():
    found = [ep for ep in metadata.entry_points(group="epikit") if ep.name == "sam"]
    assert found, "epikit-sam is not installed: pip install -e plugins/epikit-sam"
    (entry_point,) = found
    assert entry_point.value == "epikit_sam.plugin"
    assert entry_point.dist.name == "epikit-sam"


def test_plugin_manager_lists_sam_with_its_distribution_and_version():
    registry = build_plugin_manager()
    entry = registry.entries["segmenter"]["sam"]
    assert entry.provenance() == {
        "kind": "segmenter",
        "name": "sam",
        "plugin": "sam",
        "distribution": "epikit-sam",
        "version": metadata.version("epikit-sam"),
    }
    assert entry.factory == "epikit_sam.segmenter:SAMSegmenter", "the factory stays lazy"
    assert "checkpoint" in entry.summary
    with use_registry(registry):
        assert get_entry("segmenter", "sam") is entry


@pytest.mark.parametrize(
    ("allow", "loaded"),
    [("", False), ("epikit-sam", True), ("sam", True), ("some-other-plugin", False),
     ("some-other-plugin, epikit-sam", True)],
)
def test_load_plugins_allow_list(monkeypatch, allow, loaded):
    monkeypatch.setenv("EPIKIT_LOAD_PLUGINS", allow)
    registry = build_plugin_manager()
    assert ("sam" in registry.entries["segmenter"]) is loaded
    assert registry.manager.get_plugin("epikit.segmenters") is not None, "built-ins always load"


def test_epikit_plugins_json_lists_sam_without_importing_torch():
    script = textwrap.dedent(
        """
        import sys
        from epikit.cli import app
        try:
            app(["plugins", "--json"], standalone_mode=False)
        finally:
            heavy = sorted(m for m in ("torch", "segment_anything", "epikit_sam.segmenter")
                           if m in sys.modules)
            sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPIKIT_")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stderr, result.stderr
    rows = json.loads(result.stdout)
    sam = [row for row in rows if row["name"] == "sam"]
    assert sam and sam[0]["kind"] == "segmenter"
    assert sam[0]["distribution"] == "epikit-sam"
    assert sam[0]["version"] == metadata.version("epikit-sam")


def make_distribution(root: Path, module_source: str) -> None:
    """Write a minimal installed distribution: a module and its ``*.dist-info`` folder."""
    module = "broken_epikit_demo"
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / "broken_epikit_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {BROKEN_DIST}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[epikit]\nbroken = {module}\n")


BROKEN_PLUGINS = {
    "raises on import": """
        raise RuntimeError("this plugin cannot be imported")
    """,
    "hook raises": """
        from epikit.hookspecs import hookimpl

        @hookimpl
        def epikit_register_segmenters(register):
            raise RuntimeError("this plugin fails while registering")
    """,
    "misspelled hook": """
        from epikit.hookspecs import hookimpl

        @hookimpl
        def epikit_register_segmentors(register):
            register("never", "os:getcwd")
    """,
}


@pytest.fixture(params=sorted(BROKEN_PLUGINS))
def broken_plugin(request, tmp_path, monkeypatch):
    """A broken third-party plugin on ``sys.path`` for one test."""
    make_distribution(tmp_path, BROKEN_PLUGINS[request.param])
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert any(ep.name == "broken" for ep in metadata.entry_points(group="epikit"))
    yield request.param
    sys.modules.pop("broken_epikit_demo", None)
    importlib.invalidate_caches()


def test_a_broken_plugin_is_skipped_with_a_warning_naming_it(broken_plugin):
    with pytest.warns(PluginWarning, match=f"broken.*{BROKEN_DIST}") as caught:
        registry = build_plugin_manager()
    assert "EPIKIT_STRICT_PLUGINS" in str(caught[0].message)
    assert "sam" in registry.entries["segmenter"], "a broken plugin does not take others down"
    assert "never" not in registry.entries["segmenter"]


def test_strict_mode_makes_a_broken_plugin_fatal(broken_plugin, monkeypatch):
    monkeypatch.setenv("EPIKIT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=f"broken.*{BROKEN_DIST}.*EPIKIT_STRICT_PLUGINS=1"):
        build_plugin_manager()


def test_a_broken_plugin_left_out_of_the_allow_list_is_not_loaded(broken_plugin, monkeypatch):
    monkeypatch.setenv("EPIKIT_LOAD_PLUGINS", "epikit-sam")
    monkeypatch.setenv("EPIKIT_STRICT_PLUGINS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        registry = build_plugin_manager()
    assert "sam" in registry.entries["segmenter"]
