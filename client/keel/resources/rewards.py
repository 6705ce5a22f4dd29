"""`client.rewards`: post one reward or a batch. Idempotent per rollout: the same value again is
accepted, a different one raises `ConflictError` (never retried: it is a real disagreement)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from keel.resources._base import AsyncResource, Call, SyncResource, body
from keel.types.rewards import RewardBatchResult, RewardResult


def _finite(value: float) -> float:
    # JSON has no NaN or infinity; the server would refuse them (422) if they could be sent.
    if not math.isfinite(value):
        raise ValueError(f"a reward must be a finite number, got {value!r}")
    return value


def _create(rollout_id: str, value: float) -> Call:
    _finite(value)
    return Call("POST", f"/v1/rollouts/{rollout_id}/reward", RewardResult, json={"value": value})


def _batch(rewards: Mapping[str, float] | Iterable[Any]) -> Call:
    if isinstance(rewards, Mapping):
        items = [{"rollout_id": k, "value": v} for k, v in rewards.items()]
    else:
        items = [body(item) for item in rewards]
    for item in items:
        _finite(float(item["value"]))
    return Call("POST", "/v1/rewards", RewardBatchResult, json={"rewards": items})


class Rewards(SyncResource):
    def create(self, rollout_id: str, value: float) -> RewardResult:
        return self._run(_create(rollout_id, value))

    def batch(self, rewards: Mapping[str, float] | Iterable[Any]) -> RewardBatchResult:
        """Post many rewards: `{rollout_id: value}` or `RewardItem`s; results are per item."""
        return self._run(_batch(rewards))


class AsyncRewards(AsyncResource):
    async def create(self, rollout_id: str, value: float) -> RewardResult:
        return await self._run(_create(rollout_id, value))

    async def batch(self, rewards: Mapping[str, float] | Iterable[Any]) -> RewardBatchResult:
        """Post many rewards: `{rollout_id: value}` or `RewardItem`s; results are per item."""
        return await self._run(_batch(rewards))
