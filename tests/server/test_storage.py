"""The checkpoint archive is deterministic: same bytes, size and sha256 every time."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile

from keel_server.storage import archive_digest, iter_archive


def test_archive_is_deterministic_and_digest_matches(tmp_path) -> None:
    (tmp_path / "d" / "nested").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee")
    (tmp_path / "d" / "nested" / "a.bin").write_bytes(os.urandom(3 * (1 << 20)))
    first = b"".join(iter_archive(tmp_path / "d"))
    os.utime(tmp_path / "d" / "b.txt", (1, 1))  # mtimes must not matter
    second = b"".join(iter_archive(tmp_path / "d"))
    assert first == second
    assert archive_digest(tmp_path / "d") == (len(first), hashlib.sha256(first).hexdigest())
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert tar.getnames() == [
            "checkpoint", "checkpoint/b.txt", "checkpoint/nested", "checkpoint/nested/a.bin",
        ]  # fmt: skip
        assert tar.extractfile("checkpoint/b.txt").read() == b"bee"
