"""Shared pytest fixtures for epikit's tests."""

from __future__ import annotations

import os

import pytest

# The shipped pytest plugin (its pytest11 entry point registers it once epikit is installed;
# listed here so a source checkout without reinstalling has it too).
pytest_plugins = ["epikit.testing"]

# Tests run on two CPU cores: keep torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def fresh_registry():
    """A newly built plugin registry made current for one test, restored afterwards."""
    from epikit.plugins import build_plugin_manager
    from epikit.registry import use_registry

    with use_registry(build_plugin_manager()) as registry:
        yield registry


@pytest.fixture
def single_torch_thread():
    """Run torch on one thread for one test: small convolutions are faster so, above all on
    the busy shared 2-core machine, where two OpenMP threads often wait on each other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
