"""Shared fixtures: the built-in tiny models (built from configs, no download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel_worker.engines.models import LoadedModel, load_model


@pytest.fixture(scope="module")
def tiny_dense(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model("tiny-dense", cache_dir=Path(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model("tiny-moe", cache_dir=Path(tmp_path_factory.mktemp("cache")))
