"""Artifact paths and the deterministic checkpoint archive.

A checkpoint download is a tar of the HF directory built the same way every time (sorted
entries, zeroed mtimes/owners), so the size and sha256 computed once at registration describe
exactly the bytes every later download streams, and the SDK can verify them.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

CHUNK_BYTES = 1 << 20


def files_dir(artifacts_dir: Path) -> Path:
    return artifacts_dir / "files"


def job_dir(artifacts_dir: Path, job_id: str) -> Path:
    """A job's working directory: its checkpoints (`checkpoints/step_…`) and engine files."""
    return artifacts_dir / "jobs" / job_id


class _Sink(io.RawIOBase):
    """Write-only buffer that tarfile streams into; drained after each member."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.chunks.append(bytes(b))
        return len(b)

    def drain(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def _tarinfo(path: Path, arcname: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    if path.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = path.stat().st_size, 0o644
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def iter_archive(directory: Path, *, root_name: str = "checkpoint") -> Iterator[bytes]:
    """Stream a deterministic uncompressed tar of `directory` (entries under `root_name/`)."""
    sink = _Sink()
    paths = sorted(p for p in directory.rglob("*") if not p.is_symlink())
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tarinfo(directory, root_name))
        for path in paths:
            info = _tarinfo(path, f"{root_name}/{path.relative_to(directory).as_posix()}")
            if info.isdir():
                tar.addfile(info)
                continue
            with path.open("rb") as fh:
                tar.addfile(info, fh)
            yield from _chunks(sink.drain())
    yield from _chunks(sink.drain())


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), CHUNK_BYTES):
        yield data[i : i + CHUNK_BYTES]


def archive_digest(directory: Path) -> tuple[int, str]:
    """(size_bytes, sha256 hex) of `iter_archive(directory)`."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter_archive(directory):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()
