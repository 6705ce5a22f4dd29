"""The OpenAPI document promises no more than the server takes: a paginated list's `limit` is
bounded by this server's page size, and each list's cursor parameter has the format of the
cursors that list returns, so what the document refuses is what the server refuses (422).
schemathesis (test_openapi_fuzz.py) checks the other direction: what the document allows, the
server answers without a 5xx."""

from __future__ import annotations

import re

import pytest

LISTS = {
    "/v1/jobs": "job",
    "/v1/jobs/{job_id}/prompts": "int",
    "/v1/jobs/{job_id}/rollouts": "rollout",
    "/v1/jobs/{job_id}/checkpoints": "int",
}


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"page_size_max": 3})


def _query(schema: dict, path: str) -> dict[str, dict]:
    operation = schema["paths"][path]["get"]
    return {p["name"]: p["schema"] for p in operation["parameters"] if p["in"] == "query"}


def _integer(schema: dict) -> dict:
    return next(b for b in schema.get("anyOf", [schema]) if b.get("type") == "integer")


def _string(schema: dict) -> dict:
    return next(b for b in schema.get("anyOf", [schema]) if b.get("type") == "string")


def test_a_list_limit_is_bounded_by_the_page_size_as_the_server_bounds_it(
    client, admin, job_body
) -> None:
    schema = client.get("/openapi.json").json()
    job = client.post("/v1/jobs", json=job_body(), headers=admin).json()["id"]
    for path in LISTS:
        assert _integer(_query(schema, path)["limit"])["maximum"] == 3, path
        url = path.format(job_id=job)
        assert client.get(url, params={"limit": 3}, headers=admin).status_code == 200, path
        assert client.get(url, params={"limit": 4}, headers=admin).status_code == 422, path
    # Metrics have their own bound, not the page size.
    points = _integer(_query(schema, "/v1/jobs/{job_id}/metrics")["limit"])
    assert points["maximum"] > 3


def test_each_cursor_format_is_the_lists_own(client, admin, job_body) -> None:
    schema = client.get("/openapi.json").json()
    ids = [client.post("/v1/jobs", json=job_body(), headers=admin).json()["id"] for _ in range(4)]
    page = client.get("/v1/jobs", params={"limit": 3}, headers=admin).json()
    returned = {"job": page["next_cursor"], "int": "12", "rollout": "1.0.2"}
    refused_by_server = {"job": None, "int": "1.0.2", "rollout": "7"}
    assert returned["job"] in ids
    for path, kind in LISTS.items():
        pattern = _string(_query(schema, path)["cursor"])["pattern"]
        assert re.fullmatch(pattern, returned[kind]), (path, pattern)
        for bad in ("abc", "1;DROP", refused_by_server[kind]):
            if bad is None:
                continue
            assert not re.fullmatch(pattern, bad), (path, bad)
            url = path.format(job_id=ids[0])
            assert client.get(url, params={"cursor": bad}, headers=admin).status_code == 422
