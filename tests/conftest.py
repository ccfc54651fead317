"""Shared pytest fixtures for epikit's tests."""

from __future__ import annotations

import os

import pytest

# Tests run on two CPU cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def fresh_registry():
    """A newly built plugin registry made current for one test, restored afterwards."""
    from epikit.plugins import build_plugin_manager
    from epikit.registry import use_registry

    with use_registry(build_plugin_manager()) as registry:
        yield registry
