"""Checkpoint download through the SDK: the streamed archive is verified against its SHA-256
and unpacked atomically; a corrupt archive leaves nothing behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import keel
from keel_server.db import session_scope
from keel_server.db.checkpoints import register_checkpoint
from keel_server.platform.storage import archive_kinds


def _hf_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 4000)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    return root


def _register(sessions, job_id: str, path: Path, *, sha256: str | None = None) -> str:
    kinds = archive_kinds(path)
    if sha256 is not None:
        kinds = {kind: {**archive, "sha256": sha256} for kind, archive in kinds.items()}
    with session_scope(sessions) as session:
        row = register_checkpoint(
            session, job_id, step=2, policy_version=2, path=str(path), kinds=kinds
        )
        return row.id


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_download_unpacks_the_directory(project_client, sessions, tmp_path, small_config):
    client = project_client("alpha")
    job = client.jobs.create(small_config())
    source = _hf_dir(tmp_path / "ckpt")
    ckpt_id = _register(sessions, job.id, source)
    listed = client.checkpoints.list(job.id).data
    assert [(c.id, c.step, c.policy_version) for c in listed] == [(ckpt_id, 2, 2)]

    dest = client.checkpoints.download(ckpt_id, tmp_path / "out" / "model")
    assert _files(dest) == _files(source)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model"]  # no staging left over
    with pytest.raises(FileExistsError):
        client.checkpoints.download(ckpt_id, dest)
    assert client.checkpoints.download(ckpt_id, dest, overwrite=True) == dest


def test_async_download_matches(project_client, async_client_for, sessions, tmp_path, small_config):
    client = project_client("alpha")
    job = client.jobs.create(small_config())
    source = _hf_dir(tmp_path / "ckpt")
    ckpt_id = _register(sessions, job.id, source)

    async def download() -> Path:
        async with async_client_for(client._transport.config.api_key) as aclient:
            return await aclient.checkpoints.download(ckpt_id, tmp_path / "async-model")

    assert _files(asyncio.run(download())) == _files(source)


def test_a_corrupt_archive_is_refused_and_leaves_nothing(
    project_client, sessions, tmp_path, small_config
):
    client = project_client("alpha")
    job = client.jobs.create(small_config())
    ckpt_id = _register(sessions, job.id, _hf_dir(tmp_path / "ckpt"), sha256="0" * 64)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(keel.ChecksumMismatchError):
        client.checkpoints.download(ckpt_id, out / "model")
    assert list(out.iterdir()) == []


def test_a_foreign_checkpoint_is_not_found(project_client, sessions, tmp_path, small_config):
    alpha, beta = project_client("alpha"), project_client("beta")
    job = alpha.jobs.create(small_config())
    ckpt_id = _register(sessions, job.id, _hf_dir(tmp_path / "ckpt"))
    with pytest.raises(keel.NotFoundError):
        beta.checkpoints.download(ckpt_id, tmp_path / "stolen")
    assert not (tmp_path / "stolen").exists()
