"""Wire types of per-step metrics: one row per (job, step, name), written exactly once."""

from __future__ import annotations

from pydantic import Field

from keel.types.common import ResponseModel


class MetricPoint(ResponseModel):
    step: int
    name: str = Field(description="`area/name`, e.g. `train/reward_mean`, `mismatch/k3_kl`.")
    value: float | None = Field(description="None when the step produced a non-finite value.")
