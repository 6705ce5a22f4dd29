"""`client.checkpoints`: list a job's checkpoints, retrieve one, download it.

`download()` streams the archive, verifies its SHA-256 (the `X-Keel-Sha256` header, else the
checkpoint record) and unpacks it atomically (see `keel._archive`); the result is a Hugging Face
directory that `AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

from pathlib import Path

from keel._archive import Staging
from keel.resources._base import AsyncResource, Call, SyncResource
from keel.types.checkpoints import Checkpoint
from keel.types.common import Page

CHUNK_BYTES = 1 << 20
SHA256_HEADER = "X-Keel-Sha256"


def _list(job_id: str, limit: int | None, cursor: str | None) -> Call:
    params = {"limit": limit, "cursor": cursor}
    return Call("GET", f"/v1/jobs/{job_id}/checkpoints", Page[Checkpoint], params=params)


def _download_path(checkpoint_id: str) -> str:
    return f"/v1/checkpoints/{checkpoint_id}/download"


class Checkpoints(SyncResource):
    def list(
        self, job_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[Checkpoint]:
        return self._run(_list(job_id, limit, cursor))

    def retrieve(self, checkpoint_id: str) -> Checkpoint:
        return self._run(Call("GET", f"/v1/checkpoints/{checkpoint_id}", Checkpoint))

    def download(self, checkpoint_id: str, dest: str | Path, *, overwrite: bool = False) -> Path:
        """Download and unpack into `dest` (a directory); returns `dest`."""
        staging = Staging(Path(dest), overwrite=overwrite)
        try:
            with self._transport.stream("GET", _download_path(checkpoint_id)) as response:
                expected = response.headers.get(SHA256_HEADER)
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    staging.write(chunk)
            expected = expected or self.retrieve(checkpoint_id).sha256
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
        self, checkpoint_id: str, dest: str | Path, *, overwrite: bool = False
    ) -> Path:
        """Download and unpack into `dest` (a directory); returns `dest`."""
        staging = Staging(Path(dest), overwrite=overwrite)
        try:
            async with self._transport.stream("GET", _download_path(checkpoint_id)) as response:
                expected = response.headers.get(SHA256_HEADER)
                async for chunk in response.aiter_bytes(CHUNK_BYTES):
                    staging.write(chunk)
            expected = expected or (await self.retrieve(checkpoint_id)).sha256
            return staging.commit(expected)
        finally:
            staging.discard()
