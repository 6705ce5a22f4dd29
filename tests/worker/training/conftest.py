"""Fixtures of the training tests (helpers to import live in training_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("model_cache")
