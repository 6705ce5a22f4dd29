"""Which model a job's `config.model` may name, decided the same way by the API (at creation)
and by the worker (before it loads anything).

`config.model.checkpoint_id` names a checkpoint of the job's own project (`resolve_checkpoint`):
the only way a job's model lies under keel's artifacts. Another project's id is
`CheckpointNotFound`, whichever project asks, so ids of other projects do not leak (a 404 at
the API, a failed job in the worker); a checkpoint whose files retention deleted is
`CheckpointNotUsable`.

`config.model.name` is a built-in model, a hub id (`org/name`, never looked up on the local
disk), or an absolute local path that resolves (symlinks and `..` followed) under one of the
operator's `Settings.model_roots` and outside keel's own state (`home`, `artifacts_dir`: a
project continues from its own checkpoints by id, never by path). Every refusal gives the same
answer whether the path is outside the roots, missing or unreadable, so the API is no oracle for
the server's files (hardening issue items 1 and 2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from keel.types.training import ModelConfig
from keel_server.db.checkpoints import get_project_checkpoint
from keel_server.platform.settings import Settings

# name -> is it a Mixture-of-Experts model (a contract test keeps it equal to the worker's list)
BUILTIN_MODELS: dict[str, bool] = {
    "tiny-dense": False,
    "tiny-moe": True,
    "tiny-moe-deep": True,
    "smollm2-135m-instruct": False,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


class ModelNotAllowed(ValueError):
    """The name is no built-in, no hub id and no readable model under an allowed root."""

    def __init__(self, name: str) -> None:
        builtin = ", ".join(sorted(BUILTIN_MODELS))
        super().__init__(
            f"model {name!r} is not available: use a built-in model ({builtin}), a hub id "
            "'org/name', or an absolute path to a model directory or .gguf file under a model "
            "root the operator allows (KEEL_MODEL_ROOTS)"
        )


class CheckpointNotFound(LookupError):
    """No checkpoint with this id belongs to the job's project."""

    def __init__(self, checkpoint_id: str) -> None:
        super().__init__(f"checkpoint {checkpoint_id!r} not found")
        self.checkpoint_id = checkpoint_id


class CheckpointNotUsable(ValueError):
    """The project's checkpoint has no weights left to start from."""

    def __init__(self, checkpoint_id: str) -> None:
        super().__init__(
            f"checkpoint {checkpoint_id!r} has no weights to start from: its files were deleted "
            "by its job's retention policy (checkpoint_keep_last)"
        )


@dataclass(frozen=True)
class ModelSource:
    """What a job's model resolved to; `spec` is what the worker passes to `load_model`."""

    kind: Literal["builtin", "hub", "local", "checkpoint"]
    spec: str
    is_moe: bool | None  # None: a hub id, decided when the worker downloads it
    model_type: str | None = None  # config.json's `model_type` of a local HF directory


def resolve_job_model(
    model: ModelConfig, settings: Settings, session: Session, project_id: str
) -> ModelSource:
    """Either source of a job's model, for the job's project."""
    if model.checkpoint_id is not None:
        return resolve_checkpoint(session, model.checkpoint_id, project_id)
    assert model.name is not None  # ModelConfig holds exactly one of the two
    return resolve_model(model.name, settings)


def resolve_checkpoint(session: Session, checkpoint_id: str, project_id: str) -> ModelSource:
    """The top-level weights of `project_id`'s checkpoint (a LoRA job's are merged)."""
    row = get_project_checkpoint(session, checkpoint_id, project_id)
    if row is None:
        raise CheckpointNotFound(checkpoint_id)
    path = Path(row.path)
    if row.deleted_at is not None or not (path / "config.json").is_file():
        raise CheckpointNotUsable(checkpoint_id)
    try:
        is_moe, model_type = _local_kind(path, checkpoint_id)
    except ModelNotAllowed as exc:
        raise CheckpointNotUsable(checkpoint_id) from exc
    return ModelSource("checkpoint", str(path), is_moe, model_type)


def resolve_model(name: str, settings: Settings) -> ModelSource:
    """Classify `name` under the operator's policy; raises `ModelNotAllowed` otherwise."""
    if name in BUILTIN_MODELS:
        return ModelSource("builtin", name, BUILTIN_MODELS[name])
    if _HUB_ID.match(name):
        return ModelSource("hub", name, None)
    path = _allowed_path(name, settings)
    if path is None:
        raise ModelNotAllowed(name)
    is_moe, model_type = _local_kind(path, name)
    return ModelSource("local", str(path), is_moe, model_type)


def _allowed_path(name: str, settings: Settings) -> Path | None:
    """The resolved path of `name` when it is an existing model under an allowed root."""
    if not settings.model_roots or not name.startswith("/") or "\x00" in name:
        return None
    try:
        path = Path(name).resolve(strict=True)
        roots = [root.resolve() for root in settings.model_roots]
        own_state = [Path(settings.home).resolve(), Path(settings.artifacts_dir).resolve()]
        is_model = (path.suffix == ".gguf" and path.is_file()) or (path / "config.json").is_file()
    except (OSError, RuntimeError):  # missing, too long, a symlink loop, unreadable
        return None
    inside = any(path.is_relative_to(root) for root in roots)
    if not inside or any(path.is_relative_to(state) for state in own_state) or not is_model:
        return None
    return path


def _local_kind(path: Path, name: str) -> tuple[bool, str | None]:
    """(is it MoE, its `model_type`) from the directory's config.json."""
    if path.suffix == ".gguf":
        return False, None  # the GGUF files keel loads are dense Llama-family models
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotAllowed(name) from exc
    if not isinstance(config, dict):
        raise ModelNotAllowed(name)
    model_type = config.get("model_type")
    is_moe = any(config.get(key) for key in _MOE_KEYS)
    return is_moe, model_type if isinstance(model_type, str) else None
