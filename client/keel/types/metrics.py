"""Wire types of per-step metrics: one row per (job, step, name), written exactly once.

The names are `keel.types.metric_names`; `is_documented` says whether a name is one of them.
"""

from __future__ import annotations

import re
from typing import get_args

from pydantic import Field

from keel.types.common import ResponseModel
from keel.types.guard import TriggerName
from keel.types.metric_names import (
    EVAL_METRICS,
    FINAL_SUFFIX,
    METRICS,
    REWARD_MEAN,
    ROUTING_INFER_VS_TRAIN,
    ROUTING_OLD_VS_CURRENT,
    guard_trigger,
)


class MetricPoint(ResponseModel):
    step: int
    name: str = Field(
        description=f"The metric, e.g. `{REWARD_MEAN}` (keel.types.metric_names lists them)."
    )
    value: float | None = Field(description="None when the step produced a non-finite value.")


_PER_LAYER = re.compile(
    rf"({re.escape(ROUTING_INFER_VS_TRAIN)}|{re.escape(ROUTING_OLD_VS_CURRENT)})_L\d+"
)
_GUARD_TRIGGERS = frozenset(guard_trigger(t) for t in get_args(TriggerName))


def is_documented(name: str) -> bool:
    """Whether `name` is in the vocabulary: a fixed name, a per-layer routing name, a guard
    trigger's name or an eval metric's `_final`."""
    if name in METRICS or name in _GUARD_TRIGGERS or _PER_LAYER.fullmatch(name):
        return True
    return name.endswith(FINAL_SUFFIX) and name.removesuffix(FINAL_SUFFIX) in EVAL_METRICS
