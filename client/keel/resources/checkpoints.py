"""`client.checkpoints`: list a job's checkpoints, retrieve one, download one of its kinds.

`download()` streams the archive of a kind (`weights`, the default: the Hugging Face model
directory; `merged`; `adapter`, PEFT's format, for LoRA jobs; `full`, with the trainer state),
verifies its SHA-256 (the `X-Keel-Sha256` header, else the checkpoint record's `kinds`) and
unpacks it atomically (see `keel._archive`). `weights` and `merged` give a directory that
`AutoModelForCausalLM.from_pretrained` loads, `adapter` one for `PeftModel.from_pretrained`.
"""

from __future__ import annotations

from pathlib import Path

from keel._archive import Staging
from keel.resources._base import AsyncResource, Call, SyncResource
from keel.types.checkpoints import DEFAULT_CHECKPOINT_KIND, Checkpoint, CheckpointKind
from keel.types.common import Page

CHUNK_BYTES = 1 << 20
SHA256_HEADER = "X-Keel-Sha256"


def _list(job_id: str, limit: int | None, cursor: str | None) -> Call:
    params = {"limit": limit, "cursor": cursor}
    return Call("GET", f"/v1/jobs/{job_id}/checkpoints", Page[Checkpoint], params=params)


def _download_path(checkpoint_id: str) -> str:
    return f"/v1/checkpoints/{checkpoint_id}/download"


def _recorded_sha256(checkpoint: Checkpoint, kind: CheckpointKind) -> str | None:
    archive = checkpoint.kinds.get(kind)
    return archive.sha256 if archive is not None else None


class Checkpoints(SyncResource):
    def list(
        self, job_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Checkpoint]:
        return self._run(_list(job_id, limit, cursor))

    def retrieve(self, checkpoint_id: str) -> Checkpoint:
        return self._run(Call("GET", f"/v1/checkpoints/{checkpoint_id}", Checkpoint))

    def download(
        self,
        checkpoint_id: str,
        dest: str | Path,
        *,
        kind: CheckpointKind = DEFAULT_CHECKPOINT_KIND,
        overwrite: bool = False,
    ) -> Path:
        """Download one kind and unpack it into `dest` (a directory); returns `dest`."""
        staging = Staging(Path(dest), overwrite=overwrite)
        try:
            path, params = _download_path(checkpoint_id), {"kind": kind}
            with self._transport.stream("GET", path, params=params) as response:
                expected = response.headers.get(SHA256_HEADER)
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    staging.write(chunk)
            expected = expected or _recorded_sha256(self.retrieve(checkpoint_id), kind)
            return staging.commit(expected)
        finally:
            staging.discard()


class AsyncCheckpoints(AsyncResource):
    async def list(
        self, job_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Checkpoint]:
        return await self._run(_list(job_id, limit, cursor))

    async def retrieve(self, checkpoint_id: str) -> Checkpoint:
        return await self._run(Call("GET", f"/v1/checkpoints/{checkpoint_id}", Checkpoint))

    async def download(
        self,
        checkpoint_id: str,
        dest: str | Path,
        *,
        kind: CheckpointKind = DEFAULT_CHECKPOINT_KIND,
        overwrite: bool = False,
    ) -> Path:
        """Download one kind and unpack it into `dest` (a directory); returns `dest`."""
        staging = Staging(Path(dest), overwrite=overwrite)
        try:
            path, params = _download_path(checkpoint_id), {"kind": kind}
            async with self._transport.stream("GET", path, params=params) as response:
                expected = response.headers.get(SHA256_HEADER)
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    staging.write(chunk)
            if not expected:
                expected = _recorded_sha256(await self.retrieve(checkpoint_id), kind)
            return staging.commit(expected)
        finally:
            staging.discard()
