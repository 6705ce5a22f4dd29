"""Atomic unpacking of a downloaded checkpoint archive.

The archive is streamed into a hidden staging folder next to the destination while its SHA-256
is computed, checked against the checkpoint's recorded checksum, unpacked there, and only then
renamed onto the destination. A crash or a bad checksum leaves no half-written model behind.

keel's archives hold regular files and folders only (`keel_server.platform.storage`), so the
unpack accepts nothing else: a link (symbolic or hard), device or fifo member, an absolute path
or a `..` refuses the whole archive before anything is written (a server, or a man-in-the-middle
on plain http, could otherwise write outside the destination: a link that points inside the
staging folder points elsewhere once the top folder is lifted, and the `data` filter of some
Python releases can be bypassed through links). tarfile's `data` filter still applies, and every
unpacked path is checked to lie inside the lifted folder before it is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import uuid
from pathlib import Path, PurePosixPath

from keel._errors import KeelError


class ChecksumMismatchError(KeelError):
    """The downloaded archive does not match the checkpoint's recorded SHA-256."""


class UnsafeArchiveError(KeelError):
    """The archive holds a member that a keel checkpoint never has (a link, a device, an
    absolute or `..` path): nothing was unpacked."""


class Staging:
    """A staging folder beside `dest`; write chunks, then `commit()` or `discard()`."""

    def __init__(self, dest: Path, *, overwrite: bool) -> None:
        if dest.exists() and not overwrite:
            raise FileExistsError(f"{dest} exists; pass overwrite=True to replace it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.dest = dest
        self.root = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:8]}"
        self.root.mkdir()
        self.archive = self.root / "checkpoint.tar"
        self._file = self.archive.open("wb")
        self._sha256 = hashlib.sha256()
        self.size_bytes = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._sha256.update(chunk)
        self.size_bytes += len(chunk)

    def commit(self, expected_sha256: str | None) -> Path:
        self._file.close()
        digest = self._sha256.hexdigest()
        if expected_sha256 and digest != expected_sha256:
            raise ChecksumMismatchError(f"archive sha256 {digest} != expected {expected_sha256}")
        unpacked = self.root / "unpacked"
        with tarfile.open(self.archive, "r:*") as tar:
            members = _checked_members(tar)
            tar.extractall(unpacked, members=members, filter="data")
        source = _single_top_folder(unpacked)
        _check_inside(source)
        if self.dest.exists():
            retired = self.root / "previous"
            os.replace(self.dest, retired)
        os.replace(source, self.dest)
        shutil.rmtree(self.root, ignore_errors=True)
        return self.dest

    def discard(self) -> None:
        self._file.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member, once each is a plain file or folder at a relative path without `..`."""
    members = tar.getmembers()
    for member in members:
        name = PurePosixPath(member.name)
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(
                f"{member.name!r} is not a file or folder (type {member.type!r})"
            )
        if name.is_absolute() or ".." in name.parts or "\\" in member.name:
            raise UnsafeArchiveError(f"{member.name!r} is not a path inside the archive")
    return members


def _check_inside(folder: Path) -> None:
    """Every path under `folder` is a file or folder whose real path lies inside it."""
    root = folder.resolve()
    for path in folder.rglob("*"):
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise UnsafeArchiveError(f"{path.relative_to(folder)} would lie outside {folder.name}")


def _single_top_folder(unpacked: Path) -> Path:
    """Archives made with a top-level folder unpack to that folder's contents."""
    entries = list(unpacked.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked
