"""Wire type of a checkpoint. `sha256` and `size_bytes` describe the exact archive that
`GET /v1/checkpoints/{id}/download` streams (a deterministic tar of the HF directory)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from keel.types.common import ResponseModel


class Checkpoint(ResponseModel):
    id: str
    job_id: str
    step: int
    policy_version: int
    size_bytes: int
    sha256: str
    pinned: bool = Field(
        default=False,
        description="Kept whatever the retention: the last checkpoint before a guard trigger.",
    )
    created_at: datetime
