"""The SDK's shape: `AsyncClient` mirrors `Client` method for method, and every resource method
maps to a REST route of the real app (no SDK method points at a path the server lacks)."""

from __future__ import annotations

import inspect
import re

import keel

RESOURCES = (
    "jobs",
    "prompts",
    "files",
    "rollouts",
    "rewards",
    "metrics",
    "checkpoints",
    "keys",
    "health",
)


def _public_methods(obj) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(obj, callable)
        if not name.startswith("_")
    }


def test_async_client_mirrors_the_sync_client():
    sync, async_ = keel.Client(api_key="k"), keel.AsyncClient(api_key="k")
    for resource in RESOURCES:
        sync_methods = _public_methods(getattr(sync, resource))
        async_methods = _public_methods(getattr(async_, resource))
        assert sync_methods.keys() == async_methods.keys(), resource
        for name, signature in sync_methods.items():
            assert signature.parameters.keys() == async_methods[name].parameters.keys(), name
            method = getattr(getattr(async_, resource), name)
            assert inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method), name


def test_the_rest_resources_each_have_an_sdk_resource(app):
    """Every `/v1/<resource>` prefix of the app is reachable from a client attribute."""
    client = keel.Client(api_key="k")
    prefixes = {
        m.group(1)
        for route in app.routes
        if (m := re.match(r"^/v1/(\w+)", getattr(route, "path", "")))
    }
    served_by = {"whoami": "keys", "rollouts": "rollouts", "rewards": "rewards"}
    for prefix in prefixes:
        assert hasattr(client, served_by.get(prefix, prefix)), prefix


def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("KEEL_BASE_URL", "http://keel.example:9000/")
    monkeypatch.setenv("KEEL_API_KEY", "keel_sk_from_env")
    client = keel.Client()
    assert client.base_url == "http://keel.example:9000"
    assert client._transport.config.headers()["Authorization"] == "Bearer keel_sk_from_env"
    explicit = keel.Client(base_url="http://other:1", api_key="explicit")
    assert explicit.base_url == "http://other:1"
    assert explicit._transport.config.headers()["Authorization"] == "Bearer explicit"
