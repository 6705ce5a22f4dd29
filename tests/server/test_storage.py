"""The checkpoint archive is deterministic: same bytes, size and sha256 every time."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tracemalloc

from keel_server.platform.storage import archive_digest, archive_kinds, has_kind, iter_archive


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
            "checkpoint",
            "checkpoint/b.txt",
            "checkpoint/nested",
            "checkpoint/nested/a.bin",
        ]
        assert tar.extractfile("checkpoint/b.txt").read() == b"bee"


def _checkpoint_dir(root):
    """The layout of a LoRA job's checkpoint: merged HF files on top, trainer state, adapter/."""
    (root / "adapter").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"w" * 5000)
    (root / "trainer_state.pt").write_bytes(b"s" * 9000)
    (root / "adapter" / "adapter_config.json").write_text('{"r": 4}')
    (root / "adapter" / "adapter_model.safetensors").write_bytes(b"a" * 700)
    return root


def _names(directory, kind):
    with tarfile.open(fileobj=io.BytesIO(b"".join(iter_archive(directory, kind=kind)))) as tar:
        return tar.getnames()


def test_each_kind_archives_its_part_of_the_checkpoint(tmp_path) -> None:
    ckpt = _checkpoint_dir(tmp_path / "step_000002")
    weights = ["checkpoint", "checkpoint/config.json", "checkpoint/model.safetensors"]
    assert _names(ckpt, "weights") == _names(ckpt, "merged") == weights
    assert _names(ckpt, "adapter") == [
        "checkpoint",
        "checkpoint/adapter_config.json",
        "checkpoint/adapter_model.safetensors",
    ]
    assert _names(ckpt, "full") == [
        "checkpoint",
        "checkpoint/adapter",
        "checkpoint/adapter/adapter_config.json",
        "checkpoint/adapter/adapter_model.safetensors",
        "checkpoint/config.json",
        "checkpoint/model.safetensors",
        "checkpoint/trainer_state.pt",
    ]

    kinds = archive_kinds(ckpt)
    assert sorted(kinds) == ["adapter", "full", "merged", "weights"]
    for kind, archive in kinds.items():
        data = b"".join(iter_archive(ckpt, kind=kind))
        assert archive == {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # The trainer state (9000 B) and the adapter are what `full` adds to `weights`.
    assert kinds["full"]["size_bytes"] - kinds["weights"]["size_bytes"] > 9000 + 700
    assert kinds["merged"] == kinds["weights"]


def test_a_full_fine_tune_has_no_adapter_kind(tmp_path) -> None:
    ckpt = _checkpoint_dir(tmp_path / "step_000002")
    for path in (ckpt / "adapter").iterdir():
        path.unlink()
    (ckpt / "adapter").rmdir()
    assert not has_kind(ckpt, "adapter") and has_kind(ckpt, "weights")
    assert sorted(archive_kinds(ckpt)) == ["full", "merged", "weights"]


# `iter_archive` of `_large_checkpoint(…, 24 MiB)`, as the previous (buffering) code wrote it.
LARGE_SIZE = 25180160
LARGE_SHA256 = "adb779360ee2db95fb1259abd473aa921ffcd5795edb80a7b68cb45d8931fa74"


def _large_checkpoint(root, size_bytes: int):
    """A checkpoint with one large weights file, a long (PAX) name and a non-ASCII one; the
    contents are a fixed pattern, so the archive's sha256 is a constant."""
    (root / "adapter").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "adapter" / "adapter_config.json").write_text('{"r": 4}')
    (root / ("shard-" + "x" * 120 + ".safetensors")).write_bytes(b"long name")
    (root / "tokenizer-é.json").write_text("{}")
    pattern = bytes(range(256)) * 4096  # 1 MiB
    with (root / "model.safetensors").open("wb") as fh:
        for _ in range(size_bytes // len(pattern)):
            fh.write(pattern)
        fh.write(b"tail" * 3)  # not a whole tar block
    return root


def test_a_large_file_streams_in_chunks_with_the_same_bytes(tmp_path) -> None:
    """A download must not hold a member in memory (the probe measured 604 MiB for a 300 MiB
    file): peak traced memory stays a few chunks, whatever the file's size; the bytes are those
    the archive always had (the sha256 below was computed by the previous, buffering code)."""
    root = _large_checkpoint(tmp_path / "ckpt", 24 << 20)
    tracemalloc.start()
    try:
        digest, size = hashlib.sha256(), 0
        for chunk in iter_archive(root):
            digest.update(chunk)
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak / (1 << 20):.1f} MiB for a 24 MiB file"
    assert (size, digest.hexdigest()) == (LARGE_SIZE, LARGE_SHA256)
    archive = b"".join(iter_archive(root))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile("checkpoint/model.safetensors")
        assert member.read()[-12:] == b"tail" * 3
        assert "checkpoint/tokenizer-é.json" in tar.getnames()
