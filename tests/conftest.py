"""Shared fixtures: a tiny Llama built from a config, token data, quiet Trainer output."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def tiny_model():
    from optim_registry.testing import tiny_model

    return tiny_model()


@pytest.fixture
def token_data():
    from optim_registry.testing import TokenDataset

    return TokenDataset()


# -- one sweep, no optimizer twice ----------------------------------------------------------------------
# A family test marked ``harness`` runs ``optim_registry.testing.check_optimizer`` (exact resume included)
# on the names it names (or on its ``name`` parameter), with options chosen for that family. The registry-wide
# sweep in tests/test_resume_all.py leaves those names to it when both are collected in one run; run alone,
# the sweep still checks every name.
_SWEEP = "test_resume_all.py::test_exact_resume"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "harness(*names): the test runs check_optimizer (exact resume included) on these names, or on its `name` "
        "parameter; tests/test_resume_all.py does not sweep them again",
    )


def harnessed_names(items) -> dict[str, str]:
    """Optimizer name -> the family test that runs the whole harness on it."""
    covered: dict[str, str] = {}
    for item in items:
        mark = item.get_closest_marker("harness")
        if mark is None:
            continue
        names = mark.args or (item.callspec.params["name"],)
        for name in names:
            covered.setdefault(name, item.nodeid)
    return covered


def pytest_collection_modifyitems(config, items):
    covered = harnessed_names(items)
    twice = [i for i in items if _SWEEP in i.nodeid and i.callspec.params["name"] in covered]
    if twice:
        config.hook.pytest_deselected(items=twice)
        drop = set(map(id, twice))
        items[:] = [i for i in items if id(i) not in drop]
