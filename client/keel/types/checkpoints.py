"""Wire types of a checkpoint and of the archives `GET /v1/checkpoints/{id}/download?kind=`
streams (deterministic tars, so each kind's `size_bytes` and `sha256` describe its exact bytes).

Kinds: `weights` (the default: the Hugging Face model directory, no trainer state), `merged`
(the adapter merged into the base, a plain HF directory; for a full fine-tune the same bytes as
`weights`), `adapter` (PEFT's format, only for LoRA jobs) and `full` (everything, trainer state
included, to resume the run elsewhere).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from keel.types.common import ResponseModel

CheckpointKind = Literal["weights", "adapter", "merged", "full"]
DEFAULT_CHECKPOINT_KIND: CheckpointKind = "weights"
# The layout of a checkpoint directory (and so of a `full` archive) beside its HF model files:
# the trainer state keel resumes from, and a LoRA job's PEFT adapter (`save_pretrained` output);
# a Tinker model's save keeps its resident state (trained weights, optimizer) in its own folder.
TRAINER_STATE_FILE = "trainer_state.pt"
ADAPTER_DIR = "adapter"
TINKER_STATE_DIR = "tinker_state"


class CheckpointArchive(ResponseModel):
    """One downloadable kind of a checkpoint."""

    size_bytes: int = Field(description="Bytes of the tar the download streams.")
    sha256: str = Field(description="SHA-256 (hex) of those bytes.")


class Checkpoint(ResponseModel):
    id: str
    job_id: str
    step: int
    policy_version: int
    kinds: dict[str, CheckpointArchive] = Field(
        description="The kinds this checkpoint can be downloaded as (`adapter` only for a LoRA "
        "job), each with its archive's size and SHA-256; empty once its files are deleted."
    )
    pinned: bool = Field(
        False,
        description="Kept whatever the job's `checkpoint_keep_last` says (the guard "
        "pins the last good checkpoint before it stops a run).",
    )
    deleted_at: datetime | None = Field(
        None, description="When the job's retention policy deleted its files (null: present)."
    )
    created_at: datetime
