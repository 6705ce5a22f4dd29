"""The API's list of MoE families keel can hook (`keel.types.routing`) names exactly the
families of the worker's router classes, checked against transformers' own modules."""

from __future__ import annotations

import importlib

import pytest

from keel.types.routing import REPLAY_MOE_MODEL_TYPES


def test_each_family_defines_exactly_one_supported_router() -> None:
    replay = pytest.importorskip("keel_worker.engines.routing_replay")
    found = []
    for model_type in REPLAY_MOE_MODEL_TYPES:
        module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
        routers = [c for c in replay.SUPPORTED_ROUTER_CLASSES if hasattr(module, c)]
        assert len(routers) == 1, (model_type, routers)
        found += routers
    assert sorted(found) == sorted(replay.SUPPORTED_ROUTER_CLASSES)


def test_the_tiny_families_are_all_supported() -> None:
    tiny = pytest.importorskip("keel_worker.engines.tiny")
    assert set(tiny.MOE_FAMILY_CONFIGS) <= set(REPLAY_MOE_MODEL_TYPES)
