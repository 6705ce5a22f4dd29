"""Uploaded prompt files: a per-project quota (413 past it, with what is used), `DELETE` (the
row and the bytes; another project's file is not found), and a file name with a NUL refused with
a 422 before any byte is written (no orphan file), on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from keel_server.platform.settings import Settings
from keel_server.platform.storage import files_dir

QUOTA = 1000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_file_bytes_per_project": QUOTA})


def _jsonl(size: int) -> bytes:
    """A valid prompt file of exactly `size` bytes."""
    line = json.dumps({"text": "", "reference": "1"})
    pad = size - len(line) - 1
    return (json.dumps({"text": "x" * pad, "reference": "1"}) + "\n").encode()


def _upload(client, headers, content: bytes, name: str = "p.jsonl"):
    return client.post("/v1/files", files={"file": (name, content)}, headers=headers)


def _stored(settings: Settings) -> list[str]:
    folder = files_dir(settings.artifacts_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_project_keeps_files_up_to_its_quota_and_delete_frees_it(
    client, project_key, settings
) -> None:
    alpha, beta = project_key("alpha"), project_key("beta")
    first = _upload(client, alpha, _jsonl(600))
    assert first.status_code == 201, first.text
    over = _upload(client, alpha, _jsonl(600))
    assert over.status_code == 413, over.text
    assert over.json()["code"] == "payload_too_large"
    assert over.json()["state"] == {"used_bytes": 600, "quota_bytes": QUOTA}
    assert _upload(client, beta, _jsonl(600)).status_code == 201  # quotas are per project
    assert len(_stored(settings)) == 2  # the refused upload left nothing

    file_id = first.json()["id"]
    assert client.delete(f"/v1/files/{file_id}", headers=beta).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=alpha).status_code == 204
    assert client.delete(f"/v1/files/{file_id}", headers=alpha).status_code == 404
    assert f"{file_id}.jsonl" not in _stored(settings)
    again = _upload(client, alpha, _jsonl(600))
    assert again.status_code == 201, again.text
    job = {"config": {}, "prompts": {"type": "file", "file_id": file_id}}
    assert client.post("/v1/jobs", json=job, headers=alpha).status_code in (404, 422)


def test_a_nul_in_the_file_name_is_422_and_leaves_no_file(client, project_key, settings) -> None:
    # Built by hand: httpx would escape the NUL as %00, as a browser does; a raw client need not.
    boundary = "keelboundary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="a\x00b.jsonl"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + _jsonl(100)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    r = client.post("/v1/files", content=body, headers=project_key("alpha") | content_type)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "file", "filename"]
    assert _stored(settings) == []
