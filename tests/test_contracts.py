"""Every registered classifier and explainer keeps the plugin contract (epikit.interfaces).

Parametrised over whatever is registered, third-party plugins included, with the checks and
fixtures of the shipped pytest plugin (epikit.testing). Segmenters are contract-tested the
same way in tests/test_segmenters.py (some need tiny weights built there).
"""

from __future__ import annotations

import inspect

import pytest

import epikit
from epikit import hookspecs
from epikit.errors import PluginError
from epikit.interfaces import OPTIONAL_ATTRIBUTES, optional_attribute
from epikit.plugins import resolve_factory
from epikit.registry import get_entry
from epikit.testing import check_classifier, check_explainer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

#: Parameters that keep a classifier cheap to build in a contract test (by parameter, not by name).
CHEAP = {"arch": "resnet18"}


@pytest.mark.parametrize("name", epikit.list_classifiers())
def test_every_classifier_keeps_the_contract(name: str) -> None:
    entry = get_entry("classifier", name)
    accepted = inspect.signature(resolve_factory(entry.factory)).parameters
    params = {k: v for k, v in CHEAP.items() if k in accepted}
    check_classifier(lambda *a, **p: epikit.get_classifier(name, *a, **p), 3, 2, 64, **params)


@pytest.mark.parametrize("name", epikit.list_explainers())
def test_every_explainer_keeps_the_contract(name: str, epikit_tiny_model, epikit_tiny_crops) -> None:
    crops, targets = epikit_tiny_crops
    check_explainer(epikit.get_explainer(name), epikit_tiny_model, crops, targets)


def test_the_host_reads_only_declared_attributes() -> None:
    with pytest.raises(PluginError, match="not an optional explainer attribute"):
        optional_attribute(object(), "explainer", "weights")
    assert optional_attribute(object(), "explainer", "info", {}) == {}


def test_every_hook_is_documented_with_an_example() -> None:
    hooks = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("epikit_")]
    assert {f.__name__ for f in hooks} == {f"epikit_register_{kind}s" for kind in OPTIONAL_ATTRIBUTES}
    for hook in hooks:
        doc = inspect.getdoc(hook) or ""
        assert "register(" in doc and "@epikit.hookimpl" in doc, f"{hook.__name__} needs an example"


def test_the_shipped_segmenter_check_accepts_a_builtin(epikit_tiny_field) -> None:
    from epikit.testing import check_segmenter

    assert check_segmenter(epikit.get_segmenter("watershed"), epikit_tiny_field) > 0
