"""A checkpoint that could not be written for lack of disk space, said in words.

torch reports a full disk while it writes a checkpoint as "[enforce fail at
inline_container.cc:…] unexpected pos …" with no errno, so the error alone does not say what
happened. A save that failed is called a full disk when an `ENOSPC` is anywhere in its exception
chain, or when the checkpoint's filesystem now has less free space than one checkpoint takes (the
newest complete one, else the model's weights). The half-written folder is already gone
(`training.checkpoint.written_aside` removes it), so the job pauses with the reason instead of
failing for good: free space, resume it, and it continues from its last complete checkpoint.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from keel_server.db.transient import exception_chain

MIB = 1024 * 1024


class NoSpaceLeft(Exception):
    """A checkpoint write failed because its disk is full; the message says where."""


def no_space_reason(
    exc: BaseException, folder: Path, *, artifacts_dir: Path, step: int, model_bytes: int
) -> str | None:
    """Why the checkpoint of `step` into `folder` failed, when it is a full disk; else None."""
    free = shutil.disk_usage(_existing(folder)).free
    needed = _newest_checkpoint_bytes(folder.parent) or model_bytes
    if not _enospc_in(exc) and free >= needed:
        return None
    try:
        where = f"{folder.relative_to(artifacts_dir)} in the artifacts folder"
    except ValueError:  # a workdir outside the artifacts folder (not a service job)
        where = str(folder)
    return (
        f"No space left on device: writing the checkpoint of step {step} to {where} failed "
        f"({free / MIB:.1f} MiB free, a checkpoint takes about {needed / MIB:.1f} MiB); nothing "
        "half-written was kept. Free space and resume the job: it continues from its last "
        "complete checkpoint."
    )


def _enospc_in(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno == errno.ENOSPC for e in exception_chain(exc))


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _newest_checkpoint_bytes(checkpoints: Path) -> int:
    """Bytes of the newest complete checkpoint folder (hidden ones are writes in progress)."""
    if not checkpoints.is_dir():
        return 0
    done = sorted(p for p in checkpoints.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not done:
        return 0
    return sum(f.stat().st_size for f in done[-1].rglob("*") if f.is_file())
