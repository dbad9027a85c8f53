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
