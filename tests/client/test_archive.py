"""The SDK's checkpoint unpack (`keel._archive.Staging`) against crafted archives, as a hostile
server or a man-in-the-middle on plain http could serve them: keel's own archives hold only
files and folders, so every link, device or fifo member, absolute path and `..` is refused and
nothing is written, and a link that points inside before the top folder is lifted cannot point
outside after it."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

import keel
from keel._archive import Staging


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _unpack(archive: bytes, dest: Path) -> Path:
    """What `client.checkpoints.download` does with the bytes it received."""
    staging = Staging(dest, overwrite=False)
    try:
        staging.write(archive)
        return staging.commit(hashlib.sha256(archive).hexdigest())
    finally:
        staging.discard()


TOP = _member("checkpoint", tarfile.DIRTYPE)
CONFIG = (_member("checkpoint/config.json"), b"{}")

HOSTILE = {
    # Inside the staging folder while the top folder is there; outside `dest` once it is lifted.
    "symlink out after the lift": (
        _member("checkpoint/w", tarfile.SYMTYPE, link="../secret"),
        None,
    ),
    "symlink absolute": (_member("checkpoint/w", tarfile.SYMTYPE, link="/etc/passwd"), None),
    "symlink inside": (_member("checkpoint/w", tarfile.SYMTYPE, link="config.json"), None),
    "hardlink": (_member("checkpoint/h", tarfile.LNKTYPE, link="checkpoint/config.json"), None),
    "fifo": (_member("checkpoint/p", tarfile.FIFOTYPE), None),
    "character device": (_member("checkpoint/c", tarfile.CHRTYPE), None),
    "block device": (_member("checkpoint/b", tarfile.BLKTYPE), None),
    "absolute path": (_member("/tmp/keel-escape.txt"), b"x"),
    "dot-dot path": (_member("checkpoint/../../escape.txt"), b"x"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_member_refuses_the_whole_archive_and_writes_nothing(tmp_path, case) -> None:
    out = tmp_path / "out"
    out.mkdir()
    archive = _tar((TOP, None), CONFIG, HOSTILE[case])
    with pytest.raises(keel.UnsafeArchiveError):
        _unpack(archive, out / "model")
    assert list(out.iterdir()) == []  # no model, no staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing beside it either


def test_keel_archives_still_unpack_with_their_top_folder_lifted(tmp_path) -> None:
    weights = bytes(range(256)) * 10
    archive = _tar(
        (TOP, None),
        CONFIG,
        (_member("checkpoint/tokenizer", tarfile.DIRTYPE), None),
        (_member("checkpoint/tokenizer/vocab.json"), b'{"a": 0}'),
        (_member("checkpoint/model.safetensors"), weights),
    )
    dest = _unpack(archive, tmp_path / "model")
    assert (dest / "model.safetensors").read_bytes() == weights
    assert (dest / "tokenizer" / "vocab.json").read_text() == '{"a": 0}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
