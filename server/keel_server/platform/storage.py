"""Artifact paths, the checkpoint directory's layout and its deterministic archives.

A checkpoint directory (written by `keel_worker.training.checkpoint`) holds the HF model files
at its top level, the trainer state in `trainer_state.pt`, and for a LoRA job PEFT's
`save_pretrained` output in `adapter/` (the top-level files are then the merged weights). A
download is a tar of one *kind* of it (`keel.types.checkpoints.CheckpointKind`):

    weights   the HF model directory: everything but `trainer_state.pt` and `adapter/`
    merged    the same files: a LoRA job's top level is already base + adapter merged, and a
              full fine-tune's weights are its merged model
    adapter   the contents of `adapter/` (only a LoRA job's checkpoints have it)
    full      everything, trainer state included, to resume the run elsewhere

Each tar is built the same way every time (sorted entries, zeroed mtimes/owners), so the size
and sha256 the worker computes once at registration (`archive_kinds`) describe exactly the bytes
every later download streams, and the SDK can verify them.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

from keel.types.checkpoints import (
    ADAPTER_DIR,
    TINKER_STATE_DIR,
    TRAINER_STATE_FILE,
    CheckpointKind,
)

CHUNK_BYTES = 1 << 20
TAR_ENCODING = "utf-8"  # of member names (tarfile's default: the filesystem encoding)


def files_dir(artifacts_dir: Path) -> Path:
    return artifacts_dir / "files"


def job_dir(artifacts_dir: Path, job_id: str) -> Path:
    """A job's working directory: its checkpoints (`checkpoints/step_…`) and engine files."""
    return artifacts_dir / "jobs" / job_id


def _tarinfo(path: Path, arcname: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    if path.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = path.stat().st_size, 0o644
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def _members(directory: Path, kind: CheckpointKind) -> tuple[Path, list[Path]]:
    """The folder a kind's archive is rooted at and the paths it holds, sorted."""
    if kind == "adapter":
        directory = directory / ADAPTER_DIR
    paths = sorted(p for p in directory.rglob("*") if not p.is_symlink())
    if kind in ("weights", "merged"):
        dropped = [directory / name for name in (TRAINER_STATE_FILE, ADAPTER_DIR, TINKER_STATE_DIR)]
        paths = [p for p in paths if not any(p == d or p.is_relative_to(d) for d in dropped)]
    return directory, paths


def has_kind(directory: Path, kind: CheckpointKind) -> bool:
    """Whether a checkpoint directory holds this kind (only LoRA checkpoints have `adapter`)."""
    return kind != "adapter" or (directory / ADAPTER_DIR).is_dir()


def iter_archive(
    directory: Path, *, kind: CheckpointKind = "full", root_name: str = "checkpoint"
) -> Iterator[bytes]:
    """Stream a deterministic uncompressed tar of one kind of a checkpoint `directory` (entries
    under `root_name/`); `full`, the default, archives every file of any directory.

    The tar is written here block by block, as `tarfile.open(mode="w|")` lays it out (PAX
    headers from `TarInfo.tobuf`, contents padded to 512-byte blocks, two zero blocks, the
    stream padded to a whole record), so each file is read and sent in `CHUNK_BYTES` pieces and
    never held whole: a weights file of gigabytes costs a download a chunk of memory."""
    directory, paths = _members(directory, kind)
    offset = 0
    for path, arcname in [(directory, root_name)] + [
        (p, f"{root_name}/{p.relative_to(directory).as_posix()}") for p in paths
    ]:
        info = _tarinfo(path, arcname)
        header = info.tobuf(tarfile.PAX_FORMAT, TAR_ENCODING, "surrogateescape")
        yield header
        offset += len(header)
        if info.isfile():
            yield from _file_blocks(path, info.size)
            offset += -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    end = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
    offset += len(end)
    yield end + tarfile.NUL * (-offset % tarfile.RECORDSIZE)


def _file_blocks(path: Path, size_bytes: int) -> Iterator[bytes]:
    """The file's `size_bytes` in chunks, the last padded to a whole tar block."""
    left = size_bytes
    with path.open("rb") as fh:
        while left:
            chunk = fh.read(min(CHUNK_BYTES, left))
            if not chunk:
                raise OSError(f"{path} shrank while it was archived")
            left -= len(chunk)
            yield chunk
    yield tarfile.NUL * (-size_bytes % tarfile.BLOCKSIZE)


def archive_digest(directory: Path, *, kind: CheckpointKind = "full") -> tuple[int, str]:
    """(size_bytes, sha256 hex) of `iter_archive(directory, kind=kind)`."""
    digest, size = hashlib.sha256(), 0
    for chunk in iter_archive(directory, kind=kind):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def archive_kinds(directory: Path) -> dict[str, dict[str, int | str]]:
    """`{kind: {"size_bytes", "sha256"}}` for every kind the checkpoint holds, as stored on its
    row: computed once, by the worker, so no request ever hashes a checkpoint. `merged` streams
    the same bytes as `weights`, so it is hashed once."""
    kinds: dict[str, dict[str, int | str]] = {}
    for kind in get_args(CheckpointKind):
        if kind == "merged":
            kinds[kind] = dict(kinds["weights"])
        elif has_kind(directory, kind):
            size_bytes, sha256 = archive_digest(directory, kind=kind)
            kinds[kind] = {"size_bytes": size_bytes, "sha256": sha256}
    return kinds


# Checkpoints, uploads, logs and the SQLite file hold a project's weights, prompts and key hashes:
# readable by the service's user only, whichever program (`keel up`, `keel server`, the worker)
# writes them. The API and the workers run as one user (the images' `keel`).
PRIVATE_UMASK = 0o077


def keep_files_private() -> None:
    """Everything this process (and what it starts) creates is its user's alone."""
    os.umask(PRIVATE_UMASK)
