"""Wire types of prompts: one prompt, client-submitted batches, uploaded JSONL files.

A JSONL upload has one `PromptIn` object per line: `{"text": ..., "reference": ...}`.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from keel.types.common import RequestModel, ResponseModel, Text

MAX_PROMPT_CHARS = 100_000
MAX_BATCH = 10_000


class PromptIn(RequestModel):
    text: Text = Field(
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="The prompt: the user turn of the model's chat template (the raw text "
        "when the model has none).",
    )
    reference: Text | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS, description="Answer for built-in verifiers."
    )


class PromptBatch(RequestModel):
    prompts: list[PromptIn] = Field(min_length=1, max_length=MAX_BATCH)


class PromptBatchResult(ResponseModel):
    job_id: str
    accepted: int
    total: int = Field(description="Prompts the job has after this batch.")


class Prompt(ResponseModel):
    id: int
    job_id: str
    index: int = Field(description="Position in the job's prompt stream (0-based).")
    text: str
    reference: str | None = None
    created_at: datetime


class FileObject(ResponseModel):
    id: str
    filename: str
    num_prompts: int
    size_bytes: int
    created_at: datetime
