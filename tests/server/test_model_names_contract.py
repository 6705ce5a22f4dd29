"""The API validates model names without importing the worker; its list must equal the
worker's built-in models, including which of them are Mixture-of-Experts."""

from __future__ import annotations

import pytest

from keel_server.platform.model_access import BUILTIN_MODELS


def test_builtin_model_names_match_the_worker() -> None:
    models = pytest.importorskip("keel_worker.engines.models")
    assert set(BUILTIN_MODELS) == set(models.BUILTIN_MODELS)


def test_builtin_moe_flags_match_the_worker(tmp_path) -> None:
    models = pytest.importorskip("keel_worker.engines.models")
    for name in ("tiny-dense", "tiny-moe", "tiny-moe-deep"):
        loaded = models.load_model(name, cache_dir=tmp_path)
        assert models.is_moe_model(loaded.model) is BUILTIN_MODELS[name], name
