"""Atomic unpacking of a downloaded checkpoint archive.

The archive is streamed into a hidden staging folder next to the destination while its SHA-256
is computed, checked against the checkpoint's recorded checksum, unpacked there with tarfile's
`data` filter (no absolute paths, links out of the tree or devices), and only then renamed onto
the destination. A crash or a bad checksum leaves no half-written model behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import uuid
from pathlib import Path

from keel._errors import KeelError


class ChecksumMismatchError(KeelError):
    """The downloaded archive does not match the checkpoint's recorded SHA-256."""


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
            tar.extractall(unpacked, filter="data")
        source = _single_top_folder(unpacked)
        if self.dest.exists():
            retired = self.root / "previous"
            os.replace(self.dest, retired)
        os.replace(source, self.dest)
        shutil.rmtree(self.root, ignore_errors=True)
        return self.dest

    def discard(self) -> None:
        self._file.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _single_top_folder(unpacked: Path) -> Path:
    """Archives made with a top-level folder unpack to that folder's contents."""
    entries = list(unpacked.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked
